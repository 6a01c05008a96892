"""Thin asset functions and their checks, one module per stage. Keys are unprefixed here;
``definitions.build_defs`` prefixes them with the environment name."""

from types import ModuleType

from llmops_dagster.assets import adopted, chunks, gate, index, ingestion, predictions, serving, training


def stage_modules(trains: bool) -> list[ModuleType]:
    """An environment that trains registers its own rag_model; one that does not adopts its source's champion."""
    return [ingestion, chunks, index, training if trains else adopted, gate, predictions, serving]
