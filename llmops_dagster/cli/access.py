"""Access control on an MLflow tracking server with basic auth: ``llmops access`` applies an
environment's policy, and the commands that write to the registry act as its service account.

Which account a command acts as:
- ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` in the environment, when set: a person
  signed in as themselves, as every MLflow client reads them;
- otherwise the ``auth.service`` account, its password read from the variable it names. The two
  variables are set in this process for the command's registry calls only and restored afterwards;
  the password is never an argument, never printed, and no child process is started meanwhile.

A refusal by the server (403, or 401 for a wrong password) is one line naming the account, what it
tried and the permission it holds, with exit code 1.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from llmops_dagster.cli.common import UserError, settings_for
from llmops_dagster.core.access import (
    PASSWORD_ENV,
    REGISTERED_MODEL,
    USERNAME_ENV,
    AccessError,
    Account,
    Action,
    explain_denied,
    is_denied,
    service_credentials,
)

if TYPE_CHECKING:
    from llmops_dagster.settings import EnvSettings

EXIT_DENIED = 1


class AccessDenied(Exception):
    """The tracking server refused the acting account; the message is the one line to print."""


def tracking_server(settings: EnvSettings) -> str | None:
    """The URL of the environment's registry when it is an MLflow tracking server (http/https), else None."""
    from llmops_dagster.core.access import tracking_server as server_of

    return server_of(settings.mlflow.tracking_uri, settings.mlflow.registry_uri)


@contextmanager
def _variables(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def acting_account(settings: EnvSettings) -> Iterator[Account | None]:
    """The account the registry calls inside the block are made as (None: no server or no auth)."""
    server = tracking_server(settings)
    username = os.environ.get(USERNAME_ENV)
    if server is not None and username:
        yield Account(username, PASSWORD_ENV)
        return
    try:
        credentials = service_credentials(settings.auth, server)
    except AccessError as error:
        raise UserError(f"environment '{settings.name}': auth.service {error}") from None
    if not credentials:
        yield None
        return
    with _variables(credentials):
        yield settings.auth.service


def _held(settings: EnvSettings, account: Account, model: str) -> str | None:
    from llmops_dagster.core.access import held_permission

    try:
        return held_permission(tracking_server(settings) or "", account, REGISTERED_MODEL, model)
    except Exception:  # the refusal is explained either way; the permission only sharpens it
        return None


def denied(settings: EnvSettings, account: Account | None, error: BaseException, action: Action) -> AccessDenied:
    """The refusal of ``action`` as one line: who, what, and the permission they hold."""
    if account is not None:
        held = _held(settings, account, action.resource) if action.resource_type == REGISTERED_MODEL else None
        action = Action(action.verb, action.resource_type, action.resource, account.username, held, account.password_env)
    return AccessDenied(explain_denied(error, action))


def registry_call(settings: EnvSettings, account: Account | None, action: Action, call: Callable, *args: object) -> object:
    """``call(*args)`` with the registry's errors as one line: a refusal (exit 1), a promotion that
    must not happen or another registry error (exit 2)."""
    from mlflow.exceptions import MlflowException

    from llmops_dagster.core.promotion import PromotionError
    from llmops_dagster.core.registry import error_line

    try:
        return call(*args)
    except PromotionError as error:
        raise UserError(str(error)) from None
    except MlflowException as error:
        if is_denied(error):
            raise denied(settings, account, error, action) from None
        raise UserError(f"registry: {error_line(error)}") from None


def refusals_exit_1(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Print a refusal as one line and exit 1 (what the user can fix stays exit 2)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except AccessDenied as refusal:
            print(f"llmops: error: {refusal}", file=sys.stderr)
            return EXIT_DENIED

    return run


@refusals_exit_1
def cmd_access(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from llmops_dagster.core.access import apply_policy
    from llmops_dagster.core.registry import error_line

    settings = settings_for(args)
    where = f"environment '{settings.name}'"
    server = tracking_server(settings)
    if settings.auth is None:
        raise UserError(f"{where} declares no auth: section in environments.yaml; there is no policy to apply")
    if server is None:
        raise UserError(
            f"{where}: mlflow.tracking_uri {settings.mlflow.tracking_uri} is not an MLflow tracking server; "
            "the policy applies to `mlflow server --app-name basic-auth` (http://...)"
        )
    admin = settings.auth.admin
    if admin is None:
        raise UserError(f"{where}: auth.admin is not declared; applying the policy needs the tracking server's admin account")
    policy = settings.auth.policy(settings.mlflow.experiment, settings.mlflow.registered_model, settings.mlflow.artifact_location)
    try:
        report = apply_policy(server, policy, admin)
    except AccessError as error:
        raise UserError(f"{where}: {error}") from None
    except MlflowException as error:
        if is_denied(error):
            action = Action("apply the access policy to", REGISTERED_MODEL, policy.registered_model, admin.username, None, admin.password_env)
            raise AccessDenied(explain_denied(error, action)) from None
        raise UserError(f"tracking server {server}: {error_line(error)}") from None
    for line in report.lines():
        print(f"{settings.name}: {line}")
    readers = ", ".join(f"'{reader.username}'" for reader in policy.readers) or "none"
    print(
        f"{settings.name}: '{policy.service.username}' MANAGEs, readers {readers} READ "
        f"experiment '{policy.experiment}' and registered model '{policy.registered_model}' on {server}"
    )
    return 0
