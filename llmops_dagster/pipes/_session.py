"""What every entry point shares: its arguments, the environment's settings and resources, and
the Pipes channel back to Dagster, whichever client launched it."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from llmops_dagster.settings import ENVIRONMENTS, EnvSettings, load_settings

DATABRICKS_RUNTIME = "DATABRICKS_RUNTIME_VERSION"  # set by every Databricks runtime, serverless included


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


def environment(args: argparse.Namespace, pipes: PipesContext) -> EnvSettings:
    """The environment's settings, with the landing zone the extras (or ``--landing``) name."""
    settings = load_settings(args.env)
    landing = pipes.get_extra("landing") if _has_extra(pipes, "landing") else args.landing
    if landing:
        settings = settings.with_landing(Path(landing))
    return settings


def _has_extra(pipes: PipesContext, key: str) -> bool:
    try:
        return key in (pipes.extras or {})
    except Exception:  # outside Dagster open_dagster_pipes returns a mock
        return False


def resources(settings: EnvSettings) -> dict[str, Any]:
    """The same resources the Dagster definitions build from these settings."""
    from llmops_dagster.resources import settings_resources

    return settings_resources(settings)


def run_id(pipes: PipesContext) -> str:
    """The Dagster run this process belongs to: rows keyed by it are replaced, not duplicated, on a re-run."""
    value = pipes.run_id
    if not isinstance(value, str) or not value:
        raise SystemExit("not launched by Dagster Pipes: no run id to key the rows by")
    return value
