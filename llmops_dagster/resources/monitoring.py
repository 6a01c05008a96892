"""The environments whose drift retrains this one: those that set ``monitoring.retrain_on_drift`` and
adopt, directly or through another, from the environment that trains."""

from __future__ import annotations

from typing import Any

import dagster as dg


class DriftWatchResource(dg.ConfigurableResource):
    """Environment name → its LanceDB URI, for each environment whose drift at ERROR starts this
    environment's ingest-and-train job. Empty: nothing is watched."""

    environments: dict[str, str] = {}

    def drift_state(self, env: str) -> dict[str, Any]:
        """The drift state of ``env``'s latest monitored window with requests (see ``monitoring_table.drift_state``)."""
        from llmops_dagster.core import monitoring_table
        from llmops_dagster.core.store import LanceStore

        return monitoring_table.drift_state(monitoring_table.read_rows(LanceStore(self.environments[env])))


def drift_watch_for(trains: str) -> DriftWatchResource:
    """The environments of the current declaration that retrain ``trains`` on drift: they set
    ``monitoring.retrain_on_drift`` and their chain of ``promotion.source`` leads to it."""
    from llmops_dagster.settings import ENVIRONMENTS, SettingsError, load_settings

    declared = {}
    for env in ENVIRONMENTS:
        try:
            declared[env] = load_settings(env)
        except SettingsError:
            continue  # not declared in this file: nothing to watch there
    watched = {}
    for env, settings in declared.items():
        if not settings.monitoring.retrain_on_drift:
            continue
        root, seen = settings, {env}
        while root.promotion.source and root.promotion.source in declared and root.promotion.source not in seen:
            seen.add(root.promotion.source)
            root = declared[root.promotion.source]
        if root.name == trains and root.promotion.source is None:
            watched[env] = settings.lancedb_uri
    return DriftWatchResource(environments=watched)
