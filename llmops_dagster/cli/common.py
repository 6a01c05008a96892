"""What every command shares: the one-line user error, settings and resources for --env, the registry client, the acting user."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from llmops_dagster.settings import EnvSettings, SettingsError, load_settings

EXIT_USAGE = 2


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def settings_for(args: argparse.Namespace) -> EnvSettings:
    try:
        settings = load_settings(args.env)
    except SettingsError as error:
        raise UserError(str(error)) from None
    landing = getattr(args, "landing", None)
    if landing:
        path = Path(landing).expanduser()
        if not path.is_dir():
            raise UserError(f"landing folder not found: {path}")
        settings = settings.with_landing(path)
    return settings


def resources_for(settings: EnvSettings) -> dict:
    """The environment's resources, as the Dagster definitions build them: the one path from
    settings to core objects."""
    from llmops_dagster.resources import settings_resources

    return settings_resources(settings)


def registry_client(settings: EnvSettings):
    return resources_for(settings)["registry"].client()


def actor() -> str:
    import getpass

    return os.environ.get("LLMOPS_ACTOR") or f"cli:{getpass.getuser()}"


def positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{value}'") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number
