"""The monitoring assets on what a real ``llmops serve`` logged and a real batch prediction run wrote,
over two daily partitions of ``test``; their checks, sensors, the ``llmops monitor`` and ``llmops
status`` commands, backfills through the dagster CLI and from the Dagster UI (run by the daemon),
and the plots in the UI (headless Chromium).

One module fixture serves the session's trained environment (its challenger made champion) and
sends it a mix of questions: in the corpus, off topic, a malformed request and a search. Yesterday
is made by copying those rows (and the batch predictions) one day back, as no test can wait a day;
two rows the server would never write are added to today to be counted as malformed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import httpx
import pyarrow as pa
import pytest
import yaml
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page
from servers import champion_home, start, stop

from llmops_dagster.core import monitoring_table, store
from llmops_dagster.core.monitoring import MonitoringConfig, check_names, window_floor
from llmops_dagster.resources.monitoring import DriftWatchResource, drift_watch_for
from llmops_dagster.sensors.monitoring import (
    DRIFT_ENV_TAG,
    LATE_ROWS_MS,
    NEW_REQUESTS_SENSOR,
    build_retrain_sensor,
)

from helpers import LLMOPS, REPO, TrainedHome, llmops
from processes import free_port, stop_group

DAY = timedelta(days=1)
IN_CORPUS = [
    "How is a release rolled back?",
    "What is BM25?",
    "Which file formats are ingested?",
    "How much do chunks overlap?",
    "Who approves a release?",
    "What does hybrid search combine?",
]
OFF_TOPIC = ["What is the capital of Peru?", "How do I bake sourdough bread?", "Who won the 1998 football world cup?"]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
WEBSERVER = str(Path(sys.executable).with_name("dagster-webserver"))
DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))
WORKSPACE = ["-m", "llmops_dagster.definitions", "-a", "test_defs"]
MONITORING_KEY = dg.AssetKey(["test", "monitoring"])
BACKFILL_TAG, PARTITION_TAG = "dagster/backfill", "dagster/partition"
UI_BACKFILL_DAYS = 2  # the days before yesterday that the UI backfills: a range, one queued run per day
CHROMIUM = "/usr/bin/chromium"
# Drift needs this many values on each side; the default (20) is more than a test window holds.
MONITORING = {"drift_min_count": 3, "psi_min_count": 3}  # a few dozen requests: PSI on samples this small is noise, but it must run


@dataclass
class Monitored:
    home: Path
    declaration: Path
    today: datetime  # the window the served requests fall in
    yesterday: datetime
    served_rows: int
    errors_today: int
    results: dict[datetime, dg.ExecuteInProcessResult]  # the monitor job's run of each day, on an ephemeral instance

    @property
    def lance(self) -> store.LanceStore:
        return store.LanceStore(str(self.home / "test" / "lancedb"))

    def env(self) -> dict[str, str]:
        return {**os.environ, "LLMOPS_HOME": str(self.home), "LLMOPS_ENVIRONMENTS": str(self.declaration), "HF_HUB_OFFLINE": "1"}


def _shift(rows: list[dict], days: int, prefix: str) -> list[dict]:
    shifted = []
    for row in rows:
        copy = dict(row)
        if "timestamp_ms" in copy:
            copy["timestamp_ms"] += days * 86_400_000
            copy["date"] = copy["date"] + timedelta(days=days)
            copy["databricks_request_id"] = prefix + copy["databricks_request_id"]
        else:
            copy["predicted_at"] = copy["predicted_at"] + timedelta(days=days)
            copy["id"] = prefix + copy["id"]
        shifted.append(copy)
    return shifted


@pytest.fixture(scope="module")
def monitored(trained_home: TrainedHome, tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    folder = tmp_path_factory.mktemp("monitored")
    home = champion_home(trained_home, folder)
    server = start(home, folder)
    try:
        for question in IN_CORPUS[:4] + OFF_TOPIC:
            assert httpx.post(f"{server.url}/invocations", json={"dataframe_records": [{"question": question}]}, timeout=120).status_code == 200
        for question in IN_CORPUS[4:]:
            chat = {"model": "champion", "messages": [{"role": "user", "content": question}]}
            assert httpx.post(f"{server.url}/v1/chat/completions", json=chat, timeout=120).status_code == 200
        bad = httpx.post(f"{server.url}/invocations", content=b"{not json", headers={"Content-Type": "application/json"}, timeout=60)
        assert bad.status_code == 400
        assert httpx.post(f"{server.url}/search", json={"query": "vector search", "k": 3}, timeout=60).status_code == 200
        time.sleep(1.5)  # past the log's flush window
    finally:
        code, printed = stop(server)
    assert code == 0, printed[-2000:]

    lance = store.LanceStore(str(home / "test" / "lancedb"))
    served = lance.read(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA).to_pylist()
    assert len(served) == len(IN_CORPUS) + len(OFF_TOPIC) + 2  # and a malformed request and a search
    today = window_floor(datetime.fromtimestamp(served[0]["timestamp_ms"] / 1000, UTC), DAY)
    # The server's one failure today is a client's: the malformed body (400). A model that failed on a
    # request (500) cannot be provoked from outside, so one such row is logged as the server writes it.
    [refused] = [row for row in served if row["status_code"] >= 400]
    answered = [row for row in served if row["status_code"] == 200 and row["endpoint"] != "/search"]
    failed = {**refused, "databricks_request_id": "model-failed", "status_code": 500, "error": "RuntimeError: the model failed"}
    # Yesterday: copies of three answered requests and, three times, of the failed one (an error rate
    # of 0.5, past the ERROR level), and of the batch predictions.
    copies = [*_shift(answered[:3], -1, "y-"), *(_shift([failed], -1, f"y{n}-")[0] for n in range(3))]
    _log(lance, [*copies, failed])
    predictions = lance.read(store.PREDICTIONS, store.PREDICTIONS_SCHEMA).to_pylist()
    lance.append(store.PREDICTIONS, store.PREDICTIONS_SCHEMA, pa.Table.from_pylist(_shift(predictions, -1, "y-"), store.PREDICTIONS_SCHEMA))
    # Two rows the server never writes: a status code out of range, and an answered request without its question.
    moment = served[0]["timestamp_ms"]
    malformed = [
        {**served[0], "databricks_request_id": "bad-status", "status_code": 999, "timestamp_ms": moment},
        {**answered[0], "databricks_request_id": "no-question", "question": None, "timestamp_ms": moment},
    ]
    _log(lance, malformed)

    declaration = yaml.safe_load((REPO / "environments.yaml").read_text())
    declaration["defaults"]["monitoring"].update(MONITORING)
    path = folder / "monitoring-environments.yaml"
    path.write_text(yaml.safe_dump(declaration))
    monitored = Monitored(home, path, today, today - DAY, len(served) + 1, 1, {})
    with pytest.MonkeyPatch.context() as monkeypatch, dg.DagsterInstance.ephemeral() as instance:
        defs = _defs(monitored, monkeypatch)
        monitored.results = {day: _materialize(defs, instance, day) for day in (monitored.yesterday, monitored.today)}
    return monitored


def _point_at(monitored: Monitored, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOPS_HOME", str(monitored.home))
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(monitored.declaration))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def _defs(monitored: Monitored, monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    from llmops_dagster.definitions import build_defs

    _point_at(monitored, monkeypatch)
    return build_defs("test")


def _materialize(defs: dg.Definitions, instance: dg.DagsterInstance, day: datetime) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def("monitor").execute_in_process(partition_key=day.strftime("%Y-%m-%d"), instance=instance)
    assert result.success
    return result


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == asset]
    return event.step_materialization_data.materialization.metadata


@pytest.mark.slow
def test_two_days_an_empty_one_and_a_second_run(monitored: Monitored, monkeypatch: pytest.MonkeyPatch) -> None:
    defs = _defs(monitored, monkeypatch)
    names = check_names(MonitoringConfig.from_mapping(MONITORING))
    yesterday, today = monitored.results[monitored.yesterday], monitored.results[monitored.today]
    with dg.DagsterInstance.ephemeral() as instance:
        rows = {row["id"]: row for row in monitoring_table.read_rows(monitored.lance)}
        by_day = monitoring_table.by_window(rows.values())
        assert set(by_day) >= {monitored.yesterday, monitored.today}

        # Today: the served requests (one refused, 400) with the one that failed (500), and the batch run, by version 1.
        served = next(row for row in by_day[monitored.today] if row["source"] == "endpoint")
        assert served["served_model_version"] == "1" and served["request_count"] == monitored.served_rows
        assert served["error_rate"] == pytest.approx(monitored.errors_today / monitored.served_rows)
        assert served["client_error_rate"] == pytest.approx(1 / monitored.served_rows)  # below its WARN level, 0.2
        assert 0 < served["latency_p50_ms"] <= served["latency_p95_ms"]
        assert served["question_tokens_mean"] > 0 and served["answer_tokens_mean"] > 0
        assert served["flesch_kincaid_grade"] is not None and served["automated_readability_index"] is not None
        assert 0 < served["groundedness_mean"] <= 1 and served["top1_score_mean"] > 0
        assert served["query_drift"] is not None and served["out_of_corpus_rate"] is not None
        assert served["source_shares"] and served["reference"].startswith(f"first window {monitored.yesterday.isoformat()}")
        assert {entry["column"] for entry in served["drift"]} >= {"latency_ms", "question_tokens", "question_top_cosine"}
        assert any(entry["population_stability_index"] is not None for entry in served["drift"])
        assert {row["source"] for row in by_day[monitored.yesterday]} == {"endpoint", "batch"}
        # Yesterday is the first window, the reference: it is not judged against itself.
        assert all(row["drift"] == [] and "which holds this window: no drift" in row["reference"] for row in by_day[monitored.yesterday])
        # Malformed rows are counted by reason, never dropped silently.
        malformed = _metadata(today, "monitoring")["malformed_by_reason"].value
        assert malformed == {"endpoint.bad_status_code": 1, "endpoint.missing_question": 1}

        # Severities: 1 failure in 12 requests is past WARN (0.05); 3 in 6 yesterday past ERROR (0.2).
        assert set(_checks(today)) == set(names) == set(_checks(yesterday))
        warned, errored = _checks(today)["error_rate"], _checks(yesterday)["error_rate"]
        assert (warned.passed, warned.severity) == (False, dg.AssetCheckSeverity.WARN), warned.description
        assert (errored.passed, errored.severity) == (False, dg.AssetCheckSeverity.ERROR), errored.description
        assert "crossed the ERROR level 0.2" in errored.description

        # A window without requests: one empty row, every check passes and says why.
        empty_day = monitored.yesterday - 2 * DAY
        empty = _materialize(defs, instance, empty_day)
        [row] = monitoring_table.by_window(monitoring_table.read_rows(monitored.lance))[empty_day]
        assert row["request_count"] == 0 and row["served_model_version"] is None and row["drift"] == []
        assert all(check.passed and "nothing to judge" in check.description for check in _checks(empty).values())
        idle = _metadata(empty, "monitoring")
        assert (idle["endpoint/request_count"].value, idle["batch/request_count"].value) == (0.0, 0.0)  # a zero, not a gap

        # Materializing today again replaces its rows: no duplicates, same ids.
        again = _materialize(defs, instance, monitored.today)
        after = monitoring_table.read_rows(monitored.lance)
        assert len(after) == len({row["id"] for row in after}) == len(rows) + 1
        assert {row["id"] for row in after if row["window_start"] == monitored.today} == {row["id"] for row in by_day[monitored.today]}

        metadata = _metadata(again, "monitoring")
        plots = metadata["plots"].value
        assert plots.count("data:image/png;base64,") == len(monitoring_table.PLOTTED)
        assert metadata["drift_state"].value in ("OK", "WARN", "ERROR")
        assert "Model-based scorers: off" in metadata["summary"].value
        unanswered = _metadata(again, "unanswered_questions")
        groups = monitored.lance.read(monitoring_table.UNANSWERED, monitoring_table.UNANSWERED_SCHEMA).to_pylist()
        asked = {question for group in groups if group["window_start"] == monitored.today for question in group["questions"]}
        assert unanswered["groups"].value >= 1 and asked & set(OFF_TOPIC), unanswered["summary"].value
        assert not asked & set(IN_CORPUS[:2]), "answered, in-corpus questions are not unanswered"


@pytest.mark.slow
def test_monitor_and_status_commands(monitored: Monitored, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from llmops_dagster.cli.app import main

    env = monitored.env()
    shown = subprocess.run([LLMOPS, "monitor", "--env", "test", "--window", "2d", "--json"], env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads(shown.stdout)
    assert [w["window_start"] for w in summary["windows"]] == [monitored.yesterday.isoformat(), monitored.today.isoformat()]
    assert all(w["stored"] and not w["computed_now"] and w["computed_at"] for w in summary["windows"])
    today = summary["windows"][-1]
    assert summary["latest_with_requests"] == today["window_start"]
    assert today["malformed"] == {"endpoint.bad_status_code": 1, "endpoint.missing_question": 1}
    statuses = {c["name"]: c["status"] for c in today["checks"]}
    assert statuses["error_rate"] == "WARN" and summary["windows"][0]["checks"][0]["status"] == "ERROR"
    # Exit code 1 when a check of the latest window with requests (today) fails at ERROR, as llmops run does.
    assert shown.returncode == (1 if "ERROR" in statuses.values() else 0), shown.stderr
    # The text form and a bad argument, in this process (the entry point's start-up is paid once above).
    _point_at(monitored, monkeypatch)
    capsys.readouterr()
    assert main(["monitor", "--env", "test"]) == shown.returncode
    text = capsys.readouterr()
    assert "WARN: error_rate" in text.out and f"{monitored.today.isoformat()}  {today['requests']:>6} rows" in text.out, text.out
    # A stored window says when it was computed; the one still under way, that later requests are not in it.
    [line] = [line for line in text.out.splitlines() if line.startswith(f"  {monitored.today.isoformat()}")]
    assert f"(stored {today['computed_at'][:10]}" in line and "later requests are not in it" in line, line
    with pytest.raises(SystemExit) as bad:
        main(["monitor", "--env", "test", "--window", "soon"])
    stderr = capsys.readouterr().err
    assert bad.value.code == 2 and len(stderr.strip().splitlines()) == 1 and "expected a duration" in stderr

    status = subprocess.run([LLMOPS, "status", "--env", "test"], env=env, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr
    drift = monitoring_table.drift_state(monitoring_table.read_rows(monitored.lance))
    assert f"drift      {drift['state']} in {monitored.today.isoformat()} ({today['requests']} requests and batch predictions)" in status.stdout
    assert "  failing    WARN: error_rate 0.08333 crossed the WARN level 0.05 (v1 endpoint)" in status.stdout
    assert "Traceback" not in shown.stderr + text.err + stderr + status.stderr


def test_monitor_of_an_environment_with_nothing_yet(tmp_path: Path) -> None:
    result = llmops("monitor", "--env", "prod", "--json", home=tmp_path / "home")
    assert result.returncode == 0 and json.loads(result.stdout)["drift_state"] == {"state": "NO_DATA"}, result.stderr
    assert not (tmp_path / "home" / "prod").exists(), "reading leaves no trace"


@pytest.mark.slow
def test_new_requests_start_their_window(monitored: Monitored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sensor requests the windows that new log rows fall in, once per table version."""
    import shutil

    from llmops_dagster.resources import LanceDBResource

    database = tmp_path / "lancedb"  # the served log alone: no window is computed yet
    shutil.copytree(monitored.home / "test" / "lancedb" / "inference_log.lance", database / "inference_log.lance")
    lance = store.LanceStore(str(database))
    defs = _defs(monitored, monkeypatch)
    sensor = defs.resolve_sensor_def(NEW_REQUESTS_SENSOR)
    resources = {"lancedb": LanceDBResource(uri=str(database))}

    def tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorExecutionData:
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs) as context:
            return sensor.evaluate_tick(context)

    with dg.DagsterInstance.ephemeral() as instance:
        first = tick(instance, None)
        keys = [day.strftime("%Y-%m-%d") for day in (monitored.yesterday, monitored.today)]
        assert [request.partition_key for request in first.run_requests] == keys
        assert all(request.tags["llmops/trigger"] == NEW_REQUESTS_SENSOR for request in first.run_requests)
        unchanged = tick(instance, first.cursor)
        assert not unchanged.run_requests and "unchanged" in unchanged.skip_message

        # A new request today: only today's window, under a new run key.
        row = lance.read(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA).to_pylist()[0]
        now = int(datetime.now(UTC).timestamp() * 1000)
        _log(lance, [{**row, "databricks_request_id": "new", "timestamp_ms": now}])
        second = tick(instance, unchanged.cursor)
        assert [request.partition_key for request in second.run_requests] == [datetime.now(UTC).strftime("%Y-%m-%d")]
        assert second.run_requests[0].run_key not in {request.run_key for request in first.run_requests}

        # Once the window is computed after its newest request, more ticks request nothing.
        start = window_floor(datetime.now(UTC), DAY)
        done = {**_row(start, []), "computed_at": datetime.fromtimestamp((now + LATE_ROWS_MS) / 1000 + 1, UTC)}
        monitoring_table.write_window(lance, monitoring_table.WindowReport(start, start + DAY, [done], None, {}, ""))  # type: ignore[arg-type]
        _log(lance, [{**row, "databricks_request_id": "newer", "timestamp_ms": now}])
        third = tick(instance, second.cursor)
        assert not third.run_requests and "up to date" in third.skip_message


