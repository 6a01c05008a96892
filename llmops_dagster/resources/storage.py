"""Where data lives: the landing zone and the environment's LanceDB database."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from llmops_dagster.core.store import LanceStore


class LandingZoneResource(dg.ConfigurableResource):
    """Folder where documents arrive. ``questions/`` and hidden files are not documents."""

    path: str
    max_file_mb: float = 50.0

    @property
    def root(self) -> Path:
        return Path(self.path)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)


class LanceDBResource(dg.ConfigurableResource):
    """The environment's LanceDB database: a local folder or an s3:// / abfss:// URI.

    Object-store credentials are read by LanceDB from the standard environment variables
    (AWS_*, AZURE_*), never from code or config files.
    """

    uri: str

    def store(self) -> LanceStore:
        from llmops_dagster.core.store import LanceStore

        return LanceStore(self.uri)
