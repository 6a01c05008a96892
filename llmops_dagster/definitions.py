"""Assembles one ``dg.Definitions`` per environment. ``workspace.yaml`` loads each as a code location."""

from __future__ import annotations

import logging
import os
import warnings

import dagster as dg

from llmops_dagster.assets import stage_modules
from llmops_dagster.assets.endpoint import build_endpoint_job, build_serving_endpoint
from llmops_dagster.assets.inference_table import build_inference_table
from llmops_dagster.assets.monitoring import build_monitor_job, build_monitoring_assets, monitoring_partitions
from llmops_dagster.core.runtime import offline
from llmops_dagster.executor import environment_locked_executor
from llmops_dagster.jobs import operator_jobs
from llmops_dagster.resources import build_resources
from llmops_dagster.resources.monitoring import drift_watch_for
from llmops_dagster.sensors import (
    build_champion_sensor,
    build_endpoint_sensor,
    build_inference_log_sensor,
    build_new_documents_sensor,
    build_upstream_sensor,
)
from llmops_dagster.sensors.monitoring import LATE_ROWS_MS, build_new_requests_sensor, build_retrain_sensor
from llmops_dagster.settings import EnvSettings, load_settings
from llmops_dagster.tags import ENV_TAG

INGEST_JOB = "ingest"
ADOPT_JOB = "adopt"


def environment_assets(env: str | EnvSettings) -> list[dg.AssetsDefinition]:
    """The stage assets and their checks, keys prefixed with the environment name."""
    settings = env if isinstance(env, EnvSettings) else load_settings(env)
    modules = stage_modules(trains=settings.promotion.source is None)
    assets = dg.load_assets_from_modules(modules, key_prefix=settings.name, source_key_prefix=settings.name)
    checks = dg.load_asset_checks_from_modules(modules, asset_key_prefix=settings.name)
    return [*assets, *checks]


def build_defs(env: str | EnvSettings) -> dg.Definitions:
    """Everything for one environment: asset keys prefixed with its name, resources from its settings."""
    offline()
    settings = env if isinstance(env, EnvSettings) else load_settings(env)
    definitions = environment_assets(settings)
    assets = [d for d in definitions if not isinstance(d, dg.AssetChecksDefinition)]
    checks = [d for d in definitions if isinstance(d, dg.AssetChecksDefinition)]
    # The Databricks endpoint's inference table, read into inference_log on a schedule, where one is served there.
    imported = build_inference_table(settings)
    inference_table = [imported.asset] if imported else []
    # Partitioned by window and built from the monitoring settings: outside the ingest and adopt jobs.
    monitoring = build_monitoring_assets(settings.name, settings.monitoring, [asset.key for asset in inference_table])
    # The endpoint follows the champion alias, which sensors and rollback move: its own job too.
    serving_endpoint = build_serving_endpoint(settings)
    apart = dg.AssetSelection.assets(*monitoring, serving_endpoint, *inference_table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dagster-mlflow's hook is marked beta
        from dagster_mlflow import end_mlflow_on_run_finished
    ingest_job = dg.define_asset_job(
        INGEST_JOB,
        selection=dg.AssetSelection.all() - apart,
        description=(
            f"Landing zone → documents → chunks → embeddings → vector index → trained embedding model → "
            f"RAG model (challenger) → evaluation → batch predictions ({settings.name})"
        ),
        tags={ENV_TAG: settings.name},
        hooks={end_mlflow_on_run_finished},
    )
    monitor_job = build_monitor_job(settings.name, settings.monitoring)
    endpoint_job = build_endpoint_job(settings.name)
    jobs = [ingest_job, monitor_job, endpoint_job, *operator_jobs(settings.name, settings.promotion.requires_approval)]
    schedules = []
    if imported:
        jobs.append(imported.job)
        schedules.append(imported.schedule)
    interval = settings.sensor_interval_seconds
    # Rows read from the inference table land up to its lookback after their request: windows stay open that long.
    late_ms = max(LATE_ROWS_MS, int(imported.lookback.total_seconds() * 1000)) if imported else LATE_ROWS_MS
    sensors = [
        build_new_documents_sensor(INGEST_JOB, interval),
        build_champion_sensor(settings.name, settings.promotion.requires_approval, interval),
        build_inference_log_sensor(settings.name, interval),
        build_new_requests_sensor(settings.name, monitor_job.name, monitoring_partitions(settings.monitoring), interval, late_ms=late_ms),
        build_endpoint_sensor(settings.name, endpoint_job.name, settings.compute, interval),
    ]
    resources = build_resources(settings)
    if settings.promotion.source is None:
        drift_watch = drift_watch_for(settings.name)
        resources["drift_watch"] = drift_watch
        sensors.append(build_retrain_sensor(INGEST_JOB, sorted(drift_watch.environments), interval))
    if settings.promotion.source:
        adopt_job = dg.define_asset_job(
            ADOPT_JOB,
            selection=dg.AssetSelection.assets(dg.AssetKey([settings.name, "rag_model"])).downstream() - apart,
            description=f"Copy {settings.promotion.source}'s champion here and evaluate it on {settings.name}'s data",
            tags={ENV_TAG: settings.name},
            hooks={end_mlflow_on_run_finished},
        )
        jobs.append(adopt_job)
        sensors.append(build_upstream_sensor(ADOPT_JOB, interval))
    return dg.Definitions(
        assets=[*assets, *monitoring, serving_endpoint, *inference_table],
        asset_checks=checks,
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources=resources,
        # One process: the embedding model and torch are loaded once per run, not once per step;
        # behind the environment's lock, so that a run never starts beside an `llmops run`.
        executor=environment_locked_executor,
        metadata={
            "environment": settings.name,
            "landing": str(settings.landing),
            "lancedb": settings.lancedb_uri,
            "mlflow_tracking_uri": settings.mlflow.tracking_uri,
            "registered_model": settings.mlflow.registered_model,
        },
    )


def code_location(env: str) -> dg.Definitions:
    """One environment as a code location of ``workspace.yaml``: its own process, whose runs and
    sensor ticks register versions and move aliases. Where the environment declares ``auth:`` for a
    tracking server, that process signs in to MLflow as ``auth.service`` (unless it was started
    signed in as someone), so the daemon and the UI need no credentials of their own."""
    from llmops_dagster.core.access import AccessError, service_credentials, tracking_server

    settings = load_settings(env)
    try:
        os.environ.update(service_credentials(settings.auth, tracking_server(settings.mlflow.tracking_uri, settings.mlflow.registry_uri)))
    except AccessError as error:  # reads still work; the server refuses writes with its own message
        logging.getLogger("llmops_dagster").warning(f"environment '{env}': auth.service {error}; MLflow calls are anonymous")
    return build_defs(settings)


@dg.definitions
def test_defs() -> dg.Definitions:
    return code_location("test")


@dg.definitions
def staging_defs() -> dg.Definitions:
    return code_location("staging")


@dg.definitions
def prod_defs() -> dg.Definitions:
    return code_location("prod")
