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
  reads in (request time, request id) order, one page at a time. Each page's request ids that
  inference_log lacks are added as soon as it is read (rows it holds are left as they are): a
  re-run, or a run after one killed at any point, re-reads the overlap and duplicates nothing.
- **Which version answered.** The served entity's id is resolved to the registered model's
  version through the system table ``system.serving.served_entities``. A workspace where the
  caller cannot read it still imports, with the version unknown, and says so.
- **The RAG fields.** The questions and the ``k``/``mode`` params come from the request (any MLflow
  scoring format, parsed as ``llmops serve`` parses it); answer, found, sources, scores, citations,
  token usage and the generator from the model's predictions in the response, one per question:
  the first question's in the row's columns, each later one's in ``later_questions``, as ``llmops
  serve`` logs them. Question and answer tokens are counted with the index's tokenizer, and passages
  are matched back to the chunks they came from, so that groundedness can be judged.
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

PAGE_ROWS = 200  # rows per statement: with bodies cut to log_field_chars, well under the 25 MiB an inline result may hold
VERSIONS_TABLE = "system.serving.served_entities"
WAIT_TIMEOUT = "30s"  # how long one call waits for the statement before polling (5 to 50 s)


class InferenceTableError(RuntimeError):
    """The warehouse refused or failed a statement; the message names the table and holds no secret."""


def quoted(table: str) -> str:
    """A three-part name with each part in backticks."""
    return ".".join(f"`{part.replace('`', '``')}`" for part in table.split("."))


def page_statement(table: str, versions: bool, page_rows: int, field_chars: int) -> str:
    """The next page after (``after_us``, ``after_id``), oldest first. The ``request_date`` bound
    (``after_date``, a UTC date a day early, whatever the warehouse's time zone) and the
    ``request_time`` bound let the warehouse skip files; the keyset on the microsecond time and the
    id makes pages neither overlap nor skip rows that share a time. Bodies come cut to
    ``field_chars`` with their full lengths, and the predictions whole (what the row's RAG fields
    are read from); a page too large for an inline result is read again in smaller pages."""
    version = "e.entity_version" if versions else "CAST(NULL AS STRING)"
    join = (
        f"LEFT JOIN (SELECT served_entity_id, max_by(entity_version, change_time) AS entity_version FROM {VERSIONS_TABLE} "
        "WHERE endpoint_name = :endpoint GROUP BY served_entity_id) AS e ON t.served_entity_id = e.served_entity_id "
        if versions
        else ""
    )
    chars = int(field_chars)
    return (
        "SELECT t.databricks_request_id, t.client_request_id, unix_micros(t.request_time) AS request_us, t.status_code, "
        f"t.execution_duration_ms, t.sampling_fraction, left(t.request, {chars}) AS request, length(t.request) AS request_chars, "
        f"left(t.response, {chars}) AS response, length(t.response) AS response_chars, "
        "get_json_object(t.response, '$.predictions') AS predictions, get_json_object(t.response, '$.message') AS message, "
        f"to_json(t.logging_error_codes) AS logging_error_codes, {version} AS entity_version FROM {quoted(table)} AS t {join}"
        "WHERE t.request_date >= :after_date AND t.request_time >= timestamp_micros(:after_us) "
        "AND (unix_micros(t.request_time) > :after_us OR (unix_micros(t.request_time) = :after_us AND t.databricks_request_id > :after_id)) "
        f"ORDER BY request_us, t.databricks_request_id LIMIT {int(page_rows)}"
    )


def too_large(error: InferenceTableError) -> bool:
    """Whether the warehouse refused a result for its size (an INLINE result holds 25 MiB at most)."""
    text = str(error).lower()
    return "exceed" in text and ("limit" in text or "size" in text)


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
        from databricks.sdk.service.sql import StatementParameterListItem

        from llmops_dagster.core.endpoint import one_line

        items = [
            StatementParameterListItem(name=name, value=None if value is None else str(value), type=kind)
            for name, (value, kind) in parameters.items()
        ]
        try:
            return self._run(statement, items)
        except OSError as error:  # the SDK's DatabricksError (an unknown warehouse, no CAN USE), or the workspace out of reach
            raise InferenceTableError(f"warehouse {self.warehouse_id}: {one_line(error)}") from None

    def _run(self, statement: str, items: list[Any]) -> list[dict[str, str | None]]:
        from databricks.sdk.service.sql import Disposition, ExecuteStatementRequestOnWaitTimeout, Format, StatementState

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
            message = ((error.message if error else "") or "").strip().splitlines()
            reason = f"{error.error_code.value if error and error.error_code else ''} {message[0] if message else ''}".strip()
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