def _log(lance: store.LanceStore, rows: list[dict]) -> None:
    lance.append(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, pa.Table.from_pylist(rows, store.INFERENCE_LOG_SCHEMA))


def _row(start: datetime, checks: list[tuple[str, str, bool]], requests: int = 10) -> dict:
    """A monitoring table row of one window with these (check, severity, passed) verdicts."""
    return {
        "id": store.row_id(monitoring_table.window_key(start), "1", "endpoint"),
        "window_key": monitoring_table.window_key(start),
        "window_start": start,
        "window_end": start + DAY,
        "served_model_version": "1",
        "source": "endpoint",
        "request_count": requests,
        "checks": [{"name": name, "severity": severity, "passed": passed, "value": 0.6, "threshold": 0.5} for name, severity, passed in checks],
        "computed_at": datetime.now(UTC),
    }


def _publish(lance: store.LanceStore, start: datetime, checks: list[tuple[str, str, bool]]) -> None:
    report = monitoring_table.WindowReport(start, start + DAY, [_row(start, checks)], None, {}, "")  # type: ignore[arg-type]
    monitoring_table.write_window(lance, report)


def test_retraining_starts_once_per_drift_episode(tmp_path: Path) -> None:
    """prod's drift at ERROR starts test's ingest job once; more ERROR windows do not, until a
    window clears. A quality check at ERROR (not drift) starts nothing."""
    prod = store.LanceStore(str(tmp_path / "prod-lancedb"))
    sensor = build_retrain_sensor("ingest", ["prod"])
    resources = {"drift_watch": DriftWatchResource(environments={"prod": prod.uri})}
    day = datetime(2026, 11, 1, tzinfo=UTC)
    requested: list[dg.RunRequest] = []
    cursor = None

    def tick() -> dg.SensorExecutionData:
        nonlocal cursor
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
            result = sensor.evaluate_tick(context)
        cursor = result.cursor
        requested.extend(result.run_requests or [])
        return result

    drift, quality = "question_top_cosine_population_stability_index", "error_rate"
    with dg.DagsterInstance.ephemeral() as instance:
        assert "drift NO_DATA" in tick().skip_message
        _publish(prod, day, [(quality, "ERROR", False), (drift, "WARN", True)])
        assert "drift OK" in tick().skip_message and not requested
        _publish(prod, day + DAY, [(drift, "ERROR", False), ("out_of_corpus_rate", "ERROR", False)])
        tick()
        assert len(requested) == 1 and requested[0].tags[DRIFT_ENV_TAG] == "prod"
        assert "goes on" in tick().skip_message  # the same window again
        _publish(prod, day + 2 * DAY, [(drift, "ERROR", False)])
        tick()
        assert len(requested) == 1, "a drift episode starts one retraining"
        _publish(prod, day + 3 * DAY, [(drift, "WARN", False)])
        assert "drift WARN" in tick().skip_message
        _publish(prod, day + 4 * DAY, [(drift, "ERROR", False)])
        tick()
        assert len(requested) == 2 and requested[1].run_key != requested[0].run_key
        assert [r.tags["llmops/drift_episode"] for r in requested] == ["1", "2"]


