"""llmops quarantine: the landing files an environment set aside, with the reason for each, at any
time after the run that put them there."""

from __future__ import annotations

import argparse
import json

from llmops_dagster.cli.common import settings_for
from llmops_dagster.settings import EnvSettings

_COLUMNS = ["path", "reason", "detail", "size_bytes", "quarantined_at"]


def ingested(settings: EnvSettings) -> dict[str, int]:
    """How many documents the environment holds and how many files it set aside."""
    from llmops_dagster.core import store

    lance = store.open_existing(settings.lancedb_uri)
    return {"documents": lance.count(store.DOCUMENTS) if lance else 0, "quarantined": lance.count(store.QUARANTINE) if lance else 0}


def cmd_quarantine(args: argparse.Namespace) -> int:
    from llmops_dagster.core import store

    settings = settings_for(args)
    lance = store.open_existing(settings.lancedb_uri)
    rows = [] if lance is None else lance.read(store.QUARANTINE, store.QUARANTINE_SCHEMA, _COLUMNS).to_pylist()
    rows.sort(key=lambda row: row["path"])
    if args.json:
        print(json.dumps([{**row, "quarantined_at": row["quarantined_at"].isoformat()} for row in rows], indent=2))
        return 0
    if not rows:
        ingested = lance is not None and lance.exists(store.DOCUMENTS)
        print(f"{settings.name}: no quarantined files" + ("" if ingested else f" (nothing ingested yet: run `llmops run --env {settings.name}`)"))
        return 0
    print(f"{settings.name}: {len(rows)} quarantined file{'s' if len(rows) > 1 else ''} (paths inside the landing zone of its last run)")
    width = max(len(row["path"]) for row in rows)
    reason_width = max(len(row["reason"]) for row in rows)
    for row in rows:
        print(f"  {row['path']:<{width}}  {row['reason']:<{reason_width}}  {row['detail']}")
    print(
        "A file is looked at again when it changes, when a newer release parses it, or, if too_large, once "
        f"ingestion.max_file_mb allows it: fix it, then `llmops run --env {settings.name}`."
    )
    return 0
