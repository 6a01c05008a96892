"""The Databricks serving endpoint's inference table, read into the environment's ``inference_log``.

On Databricks the endpoint logs every request to its AI Gateway inference table, the Delta table
``{catalog}.{schema}.{endpoint}_payload`` in Unity Catalog (``core.endpoint``): request id, client
request id, date, time, status code, execution time, the request and response bodies, the served
entity's id and any logging error. ``import_requests`` reads what is new there through a SQL
warehouse (the Statement Execution API, by databricks-sdk) and adds it to ``inference_log``, so that
``monitoring`` and ``unanswered_questions`` see the Databricks endpoint's traffic as they see
``llmops serve``'s.

- **What is new.** The table is filled late (up to an hour, by Databricks' account) and not in
  request order, so each import starts ``lookback`` before the newest request it already holds and
  reads in (request time, request id) order, one page at a time. Each page is upserted by
  ``databricks_request_id`` as soon as it is read: a re-run, or a run after one killed at any point,
  re-reads the overlap and duplicates nothing.
- **Which version answered.** The served entity's id is resolved to the registered model's
  version through the system table ``system.serving.served_entities``. A workspace where the
  caller cannot read it still imports, with the version unknown, and says so.
- **The RAG fields.** The question and the ``k``/``mode`` params come from the request (any MLflow
  scoring format, parsed as ``llmops serve`` parses it); answer, found, sources, scores, citations,
  token usage and the generator from the model's first prediction in the response; question and
  answer tokens are counted with the index's tokenizer, and passages are matched back to the
  chunks they came from, so that groundedness can be judged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from llmops_dagster.core import store

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

    from llmops_dagster.core.endpoint import EndpointSpec

PAGE_ROWS = 500  # rows per statement: well under the 25 MiB an inline result may hold, with bodies clipped
VERSIONS_TABLE = "system.serving.served_entities"
WAIT_TIMEOUT = "30s"  # how long one call waits for the statement before polling (5 to 50 s)


class InferenceTableError(RuntimeError):
    """The warehouse refused or failed a statement; the message names the table and holds no secret."""


def quoted(table: str) -> str:
    """A three-part name with each part in backticks."""
    return ".".join(f"`{part.replace('`', '``')}`" for part in table.split("."))


def page_statement(table: str, versions: bool, page_rows: int) -> str:
    """The next page after (``after_us``, ``after_id``), oldest first. ``request_date`` and
    ``request_time`` bounds let the warehouse skip files; the keyset on the microsecond time and the
    id makes pages neither overlap nor skip rows that share a time."""
    version = "e.entity_version" if versions else "CAST(NULL AS STRING)"
    join = (
        f"LEFT JOIN (SELECT served_entity_id, max_by(entity_version, change_time) AS entity_version FROM {VERSIONS_TABLE} "
        "WHERE endpoint_name = :endpoint GROUP BY served_entity_id) AS e ON t.served_entity_id = e.served_entity_id "
        if versions
        else ""
    )
    return (
        "SELECT t.databricks_request_id, t.client_request_id, unix_micros(t.request_time) AS request_us, t.status_code, "
        "t.execution_duration_ms, t.request, t.response, to_json(t.logging_error_codes) AS logging_error_codes, "
        f"{version} AS entity_version FROM {quoted(table)} AS t {join}"
        "WHERE t.request_date >= to_date(timestamp_micros(:after_us)) AND t.request_time >= timestamp_micros(:after_us) "
        "AND (unix_micros(t.request_time) > :after_us OR (unix_micros(t.request_time) = :after_us AND t.databricks_request_id > :after_id)) "
        f"ORDER BY request_us, t.databricks_request_id LIMIT {int(page_rows)}"
    )


class Warehouse:
    """Statements on one SQL warehouse, each result read whole (every chunk) as rows of strings."""

    def __init__(
        self,
        client: WorkspaceClient,
        warehouse_id: str,
        *,
        timeout_s: float = 600.0,
        poll_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = client.statement_execution
        self.warehouse_id = warehouse_id
        self.timeout_s, self.poll_s, self.sleep, self.clock = timeout_s, poll_s, sleep, clock

    def rows(self, statement: str, parameters: Mapping[str, tuple[Any, str]]) -> list[dict[str, str | None]]:
        """The statement's rows as column → value (strings, as the JSON_ARRAY format gives them).
        ``parameters``: name → (value, SQL type). A failure is one ``InferenceTableError``."""
        from databricks.sdk.service.sql import (
            Disposition,
            ExecuteStatementRequestOnWaitTimeout,
            Format,
            StatementParameterListItem,
            StatementState,
        )

        items = [StatementParameterListItem(name=name, value=str(value), type=kind) for name, (value, kind) in parameters.items()]
        deadline = self.clock() + self.timeout_s
        response = self.api.execute_statement(
            statement=statement,
            warehouse_id=self.warehouse_id,
            parameters=items,
            wait_timeout=WAIT_TIMEOUT,
            on_wait_timeout=ExecuteStatementRequestOnWaitTimeout.CONTINUE,
            disposition=Disposition.INLINE,
            format=Format.JSON_ARRAY,
        )
        while response.status and response.status.state in (StatementState.PENDING, StatementState.RUNNING):
            if self.clock() >= deadline:
                self.api.cancel_execution(response.statement_id)
                raise InferenceTableError(f"the statement was still running on warehouse {self.warehouse_id} after {self.timeout_s:g} s; cancelled")
            self.sleep(self.poll_s)
            response = self.api.get_statement(response.statement_id)
        state = response.status.state if response.status else None
        if state != StatementState.SUCCEEDED:
            error = response.status.error if response.status else None
            reason = f"{error.error_code.value if error and error.error_code else ''} {error.message if error else ''}".strip()
            raise InferenceTableError(f"the statement ended {state.value if state else 'without a state'} on warehouse {self.warehouse_id}: {reason}")
        columns = [column.name for column in response.manifest.schema.columns]
        values, chunk = [], response.result
        while chunk is not None:
            values += chunk.data_array or []
            following = chunk.next_chunk_index
            chunk = self.api.get_statement_result_chunk_n(response.statement_id, following) if following is not None else None
        return [dict(zip(columns, row, strict=True)) for row in values]


# ---- one row of the inference table as an inference_log row -----------------------------------


def endpoint_path(spec: EndpointSpec) -> str:
    """What the ``endpoint`` column of an imported row holds: the path Databricks serves it at."""
    return f"/serving-endpoints/{spec.name}/invocations"


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _first_prediction(response: Any) -> dict[str, Any] | None:
    predictions = response.get("predictions") if isinstance(response, dict) else None
    if isinstance(predictions, dict):  # the DataFrame as columns of values
        predictions = [dict(zip(predictions, values, strict=False)) for values in zip(*predictions.values(), strict=False)]
    if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
        return predictions[0]
    return None


def _request_fields(request: Any) -> tuple[dict[str, Any], str | None]:
    """The question (the first of the request), k and mode, as ``llmops serve`` reads a scoring
    request; and why not, when the body is missing or not one."""
    from llmops_dagster.serving.protocol import BadRequest, Limits, invocations

    if not isinstance(request, dict):
        return {}, "the request body was not logged as a JSON object"
    unlimited = Limits(max_question_chars=1 << 30, max_k=1 << 30, max_questions=1 << 30)
    try:
        query = invocations(request, None, unlimited)
    except BadRequest as error:
        return {}, f"the request is not a scoring request: {error}"
    return {"question": query.questions[0], "k": query.k, "mode": query.mode}, None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def log_row(
    record: Mapping[str, str | None],
    path: str,
    model: str,
    field_chars: int,
    count_tokens: Callable[[str], int],
    chunk_ids: Mapping[str, str],
) -> dict[str, Any]:
    """The inference_log row of one inference-table row. ``chunk_ids``: passage text → chunk id."""
    from llmops_dagster.serving.inference_log import clip

    micros = int(record["request_us"])
    started = datetime.fromtimestamp(micros / 1_000_000, UTC)
    request_text, response_text = record.get("request"), record.get("response")
    request_clipped, request_cut = clip(request_text or "", field_chars)
    response_clipped, response_cut = clip(response_text or "", field_chars)
    status = _int(record.get("status_code"))
    problems = [f"not logged in full by Databricks: {', '.join(codes)}"] if (codes := _json(record.get("logging_error_codes"))) else []
    row: dict[str, Any] = {
        "databricks_request_id": record["databricks_request_id"],
        "client_request_id": record.get("client_request_id"),
        "date": started.date(),
        "timestamp_ms": micros // 1000,
        "status_code": status,
        "execution_time_ms": float(record["execution_duration_ms"]) if record.get("execution_duration_ms") is not None else None,
        "request": request_clipped if request_text else None,
        "response": response_clipped if response_text else None,
        "truncated": request_cut or response_cut or bool(codes),
        "served_model_name": model,
        "served_model_version": record.get("entity_version"),
        "endpoint": path,
    }
    response = _json(response_text)
    if status is not None and status >= 400:
        message = response.get("message") if isinstance(response, dict) else None
        problems.insert(0, str(message or response_text or f"status {status}")[:500])
    fields, unread = _request_fields(_json(request_text))
    if unread and (status is None or status < 400):
        problems.append(unread)
    row.update(fields)
    if fields.get("question"):
        row["question_tokens"] = count_tokens(fields["question"])
    prediction = _first_prediction(response) if status is not None and status < 400 else None
    if prediction is not None:
        answer = prediction.get("answer")
        passages = prediction.get("passages") or []
        ids = [chunk_ids.get(text) for text in passages]
        row.update({
            "answer": answer,
            "found": prediction.get("found"),
            "sources": prediction.get("sources"),
            "scores": prediction.get("scores"),
            "chunk_ids": ids if passages and all(ids) else None,
            "answer_tokens": count_tokens(answer) if isinstance(answer, str) and answer else None,
            "cited": prediction.get("cited"),
            "prompt_tokens": _int(prediction.get("prompt_tokens")),
            "completion_tokens": _int(prediction.get("completion_tokens")),
            "generator": prediction.get("generator"),
            "usage_source": "endpoint" if prediction.get("prompt_tokens") is not None else None,
        })
        if prediction.get("error"):
            problems.append(str(prediction["error"]))
    row["error"] = "; ".join(problems) or None
    return row


def passage_chunk_ids(lance: store.LanceStore, records: list[Mapping[str, str | None]]) -> dict[str, str]:
    """Passage text → chunk id, for the passages the page's responses quote (from the index they
    were retrieved from, which the endpoint shares with this environment)."""
    texts = {
        text
        for record in records
        if (prediction := _first_prediction(_json(record.get("response")))) is not None
        for text in prediction.get("passages") or []
        if isinstance(text, str)
    }
    if not texts or not lance.exists(store.CHUNKS):
        return {}
    found = lance.read_keys(store.CHUNKS, store.CHUNKS_SCHEMA, "text", sorted(texts), ["id", "text"])
    return dict(zip(found.column("text").to_pylist(), found.column("id").to_pylist(), strict=True))


# ---- the import -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    table: str
    since: datetime  # where this import started reading
    read: int  # rows read, the overlap with earlier imports included
    added: int  # rows inference_log did not hold yet
    pages: int
    versions_unknown: str | None  # why the served version could not be resolved, when it could not
    newest: datetime | None  # the newest request now held

    def summary(self) -> str:
        text = f"{self.added} new request(s) of {self.read} read from {self.table} since {self.since.isoformat()} ({self.pages} page(s))"
        return text + (f"; served versions unknown: {self.versions_unknown}" if self.versions_unknown else "")


def _upsert(lance: store.LanceStore, rows: list[dict[str, Any]]) -> int:
    """Write one page by request id, in one commit; how many of its requests were new."""
    ids = [row["databricks_request_id"] for row in rows]
    known: set[str] = set()
    if lance.exists(store.INFERENCE_LOG):
        held = lance.read_keys(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, "databricks_request_id", ids, ["databricks_request_id"])
        known = set(held.column("databricks_request_id").to_pylist())
    lance.apply(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, "databricks_request_id", pa.Table.from_pylist(rows, store.INFERENCE_LOG_SCHEMA), [])
    return len(set(ids) - known)


def newest_held(lance: store.LanceStore, path: str) -> datetime | None:
    """The newest imported request that inference_log holds for this endpoint."""
    table = lance.open(store.INFERENCE_LOG)
    if table is None:
        return None
    quoted_path = path.replace("'", "''")
    stamps = table.search().where(f"endpoint = '{quoted_path}' AND timestamp_ms IS NOT NULL").select(["timestamp_ms"]).limit(None).to_arrow()
    if not stamps.num_rows:
        return None
    return datetime.fromtimestamp(max(stamps.column("timestamp_ms").to_pylist()) / 1000, UTC)


def import_requests(
    warehouse: Warehouse,
    spec: EndpointSpec,
    lance: store.LanceStore,
    *,
    start: date,
    lookback: timedelta,
    count_tokens: Callable[[str], int],
    field_chars: int,
    page_rows: int = PAGE_ROWS,
    log: Callable[[str], None] = lambda message: None,
) -> ImportResult:
    """Add the inference table's requests that ``lance``'s inference_log lacks: from ``lookback``
    before the newest one it holds (from ``start`` the first time), page by page."""
    path = endpoint_path(spec)
    newest = newest_held(lance, path)
    since = newest - lookback if newest else datetime.combine(start, datetime.min.time(), UTC)
    after_us, after_id = int(since.timestamp() * 1_000_000) - 1, ""
    versions, versions_unknown = True, None
    read = added = pages = 0
    while True:
        parameters = {"after_us": (after_us, "BIGINT"), "after_id": (after_id, "STRING")}
        if versions:
            parameters["endpoint"] = (spec.name, "STRING")
        try:
            records = warehouse.rows(page_statement(spec.inference_table, versions, page_rows), parameters)
        except InferenceTableError as error:
            if not versions or not any(name in str(error) for name in ("served_entities", "system.serving")):
                raise InferenceTableError(f"reading {spec.inference_table}: {error}") from None
            versions, versions_unknown = False, str(error)  # read again without the versions
            log(f"{VERSIONS_TABLE} could not be read, so imported rows carry no served version: {error}")
            continue
        pages += 1
        if records:
            chunk_ids = passage_chunk_ids(lance, records)
            rows = [log_row(record, path, spec.model, field_chars, count_tokens, chunk_ids) for record in records]
            read, added = read + len(rows), added + _upsert(lance, rows)
            following = (int(records[-1]["request_us"]), str(records[-1]["databricks_request_id"]))
            if following <= (after_us, after_id):
                raise InferenceTableError(f"reading {spec.inference_table}: the page did not move past {after_us}/{after_id}; stopped")
            after_us, after_id = following
            log(f"page {pages}: {len(rows)} row(s) up to {datetime.fromtimestamp(after_us / 1_000_000, UTC).isoformat()}")
        if len(records) < page_rows:
            break
    return ImportResult(spec.inference_table, since, read, added, pages, versions_unknown, newest_held(lance, path))