def test_retraining_watches_the_environments_that_enable_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    declaration = yaml.safe_load((REPO / "environments.yaml").read_text())
    declaration["environments"]["prod"]["monitoring"] = {"retrain_on_drift": True}
    path = tmp_path / "environments.yaml"
    path.write_text(yaml.safe_dump(declaration))
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "home"))
    assert drift_watch_for("test").environments == {}, "off unless an environment enables it"
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(path))
    assert drift_watch_for("test").environments == {"prod": str(tmp_path / "home" / "prod" / "lancedb")}
    assert drift_watch_for("staging").environments == {}, "only the environment that trains retrains"


_WRITER = """
import sys
from datetime import UTC, datetime, timedelta
sys.path.insert(0, {tests!r})
from test_monitoring_assets import _report
from llmops_dagster.core import monitoring_table, store
lance = store.LanceStore({uri!r})
n = 0
while True:  # three slices, then two: every write upserts and deletes
    monitoring_table.write_window(lance, _report(3 if n % 2 == 0 else 2))
    n += 1
    print(n, flush=True)
"""


def _report(slices: int) -> monitoring_table.WindowReport:
    start = datetime(2026, 11, 2, tzinfo=UTC)
    rows = [{**_row(start, []), "id": store.row_id(monitoring_table.window_key(start), str(n), "endpoint")} for n in range(slices)]
    for n, row in enumerate(rows):
        row["served_model_version"] = str(n)
    return monitoring_table.WindowReport(start, start + DAY, rows, None, {}, "")  # type: ignore[arg-type]


