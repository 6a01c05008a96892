"""Where data lives: the landing zone and the environment's LanceDB database."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from llmops_dagster.resources.section import SettingsSection

if TYPE_CHECKING:
    from llmops_dagster.core.store import LanceStore


class LandingZoneResource(dg.ConfigurableResource):
    """Folder where documents arrive (``ingestion`` settings: the file size limit). ``questions/``
    and hidden files are not documents."""

    path: str
    ingestion: SettingsSection = SettingsSection()

    @property
    def root(self) -> Path:
        return Path(self.path)

    @property
    def max_file_bytes(self) -> int:
        from llmops_dagster.settings import IngestionSettings

        return int(self.ingestion.to(IngestionSettings).max_file_mb * 1024 * 1024)


class LanceDBResource(dg.ConfigurableResource):
    """The environment's LanceDB database: a local folder or an s3:// / abfss:// URI.

    Object-store credentials are read by LanceDB from the standard environment variables
    (AWS_*, AZURE_*), never from code or config files.
    """

    uri: str

    def store(self) -> LanceStore:
        from llmops_dagster.core.store import LanceStore

        return LanceStore(self.uri)
