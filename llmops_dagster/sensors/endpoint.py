"""champion_endpoint: starts the ``update_endpoint`` job when the champion alias points at a version
other than the one last deployed (recorded on the registered model by the ``serving_endpoint``
asset). The champion moves through the registry (promotion, ``llmops rollback``), never through a
materialization, so an asset sensor would not see it.

Each champion move gets one run key (the version and the time of the history entry that made it
champion), so going back to an earlier version after a rollback is a new request, while a
restarted daemon asks for the same run again and Dagster drops it.
"""

from __future__ import annotations

import dagster as dg

from llmops_dagster.resources import RegistryResource
from llmops_dagster.sensors.promotion import RegistryUnavailableError
from llmops_dagster.tags import TRIGGER_TAG

ENDPOINT_SENSOR = "champion_endpoint"


def _read(what: str, call, *args):
    from llmops_dagster.core.registry import error_line

    try:
        return call(*args)
    except Exception as error:  # an unreachable store surfaces as requests or sqlalchemy errors
        raise RegistryUnavailableError(f"{what}: {error_line(error)}") from None


def build_endpoint_sensor(env: str, job_name: str, where: str, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    """``where``: databricks or local, as the environment's ``compute`` says."""

    @dg.sensor(
        name=ENDPOINT_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Points {env}'s serving endpoint ({where}) at the champion whenever the champion alias moves.",
    )
    def champion_endpoint(context: dg.SensorEvaluationContext, registry: RegistryResource):
        from llmops_dagster.core import endpoint, promotion
        from llmops_dagster.core.registry import CHAMPION, version_by_alias

        client = _read("connecting to the registry", registry.client)
        name = registry.registered_model
        champion = _read(f"reading {name}", version_by_alias, client, name, CHAMPION)
        if champion is None:
            return dg.SkipReason(f"{name} has no champion yet")
        version = str(champion.version)
        deployed = _read(f"reading {name}", endpoint.recorded, client, name, where)
        if deployed is not None and deployed.version == version:
            return dg.SkipReason(f"{deployed.endpoint} was pointed at the champion v{version} by run {deployed.run_id}")
        history = _read(f"reading the history of {name}", promotion.history, client, name)
        moved_at = next((entry.at for entry in reversed(history) if entry.version == version), "")
        key = f"{where}-v{version}-{moved_at}".rstrip("-")
        if context.cursor == key:
            return dg.SkipReason(f"a run to serve v{version} was already requested (run key {key}); see its result in the runs list")
        context.update_cursor(key)
        context.log.info(f"champion v{version}; {where} serves {f'v{deployed.version}' if deployed else 'nothing recorded yet'}")
        return dg.RunRequest(run_key=key, tags={TRIGGER_TAG: ENDPOINT_SENSOR})

    return champion_endpoint