def test_a_write_killed_midway_leaves_no_duplicates(tmp_path: Path) -> None:
    uri = str(tmp_path / "lancedb")
    script = _WRITER.format(tests=str(Path(__file__).parent), uri=uri)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert writer.stdout.readline().strip() == "1", "the writer committed once"
    time.sleep(1.5)  # some more commits: the kill falls amid one, or between the upsert and the delete
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    lance = store.LanceStore(uri)
    before = lance.read(monitoring_table.MONITORING, monitoring_table.MONITORING_SCHEMA, ["id"]).column("id").to_pylist()
    assert len(before) == len(set(before)) and 2 <= len(before) <= 3
    monitoring_table.write_window(lance, _report(3))
    after = lance.read(monitoring_table.MONITORING, monitoring_table.MONITORING_SCHEMA, ["id"]).column("id").to_pylist()
    assert sorted(after) == sorted(row["id"] for row in _report(3).rows)


@pytest.mark.slow
def test_backfills_from_the_dagster_cli_and_the_ui(monitored: Monitored, tmp_path_factory: pytest.TempPathFactory) -> None:
    """``dagster asset materialize --partition`` backfills a day into the persistent instance; the
    asset's page in the UI then shows the plots (rendered images, not just markdown), and a backfill
    of earlier days launched from that page (Materialize…, a partition range, Launch backfill) is
    run by the daemon: each day gets a materialization and its rows, with no duplicates."""
    env = {**monitored.env(), "DAGSTER_HOME": str(monitored.home / "dagster")}
    key = monitored.yesterday.strftime("%Y-%m-%d")
    args = ["asset", "materialize", *WORKSPACE, "--select", "test/monitoring", "--partition", key]
    result = subprocess.run([DAGSTER, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [row for row in monitoring_table.read_rows(monitored.lance) if row["window_start"] == monitored.yesterday]
    assert {row["source"] for row in rows} == {"endpoint", "batch"} and len(rows) == len({row["id"] for row in rows})
    # The days before yesterday: no request fell in them, and this instance has not materialized them.
    days = [monitored.yesterday - n * DAY for n in range(UI_BACKFILL_DAYS, 0, -1)]
    keys = [day.strftime("%Y-%m-%d") for day in days]
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        event = instance.get_latest_materialization_event(MONITORING_KEY)
        assert event.asset_materialization.partition == key
        assert not _materialized(instance, keys)
        known = {backfill.backfill_id for backfill in instance.get_backfills()}

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("ui")
    screenshots = tmp_path_factory.mktemp("screenshots")
    webserver = _start([WEBSERVER, *WORKSPACE, "-h", "127.0.0.1", "-p", str(port)], env, logs / "webserver.log")
    daemon = None
    try:
        _wait_for(f"{base}/server_info", webserver)
        _stop_sensors(base)  # so that the daemon starts the backfill's runs and nothing else
        daemon = _start([DAEMON, "run", *WORKSPACE], env, logs / "daemon.log")
        with _browser() as page:
            shown = _plots_in_the_ui(page, base, screenshots / "monitoring-plots.png")
            print(f"\nmonitoring plots in the Dagster UI: {screenshots / 'monitoring-plots.png'}")
            _launch_backfill(page, base, keys)
            backfill_id = _new_backfill(env["DAGSTER_HOME"], known)
            status, runs = _finished_backfill(env["DAGSTER_HOME"], backfill_id, len(keys), daemon, logs)
            _show_backfill(page, base, backfill_id, keys, screenshots / "monitoring-backfill.png")
            print(f"monitoring backfill {backfill_id} in the Dagster UI: {screenshots / 'monitoring-backfill.png'}")
    finally:
        for process in (daemon, webserver):
            if process is not None:
                stop_group(process)
    assert {alt for alt, _ in shown} == set(monitoring_table.PLOTTED)
    assert all(width > 0 for _, width in shown)

    assert status == "COMPLETED_SUCCESS", status
    run_of = {run.tags[PARTITION_TAG]: run.run_id for run in runs}
    assert sorted(run_of) == keys, "one run per selected day"
    # Dagster's implicit asset job has no tags: the instance's queue gave each run its environment's
    assert all(run.job_name == "__ASSET_JOB" and run.tags.get("llmops/env") == "test" for run in runs), [r.tags for r in runs]
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert _materialized(instance, keys) == {partition: run_of[partition] for partition in keys}
    table = monitoring_table.read_rows(monitored.lance)
    assert len(table) == len({row["id"] for row in table}), "no duplicate ids"
    by_day = monitoring_table.by_window(table)
    for day, partition in zip(days, keys, strict=True):
        [row] = by_day[day]  # nothing was served that day: its empty-window row
        assert row["request_count"] == 0 and row["dagster_run_id"] == run_of[partition], row


def _materialized(instance: dg.DagsterInstance, keys: list[str]) -> dict[str, str]:
    """Partition → the run of its latest materialization of test/monitoring, for these partitions."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=MONITORING_KEY, asset_partitions=keys), limit=100).records
    latest: dict[str, str] = {}
    for record in sorted(records, key=lambda record: record.storage_id):
        latest[record.partition_key] = record.run_id
    return latest


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as output:  # the child keeps its own descriptor
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "dagster-webserver exited"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout:.0f}s")


_SENSORS = """{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
  ... on RepositoryLocation { repositories { sensors { id name sensorState { status } } } } } } } } }"""
_STOP_SENSOR = "mutation($id: String) { stopSensor(id: $id) { __typename } }"


def _graphql(base: str, query: str, variables: dict | None = None) -> dict:
    answer = httpx.post(f"{base}/graphql", json={"query": query, "variables": variables or {}}, timeout=120)
    answer.raise_for_status()
    body = answer.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def _stop_sensors(base: str) -> None:
    """Stops the location's running sensors, as their toggles in the UI would: the served log is new
    to them, and their runs would compete with the backfill's for this machine."""
    entries = _graphql(base, _SENSORS)["workspaceOrError"]["locationEntries"]
    sensors = [sensor for entry in entries for repo in entry["locationOrLoadError"]["repositories"] for sensor in repo["sensors"]]
    assert NEW_REQUESTS_SENSOR in {sensor["name"] for sensor in sensors}
    for sensor in sensors:
        if sensor["sensorState"]["status"] == "RUNNING":
            stopped = _graphql(base, _STOP_SENSOR, {"id": sensor["id"]})["stopSensor"]
            assert stopped["__typename"] == "StopSensorMutationResult", (sensor["name"], stopped)