def predictions_of(record: Mapping[str, str | None]) -> list[dict[str, Any] | None]:
    """The response's predictions, one per question, as the warehouse extracted them, else from the
    (uncut) body; ``predictions`` may also be the DataFrame as columns of values. One that is not an
    object is None in its place; none at all when the response holds no predictions."""
    predictions = _json(record.get("predictions"))
    if predictions is None:
        response = _json(record.get("response"))
        predictions = response.get("predictions") if isinstance(response, dict) else None
    if isinstance(predictions, dict) and predictions and all(isinstance(values, list) for values in predictions.values()):
        rows = max(len(values) for values in predictions.values())
        return [{column: values[n] for column, values in predictions.items() if n < len(values)} for n in range(rows)]
    if isinstance(predictions, list):
        return [prediction if isinstance(prediction, dict) else None for prediction in predictions]
    return []


def _request_fields(request: Any) -> tuple[list[str], dict[str, Any]]:
    """The request's questions, and its k and mode, as ``llmops serve`` reads a scoring request;
    none when the body is missing or not one."""
    from llmops_dagster.serving.protocol import BadRequest, Limits, invocations

    if not isinstance(request, dict):
        return [], {}
    unlimited = Limits(max_question_chars=1 << 30, max_k=1 << 30, max_questions=1 << 30)
    try:
        query = invocations(request, None, unlimited)
    except BadRequest:
        return [], {}
    return list(query.questions), {"k": _int32(query.k), "mode": query.mode}


INT32_MAX = 2**31 - 1


def _int32(value: Any) -> int | None:
    """A whole number that fits an int32 column, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if -INT32_MAX - 1 <= number <= INT32_MAX and number == float(value) else None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _strings(value: Any) -> list[str] | None:
    return value if isinstance(value, list) and all(isinstance(item, str) for item in value) else None


def _numbers(value: Any) -> list[float] | None:
    if not isinstance(value, list) or not all(isinstance(item, int | float) and not isinstance(item, bool) for item in value):
        return None
    return [float(item) for item in value]


def _clipped(text: str | None, length: str | None, limit: int) -> tuple[str | None, bool]:
    """A body the warehouse cut to ``limit`` characters, marked as ``llmops serve`` marks what it cuts."""
    from llmops_dagster.serving.inference_log import TRUNCATION_MARK

    if text is None:
        return None, False
    full = _int32(length)
    if full is None or full <= limit:
        return text, False
    return text[: max(0, limit - len(TRUNCATION_MARK))] + TRUNCATION_MARK, True


def log_row(
    record: Mapping[str, str | None],
    predictions: list[dict[str, Any] | None],
    path: str,
    model: str,
    field_chars: int,
    count_tokens: Callable[[str], int],
    chunk_ids: Mapping[str, str],
) -> dict[str, Any]:
    """The inference_log row of one inference-table row, whose response's ``predictions_of`` are
    ``predictions``. ``chunk_ids``: passage text → chunk id.
    A field the request or response holds in an unexpected shape is left empty; a row whose RAG
    fields cannot be read at all keeps the table's own columns and says why in ``error``."""
    micros = int(record["request_us"])
    started = datetime.fromtimestamp(micros / 1_000_000, UTC)
    status = _int32(record.get("status_code"))
    request, request_cut = _clipped(record.get("request"), record.get("request_chars"), field_chars)
    response, response_cut = _clipped(record.get("response"), record.get("response_chars"), field_chars)
    # A body Databricks did not log (too large) is left a note of why in its place.
    codes = _json(record.get("logging_error_codes"))
    unlogged = f"(not logged by Databricks: {', '.join(map(str, codes))})" if isinstance(codes, list) and codes else None
    duration = _json(record.get("execution_duration_ms"))
    row: dict[str, Any] = {
        "databricks_request_id": record["databricks_request_id"],
        "client_request_id": record.get("client_request_id"),
        "date": started.date(),
        "timestamp_ms": micros // 1000,
        "status_code": status,
        "execution_time_ms": float(duration) if isinstance(duration, int | float) and not isinstance(duration, bool) else None,
        "request": request if request is not None else unlogged,
        "response": response if response is not None else unlogged,
        "truncated": request_cut or response_cut or unlogged is not None,
        "served_model_name": model,
        "served_model_version": record.get("entity_version"),
        "endpoint": path,
        "error": None,
    }
    try:
        row.update(_rag_fields(record, predictions, status, count_tokens, chunk_ids))
    except Exception as error:  # noqa: BLE001 - the request is never lost for a field that could not be read
        row["error"] = f"RAG fields not read: {type(error).__name__}: {error}"[:500]
    return row


