"""Running a job in process against the persistent instance, and what is printed after it."""

from __future__ import annotations

import os
import sys
import uuid

from llmops_dagster.cli.progress import Progress, check_steps
from llmops_dagster.tags import HOST_TAG, PID_TAG

# What is printed after a run: the asset and the markdown metadata entry that sums it up.
REPORTED_ASSETS = {"embedding_model": "summary", "rag_model": "retrieval_candidates", "evaluation": "summary", "batch_predictions": "summary"}


def execute(job, instance, tags: dict[str, str]) -> int:
    """Run a job in process against the persistent instance, showing progress; 1 on failure or a failed check."""
    import socket

    run_id = str(uuid.uuid4())
    tags = {**tags, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    progress = Progress(instance, run_id, quiet=check_steps(job))
    progress.start()
    try:
        result = job.execute_in_process(
            instance=instance,
            run_id=run_id,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            tags=tags,
        )
    finally:
        progress.done.set()
        progress.join()
    failed_checks = [e.asset_check_key.name for e in result.get_asset_check_evaluations() if not e.passed]
    reports = []
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        rows = materialization.metadata.get("dagster/row_count")
        version = materialization.metadata.get("model_version") or materialization.metadata.get("served_version")
        shown = f"v{version.value}" if version and version.value != "none" else "-"
        detail = f"{rows.value:>8} rows" if rows else f"{shown:>8}"
        print(f"{materialization.asset_key.to_user_string():<24} {detail}")
        entry = REPORTED_ASSETS.get(materialization.asset_key.path[-1])
        if entry in materialization.metadata:
            reports.append((materialization.asset_key.to_user_string(), materialization.metadata[entry].value))
    for asset, summary in reports:
        print(f"\n## {asset}\n{summary}")
    if not result.success:
        print(f"run {run_id} failed; see the Dagster UI for details", file=sys.stderr)
        return 1
    if failed_checks:
        print(f"run {run_id} finished, but check(s) failed: {', '.join(failed_checks)}", file=sys.stderr)
        return 1
    print(f"run {run_id} succeeded", file=sys.stderr)
    return 0