@contextmanager
def _browser() -> Iterator[Page]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1600, "height": 1200})
        finally:
            browser.close()


def _plots_in_the_ui(page: Page, base: str, screenshot: Path) -> list[tuple[str, int]]:
    """Opens the asset page, shows the ``plots`` metadata entry, and returns each image's alt text
    and rendered width (naturalWidth: 0 for an image the browser could not decode)."""
    page.goto(f"{base}/assets/test/monitoring")
    page.get_by_text("plots", exact=True).first.wait_for(state="visible", timeout=90_000)
    skip = page.get_by_role("button", name="Skip")  # a new instance greets with a dialog over the page
    try:
        skip.first.wait_for(state="visible", timeout=5_000)
        skip.first.click()
    except PlaywrightError:  # no dialog this time
        pass
    row = page.locator("tr", has=page.get_by_text("plots", exact=True))
    row.get_by_text("[Show Markdown]").first.click()
    images = page.locator("img[alt='no_answer_rate']")
    images.first.wait_for(state="visible", timeout=30_000)
    page.wait_for_function("Array.from(document.images).filter(i => i.src.startsWith('data:image/png')).every(i => i.complete)")
    shown = page.evaluate("Array.from(document.images).filter(i => i.src.startsWith('data:image/png')).map(i => [i.alt, i.naturalWidth])")
    page.screenshot(path=str(screenshot))
    return [(alt, width) for alt, width in shown]


