"""llmops monitor: an environment's monitoring summary without the UI, read from its ``monitoring`` table.

The windows of the last ``--window`` (one monitoring window by default) are read from the table.
The window under way, when the table does not hold it yet, is computed here as the asset would
compute it, and not written: the table stays the asset's. A past window the table lacks is named,
with the command that backfills it. Exit code 1 when a check of the latest window with requests
fails at ERROR, as ``llmops run`` does for a failed check.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, date, datetime, time, timedelta
from itertools import groupby
from typing import Any

from llmops_dagster.cli.common import resources_for, settings_for
from llmops_dagster.settings import EnvSettings


def window_span(value: str) -> timedelta:
    """``--window``: a duration such as 7d, 12h or 1w."""
    from llmops_dagster.core.monitoring import parse_window

    try:
        return parse_window(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 1d, 7d, 12h or 1w, got '{value}'") from None


def window_count(span: timedelta, length: timedelta, current: datetime, start: date) -> int:
    """How many windows, up to ``current``, the last ``span`` covers: none before ``monitoring.start``,
    where the partitions begin (a window before it cannot be materialized or backfilled)."""
    from llmops_dagster.core.monitoring import window_floor

    midnight = datetime.combine(start, time(), UTC)
    floor = window_floor(midnight, length)
    first = floor if floor == midnight else floor + length  # the first window that begins on or after it
    asked = max(1, math.ceil(span / length))
    kept = max(1, (current - first) // length + 1)
    if asked > kept:
        print(f"llmops monitor: windows begin at monitoring.start ({start}); the {asked - kept} asked for before it are not listed", file=sys.stderr)
    return min(asked, kept)


def cmd_monitor(args: argparse.Namespace) -> int:
    from llmops_dagster.core import monitoring_table as table
    from llmops_dagster.core.monitoring import check_names, window_floor
    from llmops_dagster.core.store import open_existing

    settings = settings_for(args)
    config = settings.monitoring
    length = config.window_length
    span = args.window or length
    current = window_floor(datetime.now(UTC), length)
    starts = [current - length * back for back in reversed(range(window_count(span, length, current, config.start)))]
    lance = open_existing(settings.lancedb_uri)
    if lance is None:
        if args.json:
            print(json.dumps({"environment": settings.name, "window": config.window, "drift_state": {"state": table.NO_DATA}, "windows": []}))
        else:
            print(f"{settings.name}: nothing to monitor yet: {settings.lancedb_uri} does not exist (no requests, no predictions)")
        return 0
    stored = table.by_window(table.read_rows(lance, since=starts[0], until=current + length))
    names = check_names(config)
    windows: list[dict[str, Any]] = []
    for start in starts:
        rows, computed_now = stored.get(start), False
        if rows is None and start == current:
            print(f"llmops monitor: {start.isoformat()} is not in the monitoring table yet; computing it now", file=sys.stderr)
            scoring = table.lazy_scoring(lance, resources_for(settings)["embedder"].load, config.scorers)
            rows, computed_now = table.compute_window(lance, start, start + length, config, scoring).rows, True
        verdicts = table.window_verdicts(rows, names) if rows else []
        stamps = [row["computed_at"] for row in rows or [] if row.get("computed_at") is not None]
        windows.append(
            {
                "window_start": start,
                "window_end": start + length,
                "stored": start in stored,
                "computed_now": computed_now,
                "computed_at": datetime.now(UTC) if computed_now else max(stamps, default=None),
                "under_way": start == current,
                "requests": sum(int(row.get("request_count") or 0) for row in rows or []),
                "drift_state": table.drift_state(rows)["state"] if rows else None,
                "rows": rows or [],
                "checks": verdicts,
            }
        )
    latest = next((window for window in reversed(windows) if window["requests"]), None)
    failing_error = bool(latest) and any(verdict.status == table.ERROR for verdict in latest["checks"])
    if args.json:
        print(json.dumps(_as_json(settings.name, config.window, span, windows, latest), indent=2))
    else:
        _print(settings, windows, latest)
    return 1 if failing_error else 0


def _partition_key(settings: EnvSettings, start: datetime) -> str:
    from llmops_dagster.assets.monitoring import monitoring_partitions

    return monitoring_partitions(settings.monitoring).get_partition_key_for_timestamp(start.timestamp())


def _backfill_hint(settings: EnvSettings, starts: list[datetime]) -> str:
    """How to backfill these consecutive windows: the command for one; for a run of them, the UI's
    partition range, or the command one partition at a time."""
    env = settings.name
    command = f"dagster asset materialize -m llmops_dagster.definitions -a {env}_defs --select {env}/monitoring --partition"
    first = _partition_key(settings, starts[0])
    if len(starts) == 1:
        return f"not materialized; backfill: {command} {first}"
    return (
        f"{len(starts)} windows not materialized; backfill them as a partition range from the monitoring asset's page "
        f"in the Dagster UI, or one at a time: {command} {first} (to {_partition_key(settings, starts[-1])})"
    )


def _print(settings: EnvSettings, windows: list[dict[str, Any]], latest: dict[str, Any] | None) -> None:
    from llmops_dagster.core import monitoring_table as table

    print(f"{settings.name}: monitoring, {settings.monitoring.window} windows (UTC)")
    for has_rows, run in groupby(windows, key=lambda entry: bool(entry["rows"])):
        if not has_rows:  # consecutive windows without rows: one line
            missing = [entry["window_start"] for entry in run]
            shown = missing[0].isoformat() + (f" … {missing[-1].isoformat()}" if len(missing) > 1 else "")
            print(f"  {shown}  {_backfill_hint(settings, missing)}")
            continue
        for entry in run:
            failing = [verdict for verdict in entry["checks"] if not verdict.passed]
            worst = "ERROR" if any(v.status == table.ERROR for v in failing) else "WARN" if failing else "OK"
            start = entry["window_start"].isoformat()
            print(f"  {start}  {entry['requests']:>6} rows  drift {entry['drift_state']:<7}  checks {worst}: {len(failing)} failing{_origin(entry)}")
    if latest is None:
        print("\nno requests or predictions in these windows")
        return
    note = _origin(latest)
    print()
    print(table.summary_markdown(latest["window_start"], latest["window_end"], latest["rows"], latest["checks"], note=note))


def _origin(entry: dict[str, Any]) -> str:
    """Where a window's figures come from: computed now, or stored at some time (for the window still
    under way, requests since then are not in them)."""
    if entry["computed_now"]:
        return " (computed now, not stored)"
    if entry["computed_at"] is None:
        return ""
    stamp = entry["computed_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f" (stored {stamp}; later requests are not in it until monitoring is materialized again)" if entry["under_way"] else f" (stored {stamp})"


def _as_json(env: str, window: str, span: timedelta, windows: list[dict[str, Any]], latest: dict[str, Any] | None) -> dict[str, Any]:
    from llmops_dagster.core import monitoring_table as table

    def verdict(v: Any) -> dict[str, Any]:
        return {"name": v.name, "status": v.status, "severity": v.severity, "value": v.value, "threshold": v.threshold, "slice": v.slice}

    return {
        "environment": env,
        "window": window,
        "span_hours": span.total_seconds() / 3600,
        "latest_with_requests": latest["window_start"].isoformat() if latest else None,
        "drift_state": table.drift_state(latest["rows"]) if latest else {"state": table.NO_DATA},
        "windows": [
            {
                "window_start": entry["window_start"].isoformat(),
                "window_end": entry["window_end"].isoformat(),
                "stored": entry["stored"],
                "computed_now": entry["computed_now"],
                "computed_at": entry["computed_at"].isoformat() if entry["computed_at"] else None,
                "requests": entry["requests"],
                "drift_state": entry["drift_state"],
                "checks": [verdict(v) for v in entry["checks"]],
                "malformed": {m["reason"]: m["count"] for row in entry["rows"][:1] for m in row.get("malformed") or []},
                "rows": table.as_json(entry["rows"]),
            }
            for entry in windows
        ],
    }
