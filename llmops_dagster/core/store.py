"""Versioned tables in LanceDB: documents, quarantine, chunks and embeddings.

Every write is one Lance commit (a new table version), so a run killed mid-way leaves the last good
version readable. Writes are skipped entirely when there is nothing to change: LanceDB commits a new
version even for an empty merge or a delete that matches nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from lancedb.table import Table

DOCUMENTS = "documents"
QUARANTINE = "quarantine"
CHUNKS = "chunks"
EMBEDDINGS = "embeddings"
EVALUATIONS = "evaluations"
PREDICTIONS = "predictions"
INFERENCE_LOG = "inference_log"

_BLOCK = pa.struct([("text", pa.string()), ("page", pa.int32()), ("heading", pa.string()), ("section", pa.list_(pa.string()))])
_DROPPED = pa.struct([("kind", pa.string()), ("lines", pa.int32())])
_UTC = pa.timestamp("us", tz="UTC")

DOCUMENTS_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False, metadata={"description": "path inside the landing zone"}),
        pa.field("doc_id", pa.string(), nullable=False, metadata={"description": "sha256 of the file content"}),
        pa.field("format", pa.string(), metadata={"description": "pdf, html, markdown or text"}),
        pa.field("size_bytes", pa.int64()),
        pa.field("mtime_ns", pa.int64(), metadata={"description": "file modification time, ns since epoch"}),
        pa.field("pages", pa.int32(), metadata={"description": "page count (PDF only)"}),
        pa.field("title", pa.string()),
        pa.field("text", pa.string(), metadata={"description": "extracted text"}),
        pa.field("blocks", pa.list_(_BLOCK), metadata={"description": "paragraphs with page, heading and heading path"}),
        pa.field("navigation", pa.list_(_DROPPED), metadata={"description": "navigation left out: contents, index, furniture, link lists"}),
        pa.field("parser", pa.string()),
        pa.field("warnings", pa.list_(pa.string()), metadata={"description": "what parsing repaired, e.g. bytes that are not UTF-8"}),
        pa.field("ingested_at", _UTC),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False, metadata={"description": "path inside the landing zone"}),
        pa.field("doc_id", pa.string(), nullable=False, metadata={"description": "sha256 of the file content"}),
        pa.field("size_bytes", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field(
            "reason",
            pa.string(),
            metadata={"description": "corrupt, encrypted, empty, no_text_layer, undecodable, too_large, unsupported_type, broken_link"},
        ),
        pa.field("detail", pa.string()),
        pa.field("parser", pa.string(), metadata={"description": "the parse release that set it aside; a newer one looks again"}),
        pa.field("quarantined_at", _UTC),
    ]
)

_CHUNK_FIELDS = [
    pa.field("id", pa.string(), nullable=False, metadata={"description": "stable chunk id"}),
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False, metadata={"description": "document path"}),
    pa.field("ordinal", pa.int32(), metadata={"description": "position in the document"}),
    pa.field("text", pa.string()),
    pa.field("n_tokens", pa.int32(), metadata={"description": "tokens as the embedding model counts them"}),
    pa.field("page", pa.int32(), metadata={"description": "first page (PDF only)"}),
    pa.field("page_end", pa.int32(), metadata={"description": "last page (PDF only)"}),
    pa.field("heading", pa.string()),
    pa.field("context", pa.string(), metadata={"description": "document title and heading path, as the context template renders them"}),
]
CHUNKS_SCHEMA = pa.schema([*_CHUNK_FIELDS, pa.field("chunker", pa.string())])


def embeddings_schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            *_CHUNK_FIELDS,
            pa.field("search_text", pa.string(), metadata={"description": "context and text: what is embedded and full-text indexed"}),
            pa.field("vector", pa.list_(pa.float32(), dimension), metadata={"description": "unit-norm embedding of search_text"}),
            pa.field("embedding_model", pa.string(), metadata={"description": "model fingerprint"}),
        ]
    )


EVALUATIONS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False, metadata={"description": "run, system, mode and query set"}),
        pa.field("dagster_run_id", pa.string(), nullable=False),
        pa.field("evaluated_at", _UTC),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string(), metadata={"description": "registered version evaluated (empty for base/trained)"}),
        pa.field("system", pa.string(), metadata={"description": "base, trained, challenger or champion"}),
        pa.field("mode", pa.string(), metadata={"description": "vector, text or hybrid retrieval"}),
        pa.field("query_set", pa.string(), metadata={"description": "all, held_out (mined pairs) or gold (questions/)"}),
        pa.field("split", pa.string(), metadata={"description": "all questions, or the select or report half (see core.selection)"}),
        pa.field("retrieval", pa.string(), metadata={"description": "retrieval configuration: mode, fusion, weight, depth"}),
        pa.field("queries", pa.int32()),
        pa.field("recall_at_1", pa.float64()),
        pa.field("recall_at_5", pa.float64()),
        pa.field("recall_at_10", pa.float64()),
        pa.field("mrr_at_10", pa.float64()),
        pa.field("ndcg_at_10", pa.float64()),
        pa.field("answer_f1", pa.float64(), metadata={"description": "token F1 against gold answers, where given"}),
        pa.field("groundedness", pa.float64(), metadata={"description": "share of answers' content found in the passages they cite"}),
        pa.field("citation_validity", pa.float64(), metadata={"description": "share of [n] citations naming a supporting passage"}),
        pa.field("no_answer_rate", pa.float64()),
    ]
)

PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False, metadata={"description": "run id + question origin"}),
        pa.field("dagster_run_id", pa.string(), nullable=False),
        pa.field("origin", pa.string(), metadata={"description": "questions file and line"}),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("found", pa.bool_(), metadata={"description": "false when the model said it found no answer"}),
        pa.field("passages", pa.list_(pa.string()), metadata={"description": "retrieved passages, best first"}),
        pa.field("sources", pa.list_(pa.string()), metadata={"description": "file#page=N of each passage"}),
        pa.field("scores", pa.list_(pa.float64()), metadata={"description": "retrieval score of each passage"}),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("model_alias", pa.string(), metadata={"description": "champion, or challenger when there was none"}),
        pa.field("latency_ms", pa.float64()),
        pa.field("predicted_at", _UTC),
        pa.field("cited", pa.list_(pa.int32()), metadata={"description": "passage numbers (1-based) the answer cites"}),
        pa.field("prompt_tokens", pa.int32(), metadata={"description": "the generator's usage, from the endpoint or counted"}),
        pa.field("completion_tokens", pa.int32()),
        pa.field("generator", pa.string(), metadata={"description": "JSON: kind, model, parameters, prompt template digest"}),
        pa.field("error", pa.string(), metadata={"description": "why generation failed, when it did (the question is kept)"}),
    ]
)


# One row per request to `llmops serve`: the columns of a Databricks inference table, then the RAG fields.
# A question after a request's first, with the RAG fields its log row's columns give the first.
LATER_QUESTION = pa.struct(
    [
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("found", pa.bool_()),
        pa.field("chunk_ids", pa.list_(pa.string())),
        pa.field("sources", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.float64())),
        pa.field("question_tokens", pa.int32()),
        pa.field("answer_tokens", pa.int32()),
        pa.field("cited", pa.list_(pa.int32())),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
        pa.field("error", pa.string()),  # its generator's failure, when the request itself did not fail
    ]
)
INFERENCE_LOG_SCHEMA = pa.schema(
    [
        pa.field("databricks_request_id", pa.string(), nullable=False, metadata={"description": "the server's request id"}),
        pa.field("client_request_id", pa.string(), metadata={"description": "X-Client-Request-Id or the payload's client_request_id"}),
        pa.field("date", pa.date32()),
        pa.field("timestamp_ms", pa.int64(), metadata={"description": "request start, epoch milliseconds"}),
        pa.field("status_code", pa.int32()),
        pa.field("execution_time_ms", pa.float64()),
        pa.field("request", pa.string(), metadata={"description": "request body as JSON, truncated to serving.log_field_chars"}),
        pa.field("response", pa.string(), metadata={"description": "response body as JSON, truncated likewise"}),
        pa.field("truncated", pa.bool_(), metadata={"description": "request or response was cut to fit"}),
        pa.field("served_model_name", pa.string()),
        pa.field("served_model_version", pa.string()),
        pa.field("endpoint", pa.string(), metadata={"description": "/invocations or /v1/chat/completions"}),
        pa.field("error", pa.string(), metadata={"description": "why the request failed, when it did"}),
        pa.field("question", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("found", pa.bool_(), metadata={"description": "false when the model said it found no answer"}),
        pa.field("chunk_ids", pa.list_(pa.string()), metadata={"description": "retrieved chunks, best first"}),
        pa.field("sources", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.float64())),
        pa.field("mode", pa.string(), metadata={"description": "retrieval mode: hybrid, vector or text"}),
        pa.field("k", pa.int32()),
        pa.field("question_tokens", pa.int32(), metadata={"description": "the embedding model's tokenizer"}),
        pa.field("answer_tokens", pa.int32()),
        pa.field("generator", pa.string(), metadata={"description": "JSON: kind, model, parameters, prompt template digest"}),
        pa.field("cited", pa.list_(pa.int32()), metadata={"description": "passage numbers (1-based) the answer cites"}),
        pa.field("prompt_tokens", pa.int32(), metadata={"description": "the generator's usage, from the endpoint or counted"}),
        pa.field("completion_tokens", pa.int32()),
        pa.field("usage_source", pa.string(), metadata={"description": "endpoint: reported by it; counted: counted here"}),
        pa.field(
            "later_questions",
            pa.list_(LATER_QUESTION),
            metadata={"description": "the request's later questions, in order, with their RAG fields (the columns above are the first's)"},
        ),
    ]
)


def row_id(*parts: str) -> str:
    """A stable key for a row that one run writes (run id plus what identifies the row within it), so
    writing the same run's rows again replaces them instead of adding duplicates."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _shape(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    return [(field.name, field.type) for field in schema]