def _rag_fields(
    record: Mapping[str, str | None],
    predictions: list[dict[str, Any] | None],
    status: int | None,
    count_tokens: Callable[[str], int],
    chunk_ids: Mapping[str, str],
) -> dict[str, Any]:
    """The question, answer and retrieval columns, from the request and its predictions: the first
    question's in the columns, each later one's in ``later_questions``."""
    questions, params = _request_fields(_json(record.get("request")))
    if status is not None and status >= 400:
        message = _string(record.get("message")) or record.get("response") or f"status {status}"
        predictions = []
        params["error"] = message[:500]
    each = [
        _question_fields(questions[n] if n < len(questions) else None, predictions[n] if n < len(predictions) else None, count_tokens, chunk_ids)
        for n in range(max(len(questions), len(predictions), 1))
    ]
    row = {**each[0], **params, "later_questions": each[1:] or None}  # error: the request's, or the first generator's
    if predictions and predictions[0]:
        row["generator"] = _string(predictions[0].get("generator"))
        row["usage_source"] = "endpoint" if row.get("prompt_tokens") is not None else None
    return row


def _question_fields(
    question: str | None, prediction: Mapping[str, Any] | None, count_tokens: Callable[[str], int], chunk_ids: Mapping[str, str]
) -> dict[str, Any]:
    """One question's RAG fields, named as ``store.LATER_QUESTION``'s."""
    fields: dict[str, Any] = {"question": question, "question_tokens": count_tokens(question) if question else None}
    if prediction is None:
        return fields
    answer, passages = _string(prediction.get("answer")), _strings(prediction.get("passages")) or []
    ids = [chunk_ids.get(text) for text in passages]
    found = prediction.get("found")
    cited = prediction.get("cited")
    return {
        **fields,
        "answer": answer,
        "found": found if isinstance(found, bool) else None,
        "sources": _strings(prediction.get("sources")),
        "scores": _numbers(prediction.get("scores")),
        "chunk_ids": ids if passages and all(ids) else None,
        "answer_tokens": count_tokens(answer) if answer else None,
        "cited": [number for number in (_int32(item) for item in cited) if number is not None] if isinstance(cited, list) else None,
        "prompt_tokens": _int32(prediction.get("prompt_tokens")),
        "completion_tokens": _int32(prediction.get("completion_tokens")),
        # The generator's failure, as llmops serve logs it: monitoring counts it apart from no-answers.
        "error": str(prediction["error"])[:500] if prediction.get("error") else None,
    }


