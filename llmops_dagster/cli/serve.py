"""llmops serve: the environment's champion as a long-lived HTTP endpoint."""

from __future__ import annotations

import argparse

from llmops_dagster.cli.common import UserError, registry_client, settings_for


def cmd_serve(args: argparse.Namespace) -> int:
    from llmops_dagster.serving.server import ServeError, serve

    settings = settings_for(args)
    try:
        return serve(settings, registry_client(settings), args.host, args.port)
    except ServeError as error:
        raise UserError(str(error)) from None
