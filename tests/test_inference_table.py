"""The Databricks endpoint's inference table, read into inference_log through a SQL warehouse.

The warehouse is the stand-in workspace's (``tests/databricks_workspace.py``), which runs each
statement the import sends, parameters bound, on a real Spark session (local[1], UTC) over temporary
views with the AI Gateway inference table's columns and ``system.serving.served_entities``'; only
the three-part table names are mapped to the views. So the SQL itself (keyset paging, the versions
join, the functions it calls) is run by Spark SQL, not pattern-matched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from databricks.sdk import WorkspaceClient
from databricks_workspace import WorkspaceServer

from llmops_dagster.core import inference_table, monitoring, monitoring_table, store
from llmops_dagster.core.endpoint import EndpointSpec
from llmops_dagster.serving.inference_log import TRUNCATION_MARK

pytestmark = pytest.mark.slow

TOKEN = "dapi-warehouse-test-token-7c6b5a"
SPEC = EndpointSpec(env="test", name="llmops-test", model="test.llmops.rag_model", catalog="test", schema="llmops")
PAYLOAD_COLUMNS = (
    "request_date DATE, databricks_request_id STRING, client_request_id STRING, request_time TIMESTAMP, status_code INT, "
    "sampling_fraction DOUBLE, execution_duration_ms BIGINT, request STRING, response STRING, served_entity_id STRING, "
    "logging_error_codes ARRAY<STRING>, requester STRING"
)
ENTITY_COLUMNS = "served_entity_id STRING, endpoint_name STRING, entity_name STRING, entity_version STRING, change_time TIMESTAMP"
START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
PASSAGE = "Roll back by moving the champion alias to the previous version."


def words(text: str) -> int:
    return len(text.split())


def answer(text: str, passages: list[str]) -> str:
    prediction = {
        "answer": text, "found": True, "passages": passages, "sources": ["release.md#2"] * len(passages), "scores": [0.8] * len(passages),
        "latency_ms": 12.0, "cited": [1], "prompt_tokens": 40, "completion_tokens": 9, "generator": '{"kind": "extractive"}', "error": "",
    }
    return json.dumps({"predictions": [prediction]})


def payload_row(n: int, at: datetime, *, entity: str = "se-2", request: dict[str, Any] | None = None, status: int = 200,
                response: str | None = "", errors: list[str] | None = None, sampling: float = 1.0) -> tuple:
    request = request if request is not None else {"dataframe_records": [{"question": f"How is release {n} rolled back?"}]}
    response = answer(f"Move the alias back [{n}].", [PASSAGE]) if response == "" else response  # None: not logged
    started = at.replace(tzinfo=None)
    body = json.dumps(request)
    return (at.date(), f"req-{n:03d}", f"client-{n}", started, status, sampling, 40 + n, body, response, entity, errors, "user@example.com")


ROWS = [
    payload_row(1, START),
    payload_row(2, START + timedelta(minutes=1)),
    payload_row(3, START + timedelta(minutes=1)),  # same time as 2: the keyset goes on by id
    payload_row(4, START + timedelta(minutes=2), entity="se-1",
                request={"dataframe_split": {"columns": ["question"], "data": [["Which formats are read?"]]}, "params": {"k": 3, "mode": "text"}}),
    payload_row(5, START + timedelta(minutes=3), status=400, request={"dataframe_records": [{"q": "no question column"}]},
                response=json.dumps({"error_code": "BAD_REQUEST", "message": "the input needs a 'question' column"})),
    payload_row(6, START + timedelta(minutes=4), request={"inputs": {"question": ["What is the gate?"]}},
                errors=["MAX_RESPONSE_SIZE_EXCEEDED"], response=None),
    payload_row(7, START + timedelta(minutes=5, microseconds=250)),
]
ENTITIES = [
    ("se-1", "llmops-test", "test.llmops.rag_model", "1", datetime(2026, 11, 20)),
    ("se-2", "llmops-test", "test.llmops.rag_model", "2", datetime(2026, 11, 21)),
    ("se-2", "llmops-test", "test.llmops.rag_model", "2", datetime(2026, 11, 22)),  # a later change of the same entity: one row, not two
    ("se-9", "other-endpoint", "other.model", "7", datetime(2026, 11, 22)),
]


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master("local[1]").appName("warehouse")
    session = builder.config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate()
    session.conf.set("spark.sql.session.timeZone", "UTC")
    yield session
    session.stop()


class Warehouse:
    """The stand-in warehouse's engine: the payload and entity rows as views, statements on Spark SQL."""

    NAMES = {"`test`.`llmops`.`llmops_test_payload`": "payload", "system.serving.served_entities": "served_entities"}

    def __init__(self, spark: Any) -> None:
        self.spark = spark
        self.rows = list(ROWS)
        self.entities: list[tuple] | None = list(ENTITIES)
        self.publish()

    def publish(self) -> None:
        self.spark.createDataFrame(self.rows, PAYLOAD_COLUMNS).createOrReplaceTempView("payload")
        self.spark.catalog.dropTempView("served_entities")
        if self.entities is not None:
            self.spark.createDataFrame(self.entities, ENTITY_COLUMNS).createOrReplaceTempView("served_entities")

    def __call__(self, statement: str, parameters: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        for name, view in self.NAMES.items():
            statement = statement.replace(name, view)
        frame = self.spark.sql(statement, args=parameters)
        return frame.columns, [[None if value is None else str(value) for value in row] for row in frame.collect()]


@pytest.fixture
def workspace(spark: Any):
    with WorkspaceServer(TOKEN) as server:
        server.workspace.sql = Warehouse(spark)
        yield server


@pytest.fixture
def lance(tmp_path: Path) -> store.LanceStore:
    lance = store.LanceStore(str(tmp_path / "lancedb"))
    chunk = {"id": "chunk-rollback", "doc_id": "doc-1", "source": "release.md", "ordinal": 0, "text": PASSAGE}
    lance.apply(store.CHUNKS, store.CHUNKS_SCHEMA, "id", pa.Table.from_pylist([chunk], store.CHUNKS_SCHEMA), [])
    return lance


def client(server: WorkspaceServer) -> WorkspaceClient:
    return WorkspaceClient(host=server.host, token=TOKEN)


def run_import(
    server: WorkspaceServer, lance: store.LanceStore, page_rows: int = 3, lookback: timedelta = timedelta(hours=6)
) -> inference_table.ImportResult:
    warehouse = inference_table.Warehouse(client(server), "wh-1", poll_s=0.01)
    return inference_table.import_requests(
        warehouse, SPEC, lance, start=date(2026, 11, 24), lookback=lookback, count_tokens=words, field_chars=16000, page_rows=page_rows
    )


def logged(lance: store.LanceStore) -> dict[str, dict[str, Any]]:
    rows = lance.read(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA).to_pylist()
    return {row["databricks_request_id"]: row for row in rows}


def test_every_row_is_read_once_with_its_rag_fields_and_version_and_a_rerun_adds_none(workspace: WorkspaceServer, lance: store.LanceStore) -> None:
    workspace.workspace.statement_polls = 2  # each statement is read once PENDING and once RUNNING
    workspace.workspace.chunk_rows = 2  # and its page comes in two chunks
    first = run_import(workspace, lance)
    assert (first.read, first.added, first.pages, first.versions_unknown) == (7, 7, 3, None)
    rows = logged(lance)
    assert sorted(rows) == [f"req-{n:03d}" for n in range(1, 8)]
    one = rows["req-001"]
    assert one["question"] == "How is release 1 rolled back?" and one["answer"] == "Move the alias back [1]."
    assert (one["served_model_name"], one["served_model_version"]) == ("test.llmops.rag_model", "2")
    assert (one["status_code"], one["execution_time_ms"]) == (200, 41.0)
    assert (one["question_tokens"], one["answer_tokens"], one["prompt_tokens"], one["completion_tokens"]) == (6, 5, 40, 9)
    assert one["chunk_ids"] == ["chunk-rollback"] and one["sources"] == ["release.md#2"] and one["cited"] == [1]
    assert one["endpoint"] == "/serving-endpoints/llmops-test/invocations" and one["client_request_id"] == "client-1"
    assert one["timestamp_ms"] == int(START.timestamp() * 1000) and one["date"] == START.date() and one["error"] is None
    assert (rows["req-004"]["question"], rows["req-004"]["k"], rows["req-004"]["mode"], rows["req-004"]["served_model_version"]) == (
        "Which formats are read?", 3, "text", "1")
    assert rows["req-005"]["status_code"] == 400 and rows["req-005"]["error"] == "the input needs a 'question' column"
    assert rows["req-005"]["answer"] is None
    assert rows["req-006"]["question"] == "What is the gate?" and rows["req-006"]["truncated"] is True
    assert rows["req-006"]["response"] == "(not logged by Databricks: MAX_RESPONSE_SIZE_EXCEEDED)" and rows["req-006"]["error"] is None
    # Every statement was answered RUNNING once, then read whole, chunk by chunk.
    assert all(statement.reads_left == 0 for statement in workspace.workspace.statements.values())

    again = run_import(workspace, lance)
    assert (again.read, again.added) == (7, 0)  # the lookback re-reads, and nothing is added twice
    held = inference_table.newest_held(lance, inference_table.endpoint_path(SPEC))
    assert first.newest == again.newest == held == START + timedelta(minutes=5)
    assert len(logged(lance)) == 7


def test_a_row_that_arrives_late_within_the_lookback_is_imported(workspace: WorkspaceServer, lance: store.LanceStore) -> None:
    run_import(workspace, lance)
    warehouse = workspace.workspace.sql
    warehouse.rows.append(payload_row(8, START + timedelta(minutes=4, seconds=30)))  # older than the newest held
    warehouse.rows.append(payload_row(9, START - timedelta(hours=7)))  # beyond the lookback: left, as documented
    warehouse.publish()
    late = run_import(workspace, lance, lookback=timedelta(hours=1))
    assert late.added == 1
    assert "req-008" in logged(lance) and "req-009" not in logged(lance)
    assert late.since == START + timedelta(minutes=5) - timedelta(hours=1)


def test_without_the_served_entities_table_rows_are_imported_with_the_version_unknown(workspace: WorkspaceServer, lance: store.LanceStore) -> None:
    warehouse = workspace.workspace.sql
    warehouse.entities = None
    warehouse.publish()
    result = run_import(workspace, lance)
    assert result.added == 7
    assert "served_entities" in result.versions_unknown
    assert {row["served_model_version"] for row in logged(lance).values()} == {None}


def test_a_request_of_several_questions_keeps_each_questions_fields(workspace: WorkspaceServer, lance: store.LanceStore) -> None:
    """The row's columns describe the first question, ``later_questions`` the others, each from its
    own prediction, as ``llmops serve`` logs such a request; monitoring then judges every question."""
    questions = ["How is release 1 rolled back?", "Which formats are read?", "What is the gate?"]
    records = json.loads(answer("Move the alias back [1].", [PASSAGE]))["predictions"]
    records += [{**records[0], "answer": "PDF, HTML and Markdown.", "passages": [], "sources": [], "scores": [], "cited": []},
                {**records[0], "answer": "", "found": False, "error": "TimeoutError: the generator did not answer"}]
    warehouse = workspace.workspace.sql
    warehouse.rows = [payload_row(1, START, request={"dataframe_split": {"columns": ["question"], "data": [[q] for q in questions]}},
                                  response=json.dumps({"predictions": records}))]
    warehouse.publish()
    run_import(workspace, lance)
    row = logged(lance)["req-001"]
    assert (row["question"], row["answer"], row["chunk_ids"], row["question_tokens"], row["error"]) == (
        questions[0], "Move the alias back [1].", ["chunk-rollback"], 6, None)
    second, third = row["later_questions"]
    assert (second["question"], second["answer"], second["chunk_ids"], second["question_tokens"], second["answer_tokens"]) == (
        questions[1], "PDF, HTML and Markdown.", None, 4, 4)
    assert (third["question"], third["found"], third["chunk_ids"], third["error"]) == (
        questions[2], False, ["chunk-rollback"], "TimeoutError: the generator did not answer")

    frame, problems = monitoring_table.frame_between(lance, START, START + timedelta(hours=1), monitoring_table.Scoring())
    assert problems == {} and frame["question"].tolist() == questions
    (metrics,) = monitoring.window_metrics(frame, START, START + timedelta(hours=1), monitoring.MonitoringConfig(window="1h"))
    assert (metrics["request_count"], metrics["question_count"]) == (1, 3) and metrics["generation_error_rate"] == pytest.approx(1 / 3)


def test_a_statement_the_warehouse_fails_is_one_line_that_names_the_table(workspace: WorkspaceServer, lance: store.LanceStore) -> None:
    workspace.workspace.sql.NAMES = {}  # the payload table is not there
    with pytest.raises(inference_table.InferenceTableError) as failure:
        run_import(workspace, lance)
    message = str(failure.value)
    assert message.startswith("reading test.llmops.llmops_test_payload: the statement ended FAILED on warehouse wh-1:")
    assert "\n" not in message and TOKEN not in message


IMPORT = """
import sys
from datetime import date, timedelta
from databricks.sdk import WorkspaceClient
sys.path.insert(0, {tests!r})
from test_inference_table import SPEC, TOKEN, words
from llmops_dagster.core import inference_table, monitoring_table, store
warehouse = inference_table.Warehouse(WorkspaceClient(host={host!r}, token=TOKEN), "wh-1", poll_s=0.01)
lance = store.LanceStore({lance!r})
inference_table.import_requests(warehouse, SPEC, lance, start=date(2026, 11, 24), lookback=timedelta(hours=6),
                                count_tokens=words, field_chars=16000, page_rows=2, log=lambda line: print(line, flush=True))
"""


def test_an_import_killed_mid_way_is_completed_by_the_next_with_nothing_lost_or_twice(workspace: WorkspaceServer, lance: store.LanceStore) -> None:
    workspace.workspace.hang_statement = 3  # pages 1 and 2 are written; the third statement never answers
    script = IMPORT.format(tests=str(Path(__file__).parent), host=workspace.host, lance=lance.uri)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while len(workspace.workspace.statements) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert len(workspace.workspace.statements) == 3, process.communicate()[0]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert sorted(logged(lance)) == ["req-001", "req-002", "req-003", "req-004"]  # the two pages written before the kill

    workspace.workspace.hang_statement = None
    result = run_import(workspace, lance, page_rows=2)
    assert sorted(logged(lance)) == [f"req-{n:03d}" for n in range(1, 8)]
    assert result.added == 3 and result.read == 7


def test_settings_name_the_warehouse_and_the_lookback(tmp_path: Path) -> None:
    from llmops_dagster.core.bundle import DatabricksConfig

    assert DatabricksConfig.from_mapping({"warehouse_id": "abc123", "inference_table_lookback_hours": 2}).warehouse_id == "abc123"
    for bad in (-1, 721, float("nan"), True, "6"):
        with pytest.raises(ValueError, match="inference_table_lookback_hours"):
            DatabricksConfig.from_mapping({"inference_table_lookback_hours": bad})
    with pytest.raises(ValueError, match="warehouse_id"):
        DatabricksConfig.from_mapping({"warehouse_id": ""})
    assert dataclasses.replace(DatabricksConfig(), warehouse_id=None).warehouse_id is None


def test_the_asset_imports_on_its_schedule_and_monitoring_reads_what_it_imported(
    workspace: WorkspaceServer, llmops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from llmops_dagster.assets.inference_table import IMPORT_CRON, IMPORT_JOB
    from llmops_dagster.definitions import build_defs
    from llmops_dagster.resources import build_resources
    from llmops_dagster.resources.compute import PipesComputeResource
    from llmops_dagster.settings import load_settings

    local = load_settings("test")
    assert build_defs(local).resolve_asset_graph().has(dg.AssetKey(["test", "inference_table"])) is False  # compute: local
    settings = dataclasses.replace(local, compute="databricks", databricks=dataclasses.replace(local.databricks, warehouse_id="wh-1"))
    defs = build_defs(settings)
    key = dg.AssetKey(["test", "inference_table"])
    assert defs.resolve_schedule_def(f"{IMPORT_JOB}_schedule").cron_schedule == IMPORT_CRON
    assert defs.resolve_job_def(IMPORT_JOB).asset_layer.selected_asset_keys == {dg.AssetKey(["test", "inference_table"])}
    graph = defs.resolve_asset_graph()
    assert key in graph.get(dg.AssetKey(["test", "monitoring"])).parent_keys
    assert key not in defs.resolve_job_def("ingest").asset_layer.selected_asset_keys

    monkeypatch.setenv("DATABRICKS_HOST", workspace.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    compute = PipesComputeResource(env="test", compute="databricks", volume_path="/Volumes/test/llmops/pipes")
    resources = {**build_resources(settings), "compute": compute}
    imported = dg.materialize([defs.get_assets_def(key)], resources=resources)
    assert imported.success
    metadata = imported.asset_materializations_for_node("test__inference_table")[0].metadata
    assert (metadata["rows_added"].value, metadata["served_versions"].value) == (7, "from system.serving.served_entities")

    monitoring = defs.get_assets_def(dg.AssetKey(["test", "monitoring"]))
    window = dg.materialize([monitoring], resources=resources, partition_key="2026-11-24", selection=[dg.AssetKey(["test", "monitoring"])])
    assert window.success
    reported = window.asset_materializations_for_node("test__monitoring")[0].metadata
    assert reported["requests"].value == 7
    rows = store.LanceStore(settings.lancedb_uri).read(monitoring_table.MONITORING, monitoring_table.MONITORING_SCHEMA).to_pylist()
    assert {(row["served_model_version"], row["request_count"]) for row in rows} == {("1", 1), ("2", 6)}


def test_odd_responses_leave_fields_empty_and_never_lose_the_request() -> None:
    base = {"databricks_request_id": "r", "request_us": "1795000000000000", "status_code": "200", "execution_duration_ms": "12",
            "request": json.dumps({"dataframe_records": [{"question": "Why?"}]}), "request_chars": "45"}
    odd = [
        {"predictions": [{"answer": {"text": "x"}, "passages": [{"text": "p"}], "found": "yes", "cited": ["1", "two"], "prompt_tokens": 2**40}]},
        {"predictions": {"answer": "Paris", "found": True}},  # columns of scalars: not a frame, so no prediction
        {"predictions": [{"answer": "ok", "sources": "x.md", "scores": ["high"], "passages": "one passage", "generator": {"kind": "x"}}]},
        {"predictions": [5]},
        ["not", "an", "object"],
    ]
    def read(response: object, count_tokens=words) -> dict:  # noqa: ANN001 - as the import reads a row
        record = {**base, "response": json.dumps(response)}
        return inference_table.log_row(record, inference_table.predictions_of(record), "/p", "m", 16000, count_tokens, {})

    for response in odd:
        row = read(response)
        assert row["question"] == "Why?" and row["status_code"] == 200 and row["error"] is None
        assert {row.get(name) for name in ("sources", "scores", "chunk_ids", "generator", "found", "prompt_tokens")} == {None}
        assert row.get("answer") in (None, "ok")
        pa.Table.from_pylist([row], store.INFERENCE_LOG_SCHEMA)  # every value fits its column
    first = read(odd[0])
    assert first["cited"] == [1]
    # A count that raises (a tokenizer's own failure) keeps the request, with the reason.
    def broken(text: str) -> int:
        raise RuntimeError("tokenizer gone")

    kept = read(odd[2], broken)
    assert kept["databricks_request_id"] == "r" and kept["error"] == "RAG fields not read: RuntimeError: tokenizer gone"


def test_large_bodies_are_cut_by_the_warehouse_and_a_page_too_large_is_read_in_smaller_ones(
    workspace: WorkspaceServer, lance: store.LanceStore
) -> None:
    passages = [("A long passage about rolling back. " * 1200)[:40000] for _ in range(3)]
    warehouse = workspace.workspace.sql
    warehouse.rows = [payload_row(n, START + timedelta(minutes=n), response=answer(f"Answer {n} [1].", passages)) for n in range(1, 5)]
    warehouse.publish()
    workspace.workspace.inline_limit = 300_000  # a 3-row page is over it; one row is not
    result = run_import(workspace, lance, page_rows=3)
    rows = logged(lance)
    assert result.added == 4 and sorted(rows) == ["req-001", "req-002", "req-003", "req-004"]
    assert rows["req-002"]["answer"] == "Answer 2 [1]." and rows["req-002"]["truncated"] is True
    assert len(rows["req-002"]["response"]) == 16000 and rows["req-002"]["response"].endswith(TRUNCATION_MARK)
    limits = [statement.text.rsplit("LIMIT ", 1)[1] for statement in workspace.workspace.statements.values()]
    assert limits[:2] == ["3", "1"] and set(limits[1:]) == {"1"}  # the 3-row page refused, then row by row


def test_a_warehouse_in_another_time_zone_misses_no_late_row(workspace: WorkspaceServer, lance: store.LanceStore, spark: Any) -> None:
    warehouse = workspace.workspace.sql
    evening = datetime(2026, 11, 24, 16, 30, tzinfo=UTC)  # already the 25th in Tokyo
    warehouse.rows = [payload_row(1, evening)]
    warehouse.publish()
    run_import(workspace, lance)
    warehouse.rows.append(payload_row(2, evening + timedelta(minutes=40)))
    warehouse.rows.append(payload_row(3, evening - timedelta(minutes=20)))  # late, within the lookback
    warehouse.publish()
    spark.conf.set("spark.sql.session.timeZone", "Asia/Tokyo")
    try:
        late = run_import(workspace, lance, lookback=timedelta(hours=1))
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert late.added == 2 and sorted(logged(lance)) == ["req-001", "req-002", "req-003"]


def test_a_sampled_table_is_said_and_a_request_id_twice_is_one_row(workspace: WorkspaceServer, lance: store.LanceStore) -> None:
    warehouse = workspace.workspace.sql
    twice = [payload_row(2, START + timedelta(minutes=1)), payload_row(2, START + timedelta(minutes=2))]
    warehouse.rows = [payload_row(1, START, sampling=0.25), *twice]
    warehouse.publish()
    result = run_import(workspace, lance)
    assert result.added == 2 and len(lance.read(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA)) == 2
    assert result.sampled == 0.25 and "as few as 25% of the requests" in result.summary()
    version = lance.version(store.INFERENCE_LOG)
    again = run_import(workspace, lance)
    assert again.added == 0 and lance.version(store.INFERENCE_LOG) == version  # nothing new: no commit


@pytest.mark.parametrize(("late", "asked"), [(None, False), (timedelta(hours=6), True)])
def test_a_window_stays_open_to_rows_the_import_adds_late(tmp_path: Path, late: timedelta | None, asked: bool) -> None:
    """A window computed after its newest request is done for the server's rows, which land within
    minutes; a row read from the inference table an hour late reopens it when the sensor allows for it."""
    import dagster as dg

    from llmops_dagster.assets.monitoring import monitoring_partitions
    from llmops_dagster.core.monitoring import MonitoringConfig, window_floor
    from llmops_dagster.resources import LanceDBResource
    from llmops_dagster.sensors.monitoring import LATE_ROWS_MS, build_new_requests_sensor

    day = timedelta(days=1)
    yesterday = window_floor(datetime.now(UTC), day) - day
    partitions = monitoring_partitions(MonitoringConfig(start=(yesterday - day).date()))
    late_ms = LATE_ROWS_MS if late is None else int(late.total_seconds() * 1000)
    sensor = build_new_requests_sensor("test", "monitor", partitions, refresh_seconds=0, late_ms=late_ms)

    @dg.asset(partitions_def=partitions)
    def window() -> None: ...

    defs = dg.Definitions(assets=[window], jobs=[dg.define_asset_job("monitor", selection=[window], partitions_def=partitions)])
    lance = store.LanceStore(str(tmp_path / "lancedb"))

    def logged_at(request_id: str, at: datetime) -> None:
        row = {"databricks_request_id": request_id, "timestamp_ms": int(at.timestamp() * 1000), "status_code": 200, "endpoint": "/p"}
        rows = pa.Table.from_pylist([row], store.INFERENCE_LOG_SCHEMA)
        lance.insert_new(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, "databricks_request_id", rows)

    noon = yesterday + timedelta(hours=12)
    logged_at("noon", noon)
    computed = {"id": "w", "window_key": monitoring_table.window_key(yesterday), "window_start": yesterday, "window_end": yesterday + day,
                "served_model_version": "1", "source": "endpoint", "request_count": 1, "computed_at": noon + timedelta(minutes=20)}
    monitoring_table.write_window(lance, monitoring_table.WindowReport(yesterday, yesterday + day, [computed], None, {}, ""))  # type: ignore[arg-type]
    logged_at("late", noon - timedelta(hours=1))  # read from the inference table after the window was computed
    cursor = json.dumps({"version": 1, "max_ms": int(noon.timestamp() * 1000)})
    resources = {"lancedb": LanceDBResource(uri=lance.uri)}
    with dg.DagsterInstance.ephemeral() as instance:
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources, definitions=defs) as context:
            result = sensor.evaluate_tick(context)
    assert [request.partition_key for request in result.run_requests] == ([yesterday.strftime("%Y-%m-%d")] if asked else [])
