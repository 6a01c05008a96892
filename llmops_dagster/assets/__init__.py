"""Thin asset functions and their checks, one module per stage. Keys are unprefixed here;
``definitions.build_defs`` prefixes them with the environment name."""

from llmops_dagster.assets import chunks, index, ingestion, model, predictions

STAGE_MODULES = [ingestion, chunks, index, model, predictions]