def _launch_backfill(page: Page, base: str, keys: list[str]) -> None:
    """On the asset's page: Materialize…, then the partition range typed into the dialog's selection
    (one key after another if this UI does not take the range syntax), then Launch backfill."""
    page.goto(f"{base}/assets/test/monitoring")
    # Accessible names start with the icon's: "materialization Materialize…".
    page.get_by_role("button", name=re.compile(r"\bMaterialize")).first.click(timeout=90_000)
    launch = page.get_by_role("button", name=re.compile(r"\bLaunch (backfill|\d+ runs?)\b"))
    # Upstream assets that this instance never materialized (inference_log) ask for a confirmation first.
    confirm = page.get_by_role("dialog").get_by_role("button", name="Confirm")
    launch.or_(confirm).first.wait_for(state="visible", timeout=60_000)
    if confirm.is_visible():
        confirm.click()
    dialog = page.get_by_role("dialog").filter(has=launch)
    selection = dialog.get_by_role("textbox").first
    count = dialog.get_by_text(f"{len(keys)} partitions", exact=True)
    for typed in (f"[{keys[0]}...{keys[-1]}]", ",".join(keys)):
        selection.fill(typed)
        selection.press("Enter")
        try:
            count.first.wait_for(state="visible", timeout=10_000)
            break
        except PlaywrightError:
            continue
    else:
        raise AssertionError(f"the dialog did not select {keys}: {dialog.inner_text()[:1000]}")
    launch.first.click()


