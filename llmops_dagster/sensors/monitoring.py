"""Monitoring sensors.

- ``monitor_new_requests`` (every environment): when ``llmops serve`` has written rows to the
  inference log, starts the ``monitor`` job for the windows those rows fall in (usually the one
  under way), not the whole environment. A window computed less than ``refresh_seconds`` ago, or
  with a monitor run still queued or running, waits for a later tick, so steady traffic costs one
  run per window every ten minutes at most.
- ``retrain_on_drift`` (in the environment that trains): when an environment that sets
  ``monitoring.retrain_on_drift`` and adopts from this one has a drift check at ERROR in its latest
  window with requests, starts the ingest-and-train job, once per drift episode. An episode begins
  when ERROR is first seen and ends when the drift checks of a later window no longer fail at ERROR.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg

from llmops_dagster.core import monitoring_table
from llmops_dagster.core.monitoring import window_floor
from llmops_dagster.resources import LanceDBResource
from llmops_dagster.resources.monitoring import DriftWatchResource
from llmops_dagster.tags import ENV_TAG, TRIGGER_TAG

NEW_REQUESTS_SENSOR = "monitor_new_requests"
RETRAIN_SENSOR = "retrain_on_drift"
DRIFT_ENV_TAG = "llmops/drift_env"  # on retraining runs: the environment whose drift started them
DRIFT_EPISODE_TAG = "llmops/drift_episode"  # ... and which of its drift episodes
LATE_ROWS_MS = 10 * 60 * 1000  # a row is written at most this long after its request started (flushes, slow requests)
REFRESH_SECONDS = 600
_ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def _active_partitions(instance: dg.DagsterInstance, env: str, job_name: str) -> set[str]:
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=_ACTIVE, tags={ENV_TAG: env}))
    return {run.tags.get("dagster/partition", "") for run in runs}


def partitions_length(partitions: dg.TimeWindowPartitionsDefinition) -> timedelta:
    """The length of one partition (the monitoring window)."""
    window = partitions.get_first_partition_window()
    return window.end - window.start


def build_new_requests_sensor(
    env: str,
    job_name: str,
    partitions: dg.TimeWindowPartitionsDefinition,
    minimum_interval_seconds: int = 30,
    refresh_seconds: int = REFRESH_SECONDS,
    late_ms: int = LATE_ROWS_MS,
) -> dg.SensorDefinition:
    """``late_ms``: how long after its request a row may still be written. The server's rows take
    minutes (``LATE_ROWS_MS``); rows read from a Databricks inference table take up to its lookback,
    so a window stays open to them that long."""

    @dg.sensor(
        name=NEW_REQUESTS_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Materializes the monitoring window(s) that new inference_log rows fall in",
    )
    def monitor_new_requests(context: dg.SensorEvaluationContext, lancedb: LanceDBResource) -> dg.SensorResult | dg.SkipReason:
        state = json.loads(context.cursor) if context.cursor else {}
        lance = lancedb.store()
        version = lance.version("inference_log") or 0
        if version == state.get("version"):
            return dg.SkipReason(f"inference_log unchanged (table version {version})")
        # The first tick looks at the whole log: windows that were never computed, or were computed
        # before their latest request, are requested.
        after = state["max_ms"] - late_ms if state.get("max_ms") is not None else None
        version, stamps = monitoring_table.log_timestamps(lance, after)
        newest: dict[datetime, int] = {}
        for stamp in stamps:
            start = window_floor(datetime.fromtimestamp(stamp / 1000, UTC), partitions_length(partitions))
            newest[start] = max(newest.get(start, stamp), stamp)
        computed = monitoring_table.computed_at_by_window(lance)
        active = _active_partitions(context.instance, env, job_name)
        now = datetime.now(UTC)
        first = datetime.fromtimestamp(partitions.start.timestamp(), UTC)
        requests, waiting, current = [], [], []
        for start, stamp in sorted(newest.items()):
            if start < first or start > now:
                continue  # outside the partitions: before monitoring.start, or a clock ahead of ours
            key = partitions.get_partition_key_for_timestamp(start.timestamp())
            done = computed.get(monitoring_table.window_key(start))
            if done is not None and done.timestamp() * 1000 >= stamp + late_ms:
                current.append(key)
            elif key in active or (done is not None and (now - done).total_seconds() < refresh_seconds):
                waiting.append(key)
            else:
                requests.append(
                    dg.RunRequest(run_key=f"{NEW_REQUESTS_SENSOR}-{key}-v{version}", partition_key=key, tags={TRIGGER_TAG: NEW_REQUESTS_SENSOR})
                )
        max_ms = max([*stamps, state.get("max_ms") or 0]) or None
        # While a window waits, the cursor stays, so a later tick sees its rows again.
        cursor = context.cursor if waiting else json.dumps({"version": version, "max_ms": max_ms})
        if requests:
            return dg.SensorResult(run_requests=requests, cursor=cursor)
        detail = f"waiting for a refresh of {', '.join(waiting)}" if waiting else f"windows up to date: {', '.join(current) or 'none'}"
        return dg.SensorResult(skip_reason=dg.SkipReason(f"inference_log table version {version}: {detail}"), cursor=cursor)

    return monitor_new_requests


def build_retrain_sensor(job_name: str, watched: list[str], minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    watching = ", ".join(watched) or "no environment"

    @dg.sensor(
        name=RETRAIN_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING if watched else dg.DefaultSensorStatus.STOPPED,
        description=f"Starts {job_name} once per drift episode at ERROR in {watching} (monitoring.retrain_on_drift)",
    )
    def retrain_on_drift(context: dg.SensorEvaluationContext, drift_watch: DriftWatchResource) -> dg.SensorResult | dg.SkipReason:
        if not drift_watch.environments:
            return dg.SkipReason("no environment that adopts from this one sets monitoring.retrain_on_drift")
        cursor = json.loads(context.cursor) if context.cursor else {}
        requests, notes = [], []
        for env in sorted(drift_watch.environments):
            state = drift_watch.drift_state(env)
            episode = cursor.get(env, {"episode": 0, "active": False})
            if state["state"] == monitoring_table.ERROR:
                if not episode["active"]:
                    episode = {"episode": episode["episode"] + 1, "active": True, "since": state["window_start"]}
                    requests.append(
                        dg.RunRequest(
                            run_key=f"{RETRAIN_SENSOR}-{env}-{episode['episode']}-{episode['since']}",
                            tags={TRIGGER_TAG: RETRAIN_SENSOR, DRIFT_ENV_TAG: env, DRIFT_EPISODE_TAG: str(episode["episode"])},
                        )
                    )
                    context.log.info(f"{env}: drift at ERROR ({', '.join(state['drift_error'])}) in {state['window_start']}: retraining")
                else:
                    notes.append(f"{env}: drift episode {episode['episode']} since {episode['since']} goes on; its retraining was requested")
            else:
                if episode["active"]:
                    context.log.info(f"{env}: drift episode {episode['episode']} ended ({state['state']} in {state['window_start']})")
                episode = {**episode, "active": False}
                notes.append(f"{env}: drift {state['state']}" + (f" in {state['window_start']}" if state["window_start"] else ""))
            cursor[env] = episode
        encoded = json.dumps(cursor, sort_keys=True)
        if requests:
            return dg.SensorResult(run_requests=requests, cursor=encoded)
        return dg.SensorResult(skip_reason=dg.SkipReason("; ".join(notes)), cursor=encoded)

    return retrain_on_drift
