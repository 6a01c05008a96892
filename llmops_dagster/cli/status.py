"""llmops status: where each environment's champion and challenger stand, and why."""

from __future__ import annotations

import argparse
import json

from llmops_dagster.cli.common import registry_client, settings_for
from llmops_dagster.cli.promotion import promotion_call
from llmops_dagster.cli.quarantine import ingested
from llmops_dagster.settings import ENVIRONMENTS, EnvSettings


def describe(client, settings: EnvSettings) -> dict:
    from llmops_dagster.core import promotion

    state = promotion.status(client, settings.mlflow.registered_model, settings.promotion.requires_approval)
    return {"environment": settings.name, "requires_approval": settings.promotion.requires_approval,
            "adopts_from": settings.promotion.source, **state}


def monitoring_state(settings: EnvSettings) -> dict:
    """The drift state and failing checks of the environment's latest monitored window with requests."""
    from llmops_dagster.core import monitoring_table
    from llmops_dagster.core.store import open_existing

    try:
        lance = open_existing(settings.lancedb_uri)
        return monitoring_table.drift_state(monitoring_table.read_rows(lance) if lance else [])
    except Exception as error:  # the table is unreadable: say so, the rest of the status still shows
        return {"state": "unreadable", "error": (str(error).splitlines() or [""])[0], "failing": []}


def cmd_status(args: argparse.Namespace) -> int:
    envs = [args.env] if args.env else list(ENVIRONMENTS)
    states = []
    for env in envs:
        settings = settings_for(argparse.Namespace(env=env))
        states.append({**promotion_call(describe, registry_client(settings), settings), "monitoring": monitoring_state(settings),
                       "ingested": ingested(settings)})
    if args.json:
        print(json.dumps(states, indent=2))
        return 0
    for state in states:
        flags = ", ".join(f for f in (f"adopts {state['adopts_from']}'s champion" if state["adopts_from"] else "trains",
                                      "needs approval" if state["requires_approval"] else "") if f)
        print(f"{state['environment']}: {state['model']} ({flags})")
        for alias in ("champion", "challenger"):
            info = state.get(alias)
            if not info:
                print(f"  {alias:<10} none")
                continue
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(info["metrics"].items()) if k in ("mrr_at_10", "recall_at_5", "answer_f1"))
            extra = [f"failed: {', '.join(info['failed_checks'])}" if info["failed_checks"] else "",
                     f"approved by {info['approved_by']}" if info["approved_by"] else "",
                     f"rolled back at {info['rolled_back_at']}" if info.get("rolled_back_at") else "",
                     f"from {info['source']}" if info["source"] else ""]
            print(f"  {alias:<10} v{info['version']} {info['validation_status']}" + (f" ({metrics})" if metrics else "")
                  + "".join(f"; {e}" for e in extra if e))
        print(f"  pending    {state['pending']}")
        watch = state["monitoring"]
        if watch.get("window_start"):
            print(f"  drift      {watch['state']} in {watch['window_start']} ({watch['requests']} requests and batch predictions)")
            for failing in watch["failing"]:
                print(f"  failing    {failing}")
        else:
            unmonitored = f"no stored monitoring window with requests yet (`llmops monitor --env {state['environment']}` computes the one under way)"
            print(f"  drift      {unmonitored if watch['state'] == 'NO_DATA' else watch.get('error', watch['state'])}")
        counts = state["ingested"]
        listed = f" (`llmops quarantine --env {state['environment']}` lists them)" if counts["quarantined"] else ""
        print(f"  documents  {counts['documents']} parsed, {counts['quarantined']} quarantined{listed}")
        for entry in state.get("history", [])[-3:]:
            print(f"  history    {entry['at']} {entry['action']} v{entry['previous'] or '-'} → v{entry['version']} by {entry['actor']}")
    return 0
