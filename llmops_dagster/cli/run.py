"""llmops run and llmops tick: materialize an environment, or evaluate its promotion and endpoint sensors once."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from llmops_dagster.cli.access import acting_account
from llmops_dagster.cli.common import UserError, existing_folder, settings_for
from llmops_dagster.cli.execution import execute
from llmops_dagster.cli.instance import open_instance, running_alone
from llmops_dagster.tags import RUN_KEY_TAG, SENSOR_NAME_TAG, TRIGGER_TAG

if TYPE_CHECKING:
    import dagster as dg

    from llmops_dagster.settings import EnvSettings


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    existing_folder(settings.landing, "landing folder", missing=" (create it, or pass --landing DIR)")
    print(f"llmops run: environment '{settings.name}', landing {settings.landing}", file=sys.stderr)
    from llmops_dagster.definitions import INGEST_JOB, build_defs

    job = build_defs(settings).resolve_job_def(INGEST_JOB)
    instance = open_instance()
    with running_alone(instance, settings.name), acting_account(settings):  # acting: registers and tags versions
        return execute(job, instance, {TRIGGER_TAG: "cli"})


def cmd_tick(args: argparse.Namespace) -> int:
    """Evaluate the environment's promotion and endpoint sensors once, as the daemon would, and run what they
    request, each run key once per sensor (tagged as the daemon tags its runs, so neither repeats the other's)."""
    import dagster as dg

    from llmops_dagster.definitions import build_defs

    settings = settings_for(args)
    defs = build_defs(settings)
    instance = open_instance()
    # The sensors' resources (registry, upstream, lancedb): the typed ones; the MLflow run resource is for jobs.
    resources = {key: value for key, value in (defs.resources or {}).items() if isinstance(value, dg.ConfigurableResource)}
    with acting_account(settings):  # moves aliases: the service account, where auth: is declared
        return _tick(settings, defs, instance, resources)


def _tick(settings: EnvSettings, defs: dg.Definitions, instance: dg.DagsterInstance, resources: dict[str, Any]) -> int:
    import dagster as dg

    from llmops_dagster.sensors import CHAMPION_SENSOR, ENDPOINT_SENSOR, UPSTREAM_SENSOR
    from llmops_dagster.sensors.promotion import RegistryUnavailableError

    status = 0
    # In the order a promotion flows: adopt upstream's champion, promote here, point the endpoint at it.
    for name in (UPSTREAM_SENSOR, CHAMPION_SENSOR, ENDPOINT_SENSOR):
        try:
            sensor = defs.resolve_sensor_def(name)
        except Exception:
            continue  # test has no upstream sensor
        said = _Said()
        try:
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                # What the sensor logs goes into the daemon's tick history; here it is a line of this output.
                for handler in list(context.log.handlers):
                    context.log.removeHandler(handler)
                context.log.addHandler(said)
                context.log.propagate = False
                result = sensor.evaluate_tick(context)
        except RegistryUnavailableError as error:
            raise UserError(f"{settings.name}/{name}: {error}") from None
        for line in said.lines:
            print(f"{settings.name}/{name}: {line}")
        if result.skip_message:
            print(f"{settings.name}/{name}: {result.skip_message}")
        for event in result.asset_events or []:  # the daemon records these; so does a tick by hand
            instance.report_runless_asset_event(event)
        for request in result.run_requests or []:
            earlier = run_for_key(instance, name, request.run_key)
            if earlier is not None:  # the daemon's rule: one run per run key and sensor
                print(f"{settings.name}/{name}: run key {request.run_key} already ran as {earlier.run_id} ({earlier.status.value}); skipped")
                continue
            print(f"{settings.name}/{name}: starting {sensor.job_name} ({request.run_key})")
            tags = {**request.tags, TRIGGER_TAG: f"cli-tick:{name}", SENSOR_NAME_TAG: name}
            if request.run_key:
                tags[RUN_KEY_TAG] = request.run_key
            with running_alone(instance, settings.name):
                status = max(status, execute(defs.resolve_job_def(sensor.job_name), instance, tags))
    return status


class _Said(logging.Handler):
    """Keeps the messages a sensor logs, to print them as the tick's own lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_for_key(instance: dg.DagsterInstance, sensor: str, run_key: str | None) -> dg.DagsterRun | None:
    """The run that sensor ``sensor`` already started for ``run_key``, by the daemon or by a tick by hand."""
    import dagster as dg

    if not run_key:
        return None
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor}), limit=1)
    return runs[0] if runs else None
