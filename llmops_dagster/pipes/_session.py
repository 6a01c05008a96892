"""What every entry point shares: its arguments, the environment's settings and resources, the
Pipes channel back to Dagster whichever client launched it, and the MLflow run it logs into.

An entry point also runs without Dagster (``databricks bundle run``): ``open_dagster_pipes`` then
hands back a stand-in context, logs go to stderr, nothing is reported, and steps that log to
MLflow start a run of their own.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT,
    PipesCliArgsParamsLoader,
    PipesContext,
    PipesEnvVarParamsLoader,
    PipesParamsLoader,
    PipesUnityCatalogVolumesMessageWriter,
    open_dagster_pipes,
)

from llmops_dagster.core.runtime import offline
from llmops_dagster.pipes import MLFLOW_RUN_EXTRA
from llmops_dagster.settings import ENVIRONMENTS, EnvSettings, load_settings

if TYPE_CHECKING:
    from llmops_dagster.resources import RegistryResource

DATABRICKS_RUNTIME = "DATABRICKS_RUNTIME_VERSION"  # set by every Databricks runtime, serverless included
STEP_TAG = "llmops/pipes_step"  # on an MLflow run a step started for itself, outside Dagster


def arguments(step: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--env``; the Pipes bootstrap arguments a Databricks wheel task appends are left to dagster-pipes."""
    parser = argparse.ArgumentParser(prog=f"llmops-pipes-{step}", description=f"The {step} step as a Dagster Pipes process")
    parser.add_argument("--env", required=True, choices=ENVIRONMENTS)
    parser.add_argument("--landing", default=None, help="a landing zone other than the environment's")
    known, _ = parser.parse_known_args(argv)
    return known


def _params_loader() -> PipesParamsLoader:
    # Serverless wheel tasks get the bootstrap parameters as arguments; subprocesses and new
    # classic clusters as environment variables.
    return PipesCliArgsParamsLoader() if DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT in sys.argv else PipesEnvVarParamsLoader()


def open_pipes() -> PipesContext:
    """The Pipes context. On Databricks (``DATABRICKS_RUNTIME_VERSION`` is set, serverless or
    classic) messages go as chunks into the Unity Catalog volume folder the client reads; in a
    subprocess, to the one file ``PipesSubprocessClient`` reads (the default writer)."""
    offline()
    loader = _params_loader()
    on_databricks = DATABRICKS_RUNTIME in os.environ or DAGSTER_PIPES_CONTEXT_CLI_ARGUMENT in sys.argv
    writer = PipesUnityCatalogVolumesMessageWriter() if on_databricks else None
    return open_dagster_pipes(params_loader=loader, message_writer=writer)


def launched_by_dagster(pipes: PipesContext) -> bool:
    """False for the stand-in ``open_dagster_pipes`` returns when no Dagster process launched this one."""
    return isinstance(pipes, PipesContext)


def extra(pipes: PipesContext, key: str) -> Any:
    """An extra the launching asset passed, or None (and always None outside Dagster)."""
    if not launched_by_dagster(pipes):
        return None
    return (pipes.extras or {}).get(key)


def logger(pipes: PipesContext) -> logging.Logger:
    """The Dagster run's log when Dagster launched this process; stderr otherwise."""
    if launched_by_dagster(pipes):
        return pipes.log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    return logging.getLogger("llmops.pipes")


def environment(args: argparse.Namespace, pipes: PipesContext) -> EnvSettings:
    """The environment's settings, with the landing zone the extras (or ``--landing``) name. On
    Databricks, the variables ``databricks.job_environment_vars`` names are read from their secret
    scopes first (``export_secrets``): the index's object-store credentials, for one."""
    settings = load_settings(args.env)
    if DATABRICKS_RUNTIME in os.environ:
        export_secrets(settings.databricks.job_environment_vars)
    landing = extra(pipes, "landing") or args.landing
    if landing:
        settings = settings.with_landing(Path(landing))
    return settings


