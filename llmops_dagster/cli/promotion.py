"""llmops approve and rollback: moving the champion by hand, through the registry history, as the
environment's service account on a tracking server with basic auth (``cli.access``)."""

from __future__ import annotations

import argparse

from llmops_dagster.cli.access import acting_account, refusals_exit_1, registry_call
from llmops_dagster.cli.common import UserError, actor, registry_client, settings_for
from llmops_dagster.core.access import Account, Action


def promotion_call(call, *args):
    from mlflow.exceptions import MlflowException

    from llmops_dagster.core.promotion import PromotionError
    from llmops_dagster.core.registry import error_line

    try:
        return call(*args)
    except PromotionError as error:
        raise UserError(str(error)) from None
    except MlflowException as error:
        raise UserError(f"registry: {error_line(error)}") from None


def _actor(account: Account | None) -> str:
    # Who asked, and the tracking-server account that did it when one is signed in.
    return f"{actor()} (as {account.username})" if account is not None else actor()


@refusals_exit_1
def cmd_approve(args: argparse.Namespace) -> int:
    from llmops_dagster.core import promotion

    settings = settings_for(args)
    name = settings.mlflow.registered_model
    with acting_account(settings) as account:
        action = Action.approve_version(name, str(args.version))
        kind = registry_call(settings, account, action, promotion.approve, registry_client(settings), name, args.version, _actor(account))
    if kind == promotion.CHALLENGER_APPROVED:
        follows = f"the champion sensor promotes it on its next tick (`llmops tick --env {args.env}` runs it now)"
    else:
        follows = f"it is an earlier champion, not the challenger: `llmops rollback --env {args.env} --to {args.version}` makes it champion again"
    print(f"{name} v{args.version} approved by {_actor(account)}; {follows}")
    return 0


@refusals_exit_1
def cmd_rollback(args: argparse.Namespace) -> int:
    from llmops_dagster.core import promotion
    from llmops_dagster.core.registry import CHAMPION

    settings = settings_for(args)
    name = settings.mlflow.registered_model
    with acting_account(settings) as account:
        action = Action.set_alias(name, CHAMPION)
        entry = registry_call(settings, account, action, promotion.rollback, registry_client(settings), name, _actor(account), args.to)
    print(f"{name}: champion v{entry.previous} → v{entry.version} ({entry.at}, {entry.actor})")
    return 0
