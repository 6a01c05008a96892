"""What every command shares: the one-line user error, settings and resources for --env, the registry client, the acting user."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from llmops_dagster.settings import EnvSettings, SettingsError, load_settings

EXIT_USAGE = 2
# The import names of the `platform` extra's own distributions (pyproject.toml): the package alone is
# what a step on Databricks compute needs, and commands that drive Dagster, Spark or the server need more.
PLATFORM_MODULES = frozenset(
    {
        "dagster_webserver", "dagster_databricks", "dagster_mlflow", "pyspark", "fastapi", "uvicorn", "prometheus_client",
        "filelock", "textstat", "scipy", "matplotlib", "mpl_toolkits", "pylab",
    }
)


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The user's line for a module of the platform extra that is not installed; None for any other."""
    module = (error.name or "").split(".")[0]
    if module not in PLATFORM_MODULES:
        return None
    return f"this command needs the platform extra ({module} is not installed): pip install 'llmops-dagster[platform]'"


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def settings_for(args: argparse.Namespace) -> EnvSettings:
    try:
        settings = load_settings(args.env)
    except SettingsError as error:
        raise UserError(str(error)) from None
    landing = getattr(args, "landing", None)
    if landing:
        settings = settings.with_landing(existing_folder(Path(landing).expanduser(), "landing folder"))
    return settings


def existing_folder(path: Path, what: str, missing: str = "") -> Path:
    """``path`` when it is a folder; otherwise a UserError that says whether it is missing (then
    followed by ``missing``, what to do about it) or a file."""
    return _existing(path, what, folder=True, missing=missing)


def existing_file(path: Path, what: str) -> Path:
    """``path`` when it is a file; otherwise a UserError that says whether it is missing or a folder."""
    return _existing(path, what, folder=False)


def _existing(path: Path, what: str, folder: bool, missing: str = "") -> Path:
    if not path.exists():
        raise UserError(f"{what} not found: {path}{missing}")
    if path.is_dir() != folder:
        wanted, found = ("folder", "file") if folder else ("file", "folder")
        raise UserError(f"{what} {path} is a {found}, not a {wanted}")
    return path


def writable_file(path: Path, what: str) -> Path:
    """``path`` when a file can be written there (its folder is created if missing), checked before any work."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; name a file")
    folder = next((parent for parent in path.parents if parent.exists()), Path("/"))
    if not folder.is_dir():
        raise UserError(f"{what} {path} cannot be created: {folder} is a file")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{what} {path} cannot be written: no write permission in {folder}")
    try:  # a file system mounted read-only, or one of the kernel's, says so only when a file is made
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise UserError(f"{what} {path} cannot be written: {error.strerror} in {folder}") from None
    return path


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


def port(value: str) -> int:
    number = positive(value)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"a port is within 1-65535, got {number}")
    return number


# A version number, as MLflow stores it (a 32-bit integer); a larger one is no version, not a crash.
MAX_WHOLE = 2**31 - 1
# --k of a search or question run in process: more passages than this is a dump of the index, not a
# ranking (the server refuses above serving.max_k).
MAX_PASSAGES = 10_000


def positive(value: str, most: int = MAX_WHOLE) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{value}'") from None
    if not 1 <= number <= most:
        raise argparse.ArgumentTypeError(f"must be within 1-{most}, got {value if len(value) <= 20 else value[:20] + '…'}")
    return number


def passages(value: str) -> int:
    """--k: how many passages, at least one and at most ``MAX_PASSAGES``."""
    return positive(value, MAX_PASSAGES)