def sql_in(column: str, values: Iterable[str]) -> str:
    quoted = ",".join("'" + value.replace("'", "''") + "'" for value in values)
    return f"{column} IN ({quoted})"


@dataclass(frozen=True)
class WriteResult:
    upserted: int = 0
    deleted: int = 0
    version: int | None = None

    @property
    def wrote(self) -> bool:
        return bool(self.upserted or self.deleted)


class LanceStore:
    """A LanceDB database (local folder or object-store URI) holding one environment's tables."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None) -> None:
        import lancedb

        self.uri = uri
        self.db = lancedb.connect(uri, storage_options=storage_options or None)

    def exists(self, name: str) -> bool:
        return name in self.db.table_names(limit=1000)

    def open(self, name: str) -> Table | None:
        return self.db.open_table(name) if self.exists(name) else None

    def version(self, name: str) -> int | None:
        table = self.open(name)
        return table.version if table is not None else None

    def count(self, name: str) -> int:
        table = self.open(name)
        return table.count_rows() if table is not None else 0

    def read(self, name: str, schema: pa.Schema, columns: list[str] | None = None, where: str | None = None) -> pa.Table:
        table = self.open(name)
        if table is None:
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        query = table.search().limit(None)
        if where:
            query = query.where(where)
        stored = set(table.schema.names)
        if columns:
            query = query.select([name for name in columns if name in stored])
        result = query.to_arrow()
        # A table an older release wrote lacks the newer columns until its next write rewrites it
        # (``_migrate``): they read back null.
        for name in columns or []:
            if name not in stored:
                result = result.append_column(schema.field(name), pa.nulls(result.num_rows, schema.field(name).type))
        return result.select(columns) if columns else result

    def read_keys(self, name: str, schema: pa.Schema, key: str, values: list[str], columns: list[str] | None = None) -> pa.Table:
        """Rows whose ``key`` is in ``values``, fetched in bounded IN-lists."""
        parts = [
            self.read(name, schema, columns, where=sql_in(key, values[start : start + 500]))
            for start in range(0, len(values), 500)
        ]
        if not parts:
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        return pa.concat_tables(parts)

    def _ensure(self, name: str, schema: pa.Schema) -> Table:
        table = self.open(name)
        if table is None:
            table = self.db.create_table(name, schema=schema, exist_ok=True)
        elif _shape(table.schema) != _shape(schema):
            table = self._migrate(name, table, schema)
        return table

    def _migrate(self, name: str, table: Table, schema: pa.Schema) -> Table:
        """Rewrite a table written by an older release in today's schema, in one commit: new columns
        and struct fields start empty (the steps that own them refill them), dropped ones go."""
        rows = table.to_arrow().to_pylist()
        return self.db.create_table(name, pa.Table.from_pylist(rows, schema), mode="overwrite")

    def apply(self, name: str, schema: pa.Schema, key: str, upserts: pa.Table, deletes: list[str]) -> WriteResult:
        """Upsert rows by ``key`` and delete keys; nothing is committed when both are empty."""
        if not upserts.num_rows and not deletes:
            return WriteResult(version=self.version(name))
        table = self._ensure(name, schema)
        deleted = 0
        for start in range(0, len(deletes), 500):
            deleted += table.delete(sql_in(key, deletes[start : start + 500])).num_deleted_rows
        if upserts.num_rows:
            upserts = upserts.select(schema.names).cast(schema)
            table.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(upserts)
        return WriteResult(upserted=upserts.num_rows, deleted=deleted, version=table.version)

    def insert_new(self, name: str, schema: pa.Schema, key: str, rows: pa.Table) -> WriteResult:
        """Add the rows whose ``key`` the table lacks, in one commit, leaving the rows it holds as
        they are; nothing is committed when all are held. ``rows`` must not repeat a key."""
        if not rows.num_rows:
            return WriteResult(version=self.version(name))
        table = self._ensure(name, schema)
        rows = rows.select(schema.names).cast(schema)
        held = set(self.read_keys(name, schema, key, rows.column(key).to_pylist(), [key]).column(key).to_pylist())
        new = rows.filter(pa.array([value not in held for value in rows.column(key).to_pylist()]))
        if not new.num_rows:
            return WriteResult(version=table.version)
        table.merge_insert(key).when_not_matched_insert_all().execute(new)
        return WriteResult(upserted=new.num_rows, version=table.version)

    def append(self, name: str, schema: pa.Schema, rows: pa.Table) -> WriteResult:
        """Add rows in one commit, with no key lookup: for logs, whose rows are written exactly once."""
        if not rows.num_rows:
            return WriteResult(version=self.version(name))
        table = self._ensure(name, schema)
        table.add(rows.select(schema.names).cast(schema))
        return WriteResult(upserted=rows.num_rows, version=table.version)

    def replace(self, name: str, schema: pa.Schema, data: pa.Table) -> WriteResult:
        """Overwrite a table in one commit (used when the embedding model changes)."""
        table = self.db.create_table(name, data.select(schema.names).cast(schema), mode="overwrite")
        return WriteResult(upserted=data.num_rows, version=table.version)


def open_existing(uri: str) -> LanceStore | None:
    """The database at ``uri``, or None when it is a local folder that does not exist yet
    (connecting would create it: reading should leave no trace)."""
    from pathlib import Path

    if "://" not in uri and not Path(uri).is_dir():
        return None
    return LanceStore(uri)