def export_secrets(variables: Mapping[str, str], client: Any = None) -> list[str]:
    """Set each variable of ``variables`` (name: ``{{secrets/<scope>/<key>}}``) that is not set
    yet to its secret's value, through ``dbutils.secrets`` (the runtime's own on Databricks, the
    Secrets API elsewhere); returns the names set. A secret that cannot be read ends the step with
    the variable and reference named, never a value."""
    from llmops_dagster.core.bundle import SECRET_REFERENCE

    pending = {name: SECRET_REFERENCE.match(reference) for name, reference in variables.items() if name not in os.environ}
    if not pending:
        return []
    if client is None:
        from databricks.sdk import WorkspaceClient

        client = WorkspaceClient()
    for name, reference in pending.items():
        try:
            os.environ[name] = client.dbutils.secrets.get(scope=reference["scope"], key=reference["key"])
        except Exception as error:  # noqa: BLE001 - whatever the cause, the step cannot reach its storage without it
            raise SystemExit(
                f"databricks.job_environment_vars.{name}: cannot read {reference[0]} ({type(error).__name__}: {error}); "
                "the job's identity needs READ on that secret scope"
            ) from None
    return sorted(pending)


def resources(settings: EnvSettings) -> dict[str, Any]:
    """The same resources the Dagster definitions build from these settings."""
    from llmops_dagster.resources import settings_resources

    return settings_resources(settings)


def run_id(pipes: PipesContext) -> str:
    """The Dagster run this process belongs to: rows keyed by it are replaced, not duplicated, on a re-run."""
    value = pipes.run_id if launched_by_dagster(pipes) else None
    if not isinstance(value, str) or not value:
        raise SystemExit("not launched by Dagster Pipes: no run id to key the rows by")
    return value


def run_key(pipes: PipesContext, mlflow_run_id: str) -> str:
    """What rows and registry tags are keyed by: the Dagster run, or outside Dagster the step's MLflow run."""
    return pipes.run_id if launched_by_dagster(pipes) else f"mlflow-{mlflow_run_id}"


@contextmanager
def mlflow_run(pipes: PipesContext, registry: RegistryResource, env: str, step: str) -> Iterator[str]:
    """The MLflow run this step logs into, active for ``mlflow``'s fluent calls; yields its id.

    Launched by Dagster, it is the Dagster run's own MLflow run (the ``mlflow_run_id`` extra),
    resumed and handed back still RUNNING: the Dagster run goes on logging to it and ends it.
    Without Dagster the step starts a run of its own in the environment's experiment and ends it.
    """
    import mlflow

    from llmops_dagster.tags import ENV_TAG

    registry.client()  # the environment's tracking and registry URIs, for the fluent API too
    given = extra(pipes, MLFLOW_RUN_EXTRA)
    if given:
        mlflow.start_run(run_id=given)
        try:
            yield given
        finally:
            mlflow.end_run(status="RUNNING")
        return
    with mlflow.start_run(experiment_id=registry.ensure_experiment(), tags={ENV_TAG: env, STEP_TAG: step}) as run:
        yield run.info.run_id


def asset_key(pipes: PipesContext, name: str) -> str | None:
    """The launching step's key for the asset ``name`` (keys carry the environment as a prefix), or
    None when that step does not materialize it."""
    if not launched_by_dagster(pipes):
        return None
    return next((key for key in pipes.asset_keys if key.split("/")[-1] == name), None)


def report(pipes: PipesContext, metadata: Mapping[str, Any], asset: str | None = None) -> None:
    """Report a materialization with the metadata the in-process asset returns (Dagster metadata
    values become their Pipes form). With ``asset``, only if the launching step materializes it."""
    if not launched_by_dagster(pipes):
        return
    key = None
    if asset is not None:
        key = asset_key(pipes, asset)
        if key is None:
            return
    pipes.report_asset_materialization(metadata={name: pipes_value(value) for name, value in metadata.items()}, asset_key=key)


def pipes_value(value: Any) -> Any:
    """A metadata value as Pipes carries it: markdown and table schemas typed, plain values as they are."""
    import dagster as dg

    if isinstance(value, dg.TableSchema):
        value = dg.MetadataValue.table_schema(value)
    if isinstance(value, dg.TableSchemaMetadataValue):
        columns = [{"name": c.name, "type": c.type, "description": c.description} for c in value.schema.columns]
        return {"type": "table_schema", "raw_value": {"columns": columns}}
    if isinstance(value, dg.MarkdownMetadataValue):
        return {"type": "md", "raw_value": value.md_str}
    if isinstance(value, dg.MetadataValue):
        return {"type": "__infer__", "raw_value": value.value}
    return value