def passage_chunk_ids(lance: store.LanceStore, predictions: list[dict[str, Any] | None]) -> dict[str, str]:
    """Passage text → chunk id, for the passages the page's predictions quote (from the index they
    were retrieved from, which the endpoint shares with this environment)."""
    texts = {text for prediction in predictions if prediction for text in _strings(prediction.get("passages")) or []}
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
    sampled: float | None = None  # the lowest sampling fraction read, when Databricks logged only part of the requests

    def summary(self) -> str:
        text = f"{self.added} new request(s) of {self.read} read from {self.table} since {self.since.isoformat()} ({self.pages} page(s))"
        if self.sampled is not None:
            text += f"; Databricks logged as few as {self.sampled:.0%} of the requests (sampling_fraction): counts are of the logged ones"
        return text + (f"; served versions unknown: {self.versions_unknown}" if self.versions_unknown else "")


def _insert_new(lance: store.LanceStore, rows: list[dict[str, Any]]) -> int:
    """Add the page's requests that inference_log lacks (a request id twice in the table counts
    once), in one commit, or none when it holds them all; how many were added."""
    unique = list({row["databricks_request_id"]: row for row in rows}.values())
    table = pa.Table.from_pylist(unique, store.INFERENCE_LOG_SCHEMA)
    return lance.insert_new(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, "databricks_request_id", table).upserted


def newest_held(lance: store.LanceStore, path: str) -> datetime | None:
    """The newest imported request that inference_log holds for this endpoint."""
    quoted_path = path.replace("'", "''")
    where = f"endpoint = '{quoted_path}' AND timestamp_ms IS NOT NULL"
    stamps = lance.read(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, ["timestamp_ms"], where).column("timestamp_ms").to_pylist()
    return datetime.fromtimestamp(max(stamps) / 1000, UTC) if stamps else None


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
    after_date = (since - timedelta(days=1)).date()  # request_date's day, in UTC, with a day's margin
    versions, versions_unknown = True, None
    read = added = pages = 0
    sampled: float | None = None
    while True:
        parameters = {"after_us": (after_us, "BIGINT"), "after_id": (after_id, "STRING"), "after_date": (after_date.isoformat(), "DATE")}
        if versions:
            parameters["endpoint"] = (spec.name, "STRING")
        try:
            records = warehouse.rows(page_statement(spec.inference_table, versions, page_rows, field_chars), parameters)
        except InferenceTableError as error:
            if page_rows > 1 and too_large(error):  # large bodies: the same rows in smaller pages
                page_rows = max(1, page_rows // 2)
                log(f"a page was too large for an inline result; reading {page_rows} row(s) at a time")
                continue
            if not versions or not any(name in str(error) for name in ("served_entities", "system.serving")):
                raise InferenceTableError(f"reading {spec.inference_table}: {error}") from None
            versions, versions_unknown = False, str(error)  # read again without the versions
            log(f"{VERSIONS_TABLE} could not be read, so imported rows carry no served version: {error}")
            continue
        pages += 1
        if records:
            predictions = [predictions_of(record) for record in records]  # parsed once: for the chunk ids and the rows
            chunk_ids = passage_chunk_ids(lance, [prediction for each in predictions for prediction in each])
            rows = [
                log_row(record, each, path, spec.model, field_chars, count_tokens, chunk_ids)
                for record, each in zip(records, predictions, strict=True)
            ]
            read, added = read + len(rows), added + _insert_new(lance, rows)
            fractions = [_json(record.get("sampling_fraction")) for record in records]
            partial = [fraction for fraction in fractions if isinstance(fraction, int | float) and fraction < 1]
            sampled = min([*partial, *([sampled] if sampled is not None else [])], default=None)
            following = (int(records[-1]["request_us"]), str(records[-1]["databricks_request_id"]))
            if following <= (after_us, after_id):
                raise InferenceTableError(f"reading {spec.inference_table}: the page did not move past {after_us}/{after_id}; stopped")
            after_us, after_id = following
            log(f"page {pages}: {len(rows)} row(s) up to {datetime.fromtimestamp(after_us / 1_000_000, UTC).isoformat()}")
        if len(records) < page_rows:
            break
    # Pages come oldest first, so the last row read is the newest now held, unless nothing was read.
    last = datetime.fromtimestamp(after_us // 1000 / 1000, UTC) if read else None
    newest = max(filter(None, (newest, last)), default=None)
    return ImportResult(spec.inference_table, since, read, added, pages, versions_unknown, newest, sampled)
