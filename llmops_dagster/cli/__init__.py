"""``llmops``: the operator's command line for what the Dagster UI does not express.

    llmops run     --env ENV [--landing DIR]
    llmops search  --env ENV [--k K] [--mode hybrid|vector|text] [--json] QUERY
    llmops ask     --env ENV [--k K] [--json] QUESTION
    llmops predict --env ENV --questions IN.jsonl --out OUT.jsonl
    llmops tick     --env ENV
    llmops approve  --env ENV --version N
    llmops rollback --env ENV [--to VERSION]
    llmops status   [--env ENV] [--json]

Bad arguments and missing state print one line and exit 2; no traceback reaches the user.

One module per concern: ``app`` (the parser and entry point), ``common``, ``instance`` (the Dagster
instance and the one-run-per-environment guard), ``progress``, ``execution``, and the commands in
``run``, ``query``, ``promotion`` and ``status``.
"""

from llmops_dagster.cli.app import build_parser, main
from llmops_dagster.cli.instance import DAGSTER_YAML, ensure_dagster_home

__all__ = ["DAGSTER_YAML", "build_parser", "ensure_dagster_home", "main"]