def _new_backfill(home: str, known: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    with dg.DagsterInstance.from_config(home) as instance:
        while time.monotonic() < deadline:
            new = [backfill.backfill_id for backfill in instance.get_backfills() if backfill.backfill_id not in known]
            if new:
                [backfill_id] = new
                return backfill_id
            time.sleep(1)
    raise AssertionError(f"launching from the UI created no backfill within {timeout:.0f}s")


def _finished_backfill(
    home: str, backfill_id: str, expected_runs: int, daemon: subprocess.Popen, logs: Path, timeout: float = 480
) -> tuple[str, list[dg.DagsterRun]]:
    """Waits for the daemon to run the backfill's runs and then mark it done; its status and runs.
    A failed run's step errors go into the assertion."""
    deadline = time.monotonic() + timeout
    with dg.DagsterInstance.from_config(home) as instance:
        while time.monotonic() < deadline:
            assert daemon.poll() is None, f"dagster-daemon exited; see {logs / 'daemon.log'}"
            status = instance.get_backfill(backfill_id).status.value
            runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
            if len(runs) >= expected_runs and all(run.is_finished for run in runs) and status not in ("REQUESTED", "CANCELING"):
                failures = [_failure(instance, run) for run in runs if run.status != dg.DagsterRunStatus.SUCCESS]
                assert not failures, "\n".join(failures)
                return status, runs
            time.sleep(2)
    raise AssertionError(f"backfill {backfill_id} did not finish within {timeout:.0f}s; see {logs / 'daemon.log'}")


def _failure(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    steps = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    errors = [record.dagster_event.event_specific_data.error.to_string()[-1500:] for record in steps]
    return f"{run.tags.get(PARTITION_TAG)}: run {run.run_id} {run.status.value}\n" + "\n".join(errors)


def _show_backfill(page: Page, base: str, backfill_id: str, keys: list[str], screenshot: Path) -> None:
    """The backfill's page, once done: its partition range and the asset it materialized."""
    page.goto(f"{base}/runs/b/{backfill_id}")
    page.get_by_text(f"{keys[0]}...{keys[-1]}").first.wait_for(state="visible", timeout=90_000)
    page.get_by_text("test / monitoring").first.wait_for(state="visible", timeout=30_000)
    page.screenshot(path=str(screenshot))
