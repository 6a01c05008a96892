"""A section of an environment's settings carried by a resource, so each setting is named once.

The fields of ``embedding``, ``chunking``, ``index``, ``training``, ``rag``, ``evaluation`` and
``mlflow`` are declared by their dataclass (in ``core`` or ``settings``), which also validates
them. A resource holds the section's resolved values as permissive config, so the Dagster UI
still shows them, and turns them back into that dataclass when it builds core objects.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, TypeVar

import dagster as dg

T = TypeVar("T")


class SettingsSection(dg.PermissiveConfig):
    """The resolved values of one settings section, as ``environments.yaml`` declared them."""

    @classmethod
    def of(cls, settings: Any) -> SettingsSection:
        return cls(**asdict(settings))

    def to(self, dataclass: type[T]) -> T:
        return dataclass(**dict(self))
