"""llmops approve and rollback: moving the champion by hand, through the registry history."""

from __future__ import annotations

import argparse

from llmops_dagster.cli.common import UserError, actor, registry_client, settings_for


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


def cmd_approve(args: argparse.Namespace) -> int:
    from llmops_dagster.core import promotion

    settings = settings_for(args)
    name = settings.mlflow.registered_model
    promotion_call(promotion.approve, registry_client(settings), name, args.version, actor())
    waits = "the champion sensor promotes it on its next tick" if settings.promotion.requires_approval else "no approval is needed here"
    print(f"{name} v{args.version} approved by {actor()}; {waits}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from llmops_dagster.core import promotion

    settings = settings_for(args)
    name = settings.mlflow.registered_model
    entry = promotion_call(promotion.rollback, registry_client(settings), name, actor(), args.to)
    print(f"{name}: champion v{entry.previous} → v{entry.version} ({entry.at}, {entry.actor})")
    return 0
