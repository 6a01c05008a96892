"""What the asset modules share: materialization metadata (row counts, schema, table version,
summary), check results, and the environment-prefixed key of an asset."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pyarrow as pa

from llmops_dagster.core.checks import Verdict


def env_key(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, key: dg.AssetKey) -> dg.AssetKey:
    """``key`` in the environment of the asset (or check) being executed: definitions prefix every
    key with the environment name, while the asset modules name keys without it."""
    if isinstance(context, dg.AssetExecutionContext):
        own = next(iter(context.selected_asset_keys))
    else:
        own = context.check_specs[0].asset_key
    return dg.AssetKey([*own.path[:-1], *key.path])


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=f.name,
                type=str(f.type),
                description=(f.metadata or {}).get(b"description", b"").decode() or None,
            )
            for f in schema
        ]
    )


def table_metadata(schema: pa.Schema, rows: int, version: int | None, uri: str, table: str, summary: str) -> dict[str, Any]:
    return {
        "dagster/row_count": rows,
        "dagster/column_schema": column_schema(schema),
        "dagster/uri": f"{uri}/{table}.lance",
        "table_version": version if version is not None else 0,
        "summary": dg.MetadataValue.md(summary),
    }


def check_result(verdict: Verdict) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=verdict.passed, description=verdict.description, metadata=verdict.metadata)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
