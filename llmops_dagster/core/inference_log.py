"""What the ``inference_log`` table holds, in a few figures: what the UI shows for it and what the
sensor reports when it changes."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from llmops_dagster.core import store


def summary(lance: store.LanceStore) -> dict[str, Any]:
    """Row count, table version, last request time, error count and the versions that answered."""
    table = lance.open(store.INFERENCE_LOG)
    if table is None:
        return {"rows": 0, "table_version": 0, "last_request": None, "errors": 0, "versions_seen": {}}
    rows = table.search().select(["timestamp_ms", "status_code", "served_model_version"]).limit(None).to_arrow()
    stamps = rows.column("timestamp_ms").to_pylist()
    versions = Counter(version for version in rows.column("served_model_version").to_pylist() if version)
    return {
        "rows": rows.num_rows,
        "table_version": table.version,
        "last_request": datetime.fromtimestamp(max(stamps) / 1000, UTC).isoformat(timespec="seconds") if stamps else None,
        "errors": sum(1 for status in rows.column("status_code").to_pylist() if status and status >= 400),
        "versions_seen": dict(sorted(versions.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0)),
    }


def metadata(facts: dict[str, Any]) -> dict[str, Any]:
    """The summary as Dagster metadata values (plain types; the caller wraps them)."""
    seen = ", ".join(f"v{version}: {count}" for version, count in facts["versions_seen"].items()) or "none"
    return {
        "dagster/row_count": facts["rows"],
        "table_version": facts["table_version"],
        "last_request": facts["last_request"] or "never",
        "errors": facts["errors"],
        "versions_seen": seen,
    }
