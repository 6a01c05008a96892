"""The llmops argument parser and entry point: one line and exit code 2 for what the user can fix."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from llmops_dagster.cli.access import cmd_access
from llmops_dagster.cli.bundle import cmd_bundle
from llmops_dagster.cli.common import EXIT_USAGE, UserError, missing_extra, passages, port, positive
from llmops_dagster.cli.monitor import cmd_monitor, window_span
from llmops_dagster.cli.promotion import cmd_approve, cmd_rollback
from llmops_dagster.cli.quarantine import cmd_quarantine
from llmops_dagster.cli.query import cmd_ask, cmd_predict, cmd_search
from llmops_dagster.cli.run import cmd_run, cmd_tick
from llmops_dagster.cli.serve import cmd_serve
from llmops_dagster.cli.status import cmd_status
from llmops_dagster.core.runtime import offline
from llmops_dagster.settings import ENVIRONMENTS


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from llmops_dagster.core.index import SEARCH_MODES

    parser = Parser(prog="llmops", description="Operate the llmops-dagster environments.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = commands.add_parser("run", help="materialize an environment's whole graph, with progress")
    run.add_argument("--env", required=True, choices=ENVIRONMENTS)
    run.add_argument("--landing", help="ingest this folder instead of the environment's landing zone")
    run.set_defaults(handler=cmd_run)

    find = commands.add_parser("search", help="ranked passages for a query, with sources and scores")
    find.add_argument("--env", required=True, choices=ENVIRONMENTS)
    find.add_argument("--k", type=passages, default=5, help="passages to return (default 5)")
    find.add_argument("--mode", choices=SEARCH_MODES, default="hybrid")
    find.add_argument("--json", action="store_true", help='print {"query", "mode", "passages": [...]} as JSON')
    find.add_argument("--local", action="store_true", help="search in this process even when the environment's server is up")
    find.add_argument("query")
    find.set_defaults(handler=cmd_search)

    ask = commands.add_parser("ask", help="answer a question with the champion (or the challenger), with sources")
    ask.add_argument("--env", required=True, choices=ENVIRONMENTS)
    ask.add_argument("--k", type=passages, help="passages to retrieve (default: the model's setting)")
    ask.add_argument("--json", action="store_true", help="print the answer, passages and sources as JSON")
    ask.add_argument("--local", action="store_true", help="load the model in this process even when the environment's server is up")
    ask.add_argument("question")
    ask.set_defaults(handler=cmd_ask)

    predict = commands.add_parser("predict", help="answer a JSON Lines file of questions into another")
    predict.add_argument("--env", required=True, choices=ENVIRONMENTS)
    predict.add_argument("--questions", required=True, help='input: one {"question": ...} per line')
    predict.add_argument("--out", required=True, help="output: one answer object per question, same order")
    predict.set_defaults(handler=cmd_predict)

    serve = commands.add_parser("serve", help="serve the champion over HTTP (MLflow /invocations, OpenAI /v1/chat/completions)")
    serve.add_argument("--env", required=True, choices=ENVIRONMENTS)
    serve.add_argument("--host", help="address to listen on (default: serving.host, 127.0.0.1)")
    serve.add_argument("--port", type=port, help="port (default: serving.port of the environment)")
    serve.set_defaults(handler=cmd_serve)

    tick = commands.add_parser("tick", help="evaluate the environment's promotion and endpoint sensors once, as the daemon would")
    tick.add_argument("--env", required=True, choices=ENVIRONMENTS)
    tick.set_defaults(handler=cmd_tick)

    approve = commands.add_parser("approve", help="approve a validated version for promotion into the environment")
    approve.add_argument("--env", required=True, choices=ENVIRONMENTS)
    approve.add_argument("--version", required=True, type=positive)
    approve.set_defaults(handler=cmd_approve)

    rollback = commands.add_parser("rollback", help="put the previous champion back (or --to a version that was champion)")
    rollback.add_argument("--env", required=True, choices=ENVIRONMENTS)
    rollback.add_argument("--to", type=positive, help="a version that was champion before")
    rollback.set_defaults(handler=cmd_rollback)

    monitor = commands.add_parser("monitor", help="the monitoring summary of the latest windows: metrics, drift, failing checks")
    monitor.add_argument("--env", required=True, choices=ENVIRONMENTS)
    monitor.add_argument("--window", type=window_span, help="how far back, e.g. 7d (default: one monitoring window)")
    monitor.add_argument("--json", action="store_true")
    monitor.set_defaults(handler=cmd_monitor)

    bundle = commands.add_parser("bundle", help="write databricks.yml from environments.yaml (--check: compare the committed one)")
    bundle.add_argument("--check", action="store_true", help="print how the file differs from a fresh render; exit 1 if it does")
    bundle.add_argument("--out", help="the bundle file (default: databricks.yml beside environments.yaml)")
    bundle.set_defaults(handler=cmd_bundle)

    access = commands.add_parser("access", help="apply the environment's auth: policy to its MLflow tracking server (basic auth)")
    access.add_argument("--env", required=True, choices=ENVIRONMENTS)
    access.set_defaults(handler=cmd_access)

    quarantine = commands.add_parser("quarantine", help="the landing files set aside, with the reason for each")
    quarantine.add_argument("--env", required=True, choices=ENVIRONMENTS)
    quarantine.add_argument("--json", action="store_true")
    quarantine.set_defaults(handler=cmd_quarantine)

    status = commands.add_parser("status", help="champion and challenger of each environment, their checks and what is pending")
    status.add_argument("--env", choices=ENVIRONMENTS)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    offline()
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"llmops: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("llmops: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug or an outage: one line; LLMOPS_DEBUG=1 shows the traceback
        if os.environ.get("LLMOPS_DEBUG"):
            raise
        if isinstance(error, ModuleNotFoundError) and (line := missing_extra(error)) is not None:
            print(f"llmops: error: {line}", file=sys.stderr)
            return EXIT_USAGE
        first_line = (str(error).splitlines() or [""])[0]
        print(f"llmops: error: {type(error).__name__}: {first_line} (set LLMOPS_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
