"""The instance's run queue: Dagster's own, after it has given each run its environment's tag.

``dagster.yaml`` (``cli.instance.DAGSTER_YAML``) queues runs tagged with the same ``llmops/env`` one
at a time. The ingest, adopt and monitor jobs carry that tag, but a materialization or backfill
launched from the asset graph runs in Dagster's implicit asset job, which has no tags of its own:
without this, such a run would start beside an ingest run of the same environment and write the same
tables. Every run the daemon launches is submitted through the coordinator (from the UI, a sensor or
the backfill daemon), so this is the one place that sees them all; ``llmops run`` runs in process and
tags its runs itself. A run's environment is the first part of its asset keys, which
``definitions.build_defs`` prefixes with the environment's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext

from llmops_dagster.settings import ENVIRONMENTS
from llmops_dagster.tags import ENV_TAG, OPERATOR_ENV_TAG

if TYPE_CHECKING:
    import dagster as dg


def environment_tags(run: dg.DagsterRun) -> dict[str, str]:
    """The environment tag a run lacks: none if it has one, or if its assets are not all of one environment.

    A run of the serving endpoint alone gets the operator's tag, as ``update_endpoint`` has, so that
    redeploying the champion does not wait behind a long ingest run.
    """
    from llmops_dagster.assets.endpoint import SERVING_ENDPOINT

    if ENV_TAG in run.tags or OPERATOR_ENV_TAG in run.tags:
        return {}
    keys = {*(run.asset_selection or ()), *(check.asset_key for check in run.asset_check_selection or ())}
    environments = {key.path[0] for key in keys if len(key.path) > 1}
    if len(environments) != 1 or not environments <= set(ENVIRONMENTS):
        return {}  # not one of ours: another code location's assets on a shared instance
    env = environments.pop()
    if {key.path[-1] for key in keys} == {SERVING_ENDPOINT}:
        return {OPERATOR_ENV_TAG: env}
    return {ENV_TAG: env}


class EnvironmentRunQueue(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` that tags a run with its environment before queueing it."""

    def submit_run(self, context: SubmitRunContext) -> dg.DagsterRun:
        tags = environment_tags(context.dagster_run)
        if tags:
            self._instance.add_run_tags(context.dagster_run.run_id, tags)
        return super().submit_run(context)
