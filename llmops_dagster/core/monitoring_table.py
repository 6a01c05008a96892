"""The ``monitoring`` and ``unanswered_questions`` Lance tables: what one window of the inference log
and the batch predictions becomes, written per window, and read back.

``compute_window`` reads the rows of one window (and of the drift reference), normalises them with
``core.monitoring``, and gives one table row per served model version and source, carrying the
window's metrics, its drift against the reference (``population_stability_index``, ``js_distance``,
``ks_test`` per column) and the verdict of every threshold. A window without rows gives one row
with ``request_count`` 0. ``write_window`` replaces a window's rows: each row's id is derived from
(window start, version, source), rows are upserted by that id and the window's other rows deleted,
so a re-run, or a run after one killed at any point, leaves exactly one row per id.
A table written before a column existed (the scorers' metrics, ``scorers``, ``scorer_skipped``)
reads back with that column null, and the next write rewrites it in today's schema
(``store.LanceStore``), its old rows kept.

The Dagster assets, ``llmops monitor``, ``llmops status`` and the retraining sensor read the table
through ``read_rows``, ``window_verdicts`` and ``drift_state``. No Dagster here.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmops_dagster.core import monitoring, store
from llmops_dagster.core.monitoring import CheckOutcome, MonitoringConfig
from llmops_dagster.core.scorers import AnswerScorers, ScorersConfig

if TYPE_CHECKING:
    import pandas as pd

MONITORING = "monitoring"
UNANSWERED = "unanswered_questions"
NUMERIC_METRICS = tuple(metric for metric in monitoring.WINDOW_METRICS if metric != "source_shares")
PSI_MAX = "population_stability_index_max"  # the largest PSI over the drift columns: the drift plot's line
PASSED, WARN, ERROR, NO_DATA = "PASSED", "WARN", "ERROR", "NO_DATA"
SCORER_METRICS = tuple(metric for metrics in monitoring.SCORER_METRICS.values() for metric in metrics)
SCORERS_OFF = ScorersConfig().describe()

_UTC = pa.timestamp("us", tz="UTC")
_DRIFT = pa.struct(
    [
        ("column", pa.string()),
        ("population_stability_index", pa.float64()),
        ("js_distance", pa.float64()),
        ("ks_statistic", pa.float64()),
        ("ks_pvalue", pa.float64()),
        ("reference_count", pa.int64()),
        ("current_count", pa.int64()),
    ]
)
_CHECK = pa.struct([("name", pa.string()), ("severity", pa.string()), ("passed", pa.bool_()), ("value", pa.float64()), ("threshold", pa.float64())])
_COUNT = pa.struct([("reason", pa.string()), ("count", pa.int64())])
_SHARE = pa.struct([("document", pa.string()), ("share", pa.float64())])

MONITORING_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False, metadata={"description": "window start, served model version and source"}),
        pa.field("window_key", pa.string(), nullable=False, metadata={"description": "window start, ISO 8601 UTC"}),
        pa.field("window_start", _UTC),
        pa.field("window_end", _UTC),
        pa.field("served_model_version", pa.string(), metadata={"description": "null in an empty window's row"}),
        pa.field("source", pa.string(), metadata={"description": "endpoint (llmops serve) or batch (batch_predictions)"}),
        pa.field("request_count", pa.int64()),
        pa.field("question_count", pa.int64(), metadata={"description": "questions asked: a request may hold several"}),
        *[pa.field(metric, pa.float64()) for metric in NUMERIC_METRICS if metric not in monitoring.COUNT_METRICS],
        pa.field(PSI_MAX, pa.float64(), metadata={"description": "largest population_stability_index over the drift columns"}),
        pa.field("source_shares", pa.list_(_SHARE), metadata={"description": "share of rows citing each document"}),
        pa.field("reference", pa.string(), metadata={"description": "what drift was measured against"}),
        pa.field("drift", pa.list_(_DRIFT), metadata={"description": "per column, named as in Databricks' drift metrics table"}),
        pa.field("checks", pa.list_(_CHECK), metadata={"description": "every threshold's verdict on this row"}),
        pa.field("malformed", pa.list_(_COUNT), metadata={"description": "rows of the window kept out, by reason (the same on each row)"}),
        pa.field("scorers", pa.string(), metadata={"description": "which model-based scorers were on, with their models, or why off"}),
        pa.field("scorer_skipped", pa.list_(_COUNT), metadata={"description": "answers without a score, as scorer.reason"}),
        pa.field("dagster_run_id", pa.string()),
        pa.field("computed_at", _UTC),
    ]
)

UNANSWERED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False, metadata={"description": "window start and group rank"}),
        pa.field("window_key", pa.string(), nullable=False),
        pa.field("window_start", _UTC),
        pa.field("window_end", _UTC),
        pa.field("rank", pa.int32(), metadata={"description": "1 is the largest group"}),
        pa.field("size", pa.int64(), metadata={"description": "questions asked in the group, repeats counted"}),
        pa.field("representative", pa.string(), metadata={"description": "the question nearest the group's centroid"}),
        pa.field("questions", pa.list_(pa.string()), metadata={"description": "distinct questions, most asked first"}),
        pa.field("no_answer", pa.int64(), metadata={"description": "of size: the model found no answer"}),
        pa.field("out_of_corpus", pa.int64(), metadata={"description": "of size: nearest chunk below monitoring.out_of_corpus_floor"}),
        pa.field("top_cosine_mean", pa.float64(), metadata={"description": "mean cosine of the questions' nearest chunk"}),
        pa.field("dagster_run_id", pa.string()),
        pa.field("computed_at", _UTC),
    ]
)

_LOG_COLUMNS = [
    "databricks_request_id",
    "timestamp_ms",
    "status_code",
    "execution_time_ms",
    "served_model_version",
    "endpoint",
    "question",
    "answer",
    "found",
    "chunk_ids",
    "sources",
    "scores",
    "mode",
    "question_tokens",
    "answer_tokens",
    "generator",
    "error",
    "later_questions",
]
_PREDICTION_COLUMNS = [
    "id",
    "dagster_run_id",
    "question",
    "answer",
    "found",
    "passages",
    "sources",
    "scores",
    "model_version",
    "latency_ms",
    "predicted_at",
    "generator",
    "error",
]


# --- reading the sources -----------------------------------------------------------------------


def window_key(start: datetime) -> str:
    return start.astimezone(UTC).isoformat()


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _sql_time(moment: datetime) -> str:
    return "timestamp '" + moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f") + "'"


def _read(lance: store.LanceStore, name: str, columns: list[str], where: str) -> pa.Table | None:
    table = lance.open(name)
    if table is None:
        return None
    present = [column for column in columns if column in table.schema.names]
    return table.search().where(where).select(present).limit(None).to_arrow()


def log_rows(lance: store.LanceStore, begin: datetime, end: datetime) -> pa.Table | None:
    """The inference log's requests in [begin, end), and its undated rows, which belong to no window
    and so are reported as malformed by every window."""
    where = f"(timestamp_ms >= {_ms(begin)} AND timestamp_ms < {_ms(end)}) OR timestamp_ms IS NULL"
    return _read(lance, store.INFERENCE_LOG, _LOG_COLUMNS, where)


def prediction_rows(lance: store.LanceStore, begin: datetime, end: datetime) -> pa.Table | None:
    """Batch predictions made in [begin, end), and the undated ones (see ``log_rows``)."""
    where = f"(predicted_at >= {_sql_time(begin)} AND predicted_at < {_sql_time(end)}) OR predicted_at IS NULL"
    return _read(lance, store.PREDICTIONS, _PREDICTION_COLUMNS, where)


def evaluation_rows(lance: store.LanceStore, version: str) -> pa.Table | None:
    """The latest batch run of ``version`` over the landing zone's questions: the evaluation set as
    that version answered it."""
    quoted = version.replace("'", "''")
    runs = _read(lance, store.PREDICTIONS, ["dagster_run_id", "predicted_at"], f"model_version = '{quoted}'")
    if runs is None or not runs.num_rows:
        return None
    latest = max(runs.to_pylist(), key=lambda row: row["predicted_at"] or datetime.min.replace(tzinfo=UTC))["dagster_run_id"]
    return _read(lance, store.PREDICTIONS, _PREDICTION_COLUMNS, f"model_version = '{quoted}' AND dagster_run_id = '{latest}'")


def first_moment(lance: store.LanceStore, since: datetime | None = None) -> datetime | None:
    """The earliest request or prediction on record (at or after ``since``): where the
    ``first_window`` reference lies, or where to look for it next."""
    moments = []
    log_where = "timestamp_ms IS NOT NULL" + (f" AND timestamp_ms >= {_ms(since)}" if since else "")
    log = _read(lance, store.INFERENCE_LOG, ["timestamp_ms"], log_where)
    if log is not None and log.num_rows:
        moments.append(datetime.fromtimestamp(min(log.column("timestamp_ms").to_pylist()) / 1000, UTC))
    batch_where = "predicted_at IS NOT NULL" + (f" AND predicted_at >= {_sql_time(since)}" if since else "")
    batch = _read(lance, store.PREDICTIONS, ["predicted_at"], batch_where)
    if batch is not None and batch.num_rows:
        moments.append(min(batch.column("predicted_at").to_pylist()).astimezone(UTC))
    return min(moments) if moments else None


def chunk_texts(lance: store.LanceStore, chunk_ids: Iterable[str]) -> dict[str, str]:
    """Chunk id → text for the chunks the logged requests retrieved, so their answers can be judged."""
    wanted = sorted(set(chunk_ids))
    if not wanted or not lance.exists(store.CHUNKS):
        return {}
    rows = lance.read_keys(store.CHUNKS, store.CHUNKS_SCHEMA, "id", wanted, ["id", "text"])
    return dict(zip(rows.column("id").to_pylist(), rows.column("text").to_pylist(), strict=True))


def corpus_vectors(lance: store.LanceStore) -> np.ndarray | None:
    """The index's chunk vectors, or None without an index."""
    table = lance.open(store.EMBEDDINGS)
    if table is None:
        return None
    vectors = table.search().select(["vector"]).limit(None).to_arrow().column("vector")
    if not len(vectors):
        return None
    return np.asarray(vectors.combine_chunks().flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(vectors), -1)


# --- one window --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scoring:
    """What a window needs besides the tables: the embedding model's ``encode`` and token counter,
    the corpus' vectors and the model-based scorers. Without them, query drift, the questions'
    nearest-chunk cosine, the batch rows' token counts and the scorers' metrics are null."""

    encode: Callable[[list[str]], np.ndarray] | None = None
    count_tokens: Callable[[str], int] | None = None
    corpus: np.ndarray | None = None
    scorers: AnswerScorers | None = None

    @property
    def compares_with_corpus(self) -> bool:
        return self.encode is not None and self.corpus is not None and len(self.corpus) > 0

    @property
    def scorers_description(self) -> str:
        return self.scorers.config.describe() if self.scorers is not None else SCORERS_OFF


def frame_between(lance: store.LanceStore, begin: datetime, end: datetime, scoring: Scoring) -> tuple[pd.DataFrame, dict[str, int]]:
    """The window's requests and predictions as one normalised frame (with question vectors when the
    scoring has a model and a corpus), and its malformed rows counted by reason."""
    log = log_rows(lance, begin, end)
    retrieved = log.column("chunk_ids").to_pylist() if log is not None and "chunk_ids" in log.column_names else []
    ids = [chunk for chunks in retrieved for chunk in chunks or []]
    if log is not None and "later_questions" in log.column_names:  # in Arrow: normalise_rows reads the rows into Python once
        later = pc.struct_field(pc.list_flatten(log.column("later_questions")), "chunk_ids")
        ids += pc.list_flatten(later).to_pylist()
    frame, problems = monitoring.normalise_rows(
        log, prediction_rows(lance, begin, end), chunk_texts=chunk_texts(lance, ids), count_tokens=scoring.count_tokens
    )
    return _with_vectors(frame, scoring), problems


def _with_vectors(frame: pd.DataFrame, scoring: Scoring) -> pd.DataFrame:
    """The frame with question vectors (when there are a model and a corpus) and answer scores
    (when scorers are configured)."""
    if frame.empty:
        return frame
    if scoring.compares_with_corpus:
        frame = monitoring.attach_question_vectors(frame, scoring.encode, scoring.corpus)
    if scoring.scorers is not None:
        frame = monitoring.attach_answer_scores(frame, scoring.scorers)
    return frame


class _LazyModel:
    """An embedding model loaded on first use: an empty window never loads it."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._model: Any = None

    def _get(self) -> Any:
        if self._model is None:
            self._model = self._load()
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._get().encode(texts)

    def count_tokens(self, text: str) -> int:
        return len(self._get().tokenizer(text, add_special_tokens=False)["input_ids"])


def lazy_scoring(lance: store.LanceStore, load_embedder: Callable[[], Any], scorers: ScorersConfig | None = None) -> Scoring:
    """Scoring with the index's embedding model (``load_embedder`` is called at most once, and only
    when a window has questions) and the index's vectors: questions meet the corpus as vector
    search meets them. The configured ``scorers`` load their models only when a window has answers."""
    model = _LazyModel(load_embedder)
    answer_scorers = AnswerScorers(scorers) if scorers is not None and scorers.configured else None
    return Scoring(encode=model.encode, count_tokens=model.count_tokens, corpus=corpus_vectors(lance), scorers=answer_scorers)


@dataclass
class Reference:
    """What drift is measured against: the rows, per source, and a description; ``by_version``
    holds the evaluation reference of each served version."""

    description: str
    frame: pd.DataFrame | None = None
    by_version: dict[str, pd.DataFrame | None] = field(default_factory=dict)

    def rows_for(self, version: str | None, source: str) -> pd.DataFrame | None:
        frame = self.by_version.get(version or "") if self.by_version or self.frame is None else self.frame
        if frame is None or frame.empty:
            return None
        same = frame[frame["source"] == source]
        return same if not same.empty else frame


def load_reference(
    lance: store.LanceStore,
    config: MonitoringConfig,
    scoring: Scoring,
    versions: Iterable[str | None],
    current: tuple[datetime, datetime] | None = None,
) -> Reference:
    """The configured reference (see ``monitoring.reference_rows``) read from the tables; none for
    the ``current`` window when the reference holds it."""
    if config.reference == "evaluation":
        frames = {}
        for version in sorted({v for v in versions if v}):
            frame, _ = monitoring.normalise_rows(None, evaluation_rows(lance, version), count_tokens=scoring.count_tokens)
            frames[version] = _with_vectors(frame, scoring) if not frame.empty else None
        return Reference("the evaluation set as each served version answered it in its latest batch run", by_version=frames)
    if config.reference == "first_window":
        return first_window_reference(lance, config, scoring, current)
    begin, end = config.reference_start, config.reference_end
    description = f"fixed window {begin.isoformat()} – {end.isoformat()}"
    if _holds(begin, end, current):
        return Reference(f"{description}, which holds this window: no drift is measured in it")
    frame, _ = frame_between(lance, begin, end, scoring)
    return Reference(f"{description} ({len(frame)} rows)", frame=frame)


def _holds(begin: datetime, end: datetime, current: tuple[datetime, datetime] | None) -> bool:
    """Whether the reference [begin, end) overlaps the window judged: judged against itself, or a
    range that holds it, a window's drift would only say how alike its parts are."""
    return current is not None and current[0] < end and begin < current[1]


def first_window_reference(
    lance: store.LanceStore, config: MonitoringConfig, scoring: Scoring, current: tuple[datetime, datetime] | None
) -> Reference:
    """The first window with rows that can be read: a window of malformed rows only (a client that
    logged no status codes) would leave the reference empty, and drift unmeasured for good."""
    moment = first_moment(lance)
    while moment is not None:
        begin = monitoring.window_floor(moment, config.window_length)
        end = begin + config.window_length
        description = f"first window {begin.isoformat()}"
        if _holds(begin, end, current):
            return Reference(f"{description}, which holds this window: no drift is measured in it")
        if current is not None and begin >= current[1]:
            break  # later than the window judged: not a reference it could have had
        frame, _ = frame_between(lance, begin, end, scoring)
        if not frame.empty:
            return Reference(f"{description} ({len(frame)} rows)", frame=frame)
        moment = first_moment(lance, since=end)
    return Reference("first window: none with rows that can be read yet")


@dataclass
class WindowReport:
    """One window's table rows, its normalised frame and its malformed rows by reason."""

    start: datetime
    end: datetime
    rows: list[dict[str, Any]]
    frame: pd.DataFrame
    problems: dict[str, int]
    reference: str


def compute_window(
    lance: store.LanceStore, begin: datetime, end: datetime, config: MonitoringConfig, scoring: Scoring, run_id: str = ""
) -> WindowReport:
    """One window's rows for the ``monitoring`` table: metrics per (served model version, source),
    drift against the reference and every threshold's verdict."""
    frame, problems = frame_between(lance, begin, end, scoring)
    centroid = monitoring.corpus_centroid(scoring.corpus) if scoring.compares_with_corpus else None
    metric_rows = monitoring.window_metrics(frame, begin, end, config, centroid)
    versions = [row["served_model_version"] for row in metric_rows]
    reference = load_reference(lance, config, scoring, versions, (begin, end)) if len(frame) else None
    computed_at = datetime.now(UTC)
    rows = []
    for metrics in metric_rows:
        drift: dict[str, dict[str, Any]] = {}
        if metrics["request_count"] and reference is not None:
            before = reference.rows_for(metrics["served_model_version"], metrics["source"])
            current = None if before is None else _not_in(_slice(frame, metrics["served_model_version"], metrics["source"]), before)
            if current is not None and not current.empty:
                drift = monitoring.column_drift(
                    before, current, config.drift_bins, config.drift_min_count, config.drift_columns, config.psi_min_count
                )
        outcomes = monitoring.evaluate_thresholds(metrics, drift, config)
        described = reference.description if reference else "none: no rows"
        rows.append(_table_row(metrics, drift, outcomes, problems, described, run_id, computed_at, scoring.scorers_description))
    return WindowReport(begin, end, rows, frame, problems, reference.description if reference else "none: no rows in this window")


def _not_in(current: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``current`` that are not rows of ``reference`` (by source and request id): the
    batch run an ``evaluation`` reference is made of falls in a window too, and judged against
    itself it would show no drift whatever happened."""
    held = set(zip(reference["source"], reference["request_id"], strict=True))
    pairs = zip(current["source"], current["request_id"], strict=True)
    return current[[request is None or (source, request) not in held for source, request in pairs]]


def _slice(frame: pd.DataFrame, version: str | None, source: str) -> pd.DataFrame:
    versions = frame["served_model_version"].map(lambda v: "" if v is None else str(v))
    return frame[(versions == (version or "")) & (frame["source"] == source)]


def _number(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _table_row(
    metrics: Mapping[str, Any],
    drift: Mapping[str, Mapping[str, Any]],
    outcomes: Sequence[CheckOutcome],
    problems: Mapping[str, int],
    reference: str,
    run_id: str,
    computed_at: datetime,
    scorers: str = SCORERS_OFF,
) -> dict[str, Any]:
    start = metrics["window_start"]
    drift_rows = []
    for column, statistics in drift.items():
        ks = statistics.get("ks_test") or {}
        drift_rows.append(
            {
                "column": column,
                "population_stability_index": _number(statistics.get("population_stability_index")),
                "js_distance": _number(statistics.get("js_distance")),
                "ks_statistic": _number(ks.get("statistic")),
                "ks_pvalue": _number(ks.get("pvalue")),
                "reference_count": statistics.get("reference_count"),
                "current_count": statistics.get("current_count"),
            }
        )
    psi = [row["population_stability_index"] for row in drift_rows if row["population_stability_index"] is not None]
    return {
        "id": store.row_id(window_key(start), metrics["served_model_version"] or "", metrics["source"] or ""),
        "window_key": window_key(start),
        "window_start": start,
        "window_end": metrics["window_end"],
        "served_model_version": metrics["served_model_version"],
        "source": metrics["source"],
        **{metric: (int(metrics[metric]) if metric in monitoring.COUNT_METRICS else _number(metrics[metric])) for metric in NUMERIC_METRICS},
        PSI_MAX: max(psi) if psi else None,
        "source_shares": [{"document": doc, "share": share} for doc, share in (metrics.get("source_shares") or {}).items()],
        "reference": reference,
        "drift": drift_rows,
        "checks": [{"name": o.name, "severity": o.severity, "passed": o.passed, "value": o.value, "threshold": o.threshold} for o in outcomes],
        "malformed": [{"reason": reason, "count": count} for reason, count in problems.items()],
        "scorers": scorers,
        "scorer_skipped": [{"reason": reason, "count": count} for reason, count in (metrics.get("scorer_skipped") or {}).items()],
        "dagster_run_id": run_id,
        "computed_at": computed_at,
    }


# --- writing and reading the table -------------------------------------------------------------


def _window_ids(lance: store.LanceStore, name: str, schema: pa.Schema, key: str) -> list[str]:
    if not lance.exists(name):
        return []
    return lance.read(name, schema, ["id"], where=f"window_key = '{key}'").column("id").to_pylist()


def _replace_window(lance: store.LanceStore, name: str, schema: pa.Schema, key: str, rows: list[dict[str, Any]]) -> store.WriteResult:
    """Upsert the window's rows by id and delete its rows that are no longer there. A run killed
    between the two commits leaves rows that the next run replaces: never two rows with one id."""
    new_ids = {row["id"] for row in rows}
    stale = [row_id for row_id in _window_ids(lance, name, schema, key) if row_id not in new_ids]
    return lance.apply(name, schema, "id", pa.Table.from_pylist(rows, schema), stale)


def write_window(lance: store.LanceStore, report: WindowReport) -> store.WriteResult:
    return _replace_window(lance, MONITORING, MONITORING_SCHEMA, window_key(report.start), report.rows)


def read_rows(lance: store.LanceStore, since: datetime | None = None, until: datetime | None = None) -> list[dict[str, Any]]:
    """The table's rows with ``since <= window_start < until``, oldest window first."""
    if not lance.exists(MONITORING):
        return []
    conditions = []
    if since is not None:
        conditions.append(f"window_start >= {_sql_time(since)}")
    if until is not None:
        conditions.append(f"window_start < {_sql_time(until)}")
    table = lance.read(MONITORING, MONITORING_SCHEMA, where=" AND ".join(conditions) or None)
    rows = table.to_pylist()
    for row in rows:  # a table an older release wrote lacks the newer columns until the next write rewrites it
        for name in MONITORING_SCHEMA.names:
            row.setdefault(name, None)
    return sorted(rows, key=lambda row: (row["window_start"], row["served_model_version"] or "", row["source"] or ""))


def computed_at_by_window(lance: store.LanceStore) -> dict[str, datetime]:
    """Window key → when its rows were last computed."""
    if not lance.exists(MONITORING):
        return {}
    table = lance.read(MONITORING, MONITORING_SCHEMA, ["window_key", "computed_at"])
    latest: dict[str, datetime] = {}
    for key, moment in zip(table.column("window_key").to_pylist(), table.column("computed_at").to_pylist(), strict=True):
        if moment is not None and (key not in latest or moment > latest[key]):
            latest[key] = moment
    return latest


def log_timestamps(lance: store.LanceStore, after_ms: int | None = None) -> tuple[int, list[int]]:
    """(the inference log's table version, its request times after ``after_ms``, epoch ms)."""
    table = lance.open(store.INFERENCE_LOG)
    if table is None:
        return 0, []
    query = table.search().select(["timestamp_ms"]).limit(None)
    query = query.where("timestamp_ms IS NOT NULL" if after_ms is None else f"timestamp_ms > {int(after_ms)}")
    return table.version, [stamp for stamp in query.to_arrow().column("timestamp_ms").to_pylist() if stamp is not None]


# --- verdicts and drift state ------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One check over a window's rows: the worst row decides."""

    name: str
    status: str  # PASSED, WARN, ERROR or NO_DATA
    severity: str  # the severity the check fails with (or would first fail with)
    value: float | None
    threshold: float | None
    slice: str  # the row that decided, "v3 endpoint"
    description: str

    @property
    def passed(self) -> bool:
        return self.status in (PASSED, NO_DATA)


def _slice_name(row: Mapping[str, Any]) -> str:
    version = f"v{row['served_model_version']}" if row.get("served_model_version") else "no version"
    return f"{version} {row.get('source') or 'no source'}"


def window_verdicts(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[Verdict]:
    """Every check named in ``names`` over one window's rows. A check with no value on any row (an
    empty window, a source that does not record the metric, too few rows for drift) passes as
    NO_DATA, saying so."""
    rank = {ERROR: 2, WARN: 1}
    verdicts = []
    for name in names:
        judged = [(row, check) for row in rows for check in row.get("checks") or [] if check["name"] == name]
        valued = [(row, check) for row, check in judged if check["value"] is not None]
        if not valued:
            severity = judged[0][1]["severity"] if judged else WARN
            count = sum(int(row.get("request_count") or 0) for row in rows)
            description = f"no value in this window ({count} requests and batch predictions): nothing to judge"
            verdicts.append(Verdict(name, NO_DATA, severity, None, judged[0][1]["threshold"] if judged else None, "", description))
            continue
        failed = [(row, check) for row, check in valued if not check["passed"]]
        if failed:
            row, check = max(failed, key=lambda item: (rank.get(item[1]["severity"], 0), abs(item[1]["value"] - item[1]["threshold"])))
            level = f"{check['severity']} level {check['threshold']:g}"
            description = f"{check['severity']}: {name} {check['value']:.4g} crossed the {level} ({_slice_name(row)})"
            verdicts.append(Verdict(name, check["severity"], check["severity"], check["value"], check["threshold"], _slice_name(row), description))
            continue
        row, check = max(valued, key=lambda item: -abs(item[1]["value"] - item[1]["threshold"]))
        description = f"passed: {name} {check['value']:.4g} within {check['severity']} level {check['threshold']:g} ({_slice_name(row)})"
        verdicts.append(Verdict(name, PASSED, check["severity"], check["value"], check["threshold"], _slice_name(row), description))
    return verdicts


def check_names_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(check["name"] for row in rows for check in row.get("checks") or []))


def by_window(rows: Iterable[Mapping[str, Any]]) -> dict[datetime, list[Mapping[str, Any]]]:
    windows: dict[datetime, list[Mapping[str, Any]]] = {}
    for row in rows:
        windows.setdefault(row["window_start"], []).append(row)
    return dict(sorted(windows.items()))


def drift_state(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The drift state of the latest window that had requests: ERROR, WARN or OK by the worst
    failing drift check (``monitoring.is_drift_check``), with every failing check of that window;
    NO_DATA where no drift check of it had a value to judge (too few rows, a window the reference
    holds), since drift that was not measured is not OK."""
    windows = [(start, members) for start, members in by_window(rows).items() if any(row.get("request_count") for row in members)]
    if not windows:
        return {"state": NO_DATA, "window_start": None, "requests": 0, "failing": [], "drift_failing": [], "drift_error": []}
    start, members = windows[-1]
    judged = window_verdicts(members, check_names_of(members))
    verdicts = [verdict for verdict in judged if not verdict.passed]
    drifting = [verdict for verdict in verdicts if monitoring.is_drift_check(verdict.name)]
    measured = any(verdict.status == PASSED and monitoring.is_drift_check(verdict.name) for verdict in judged)
    state = ERROR if any(v.status == ERROR for v in drifting) else WARN if drifting else "OK" if measured else NO_DATA
    return {
        "state": state,
        "window_start": start.isoformat(),
        "requests": sum(int(row.get("request_count") or 0) for row in members),
        "failing": [verdict.description for verdict in verdicts],
        "drift_failing": [verdict.name for verdict in drifting],
        "drift_error": [verdict.name for verdict in drifting if verdict.status == ERROR],
    }


# --- unanswered questions ----------------------------------------------------------------------


def unanswered_groups(frame: pd.DataFrame, config: MonitoringConfig) -> list[dict[str, Any]]:
    """Questions that got no answer or whose nearest chunk is below the out-of-corpus floor, grouped
    by meaning (``monitoring.group_unanswered``), largest group first; each group counts why its
    questions are in it."""
    if frame.empty or "question_vector" not in frame:
        return []
    values = monitoring.row_values(frame)
    picked: list[tuple[str, np.ndarray, bool, float | None]] = []
    for position, row in enumerate(frame.itertuples(index=False)):
        vector, question = row.question_vector, row.question
        if not isinstance(vector, np.ndarray) or not isinstance(question, str):
            continue
        cosine = _number(row.question_top_cosine)
        no_answer = values["no_answer"].iloc[position] is True
        if no_answer or (cosine is not None and cosine < config.out_of_corpus_floor):
            picked.append((question, vector, no_answer, cosine))
    if not picked:
        return []
    groups = monitoring.group_unanswered([p[0] for p in picked], np.stack([p[1] for p in picked]), config.unanswered_distance)
    for group in groups:
        members = [p for p in picked if p[0] in set(group["questions"])]
        cosines = [p[3] for p in members if p[3] is not None]
        group["no_answer"] = sum(1 for p in members if p[2])
        group["out_of_corpus"] = sum(1 for p in members if p[3] is not None and p[3] < config.out_of_corpus_floor)
        group["top_cosine_mean"] = float(np.mean(cosines)) if cosines else None
    return groups


def write_unanswered(
    lance: store.LanceStore, begin: datetime, end: datetime, groups: Sequence[Mapping[str, Any]], run_id: str = ""
) -> store.WriteResult:
    key, now = window_key(begin), datetime.now(UTC)
    rows = [
        {
            "id": store.row_id(key, str(rank)),
            "window_key": key,
            "window_start": begin,
            "window_end": end,
            "rank": rank,
            "size": group["size"],
            "representative": group["representative"],
            "questions": list(group["questions"]),
            "no_answer": group["no_answer"],
            "out_of_corpus": group["out_of_corpus"],
            "top_cosine_mean": group["top_cosine_mean"],
            "dagster_run_id": run_id,
            "computed_at": now,
        }
        for rank, group in enumerate(groups, start=1)
    ]
    return _replace_window(lance, UNANSWERED, UNANSWERED_SCHEMA, key, rows)


# --- plots and summary -------------------------------------------------------------------------

PLOTTED = (*(metric for metric in NUMERIC_METRICS if metric not in SCORER_METRICS), PSI_MAX)  # with no scorer configured


def plotted(config: MonitoringConfig) -> tuple[str, ...]:
    """``PLOTTED`` and the metrics of the configured scorers."""
    scored = [metric for name in config.scorers.configured for metric in monitoring.SCORER_METRICS[name]]
    return (*PLOTTED[:-1], *scored, PLOTTED[-1])


_PSI_METRIC = "population_stability_index"


def threshold_levels(config: MonitoringConfig, metric: str) -> dict[str, float] | None:
    """The WARN/ERROR levels drawn on a metric's plot (the unscoped PSI levels on the PSI plot)."""
    wanted = _PSI_METRIC if metric == PSI_MAX else metric
    for threshold in config.thresholds:
        if threshold.metric == wanted:
            return {name: level for name, level in ((WARN, threshold.warn), (ERROR, threshold.error)) if level is not None}
    return None


def plot_windows(last_start: datetime, config: MonitoringConfig, length: timedelta | None = None) -> list[datetime]:
    """The starts of the ``plot_windows`` windows ending with the one starting at ``last_start``."""
    length = length or config.window_length
    return [last_start - length * back for back in reversed(range(config.plot_windows))]


def metric_plots(rows: Sequence[Mapping[str, Any]], starts: Sequence[datetime], config: MonitoringConfig) -> list[tuple[str, bytes]]:
    """(metric, PNG) for every plotted metric over the given windows, a line per source (the
    endpoint's requests and the batch predictions are two populations); windows without rows are gaps.
    The PNGs are re-encoded on a 24-colour palette: a quarter of the size, so that the asset's
    metadata stays small, with the same lines and colours."""
    from llmops_dagster.core.plots import metric_plot

    wanted = set(starts)
    shown = [row for row in [*rows, *({"window_start": start, "source": None, "served_model_version": None} for start in starts)]
             if row["window_start"] in wanted]
    sources = [source for source in monitoring.SOURCES if any(row["source"] == source for row in shown)]
    plots = []
    for metric in plotted(config):
        title = "largest population_stability_index over the drift columns" if metric == PSI_MAX else metric
        lines = {source: monitoring.metric_series(shown, metric, source=source)[1] for source in sources}
        values = lines or monitoring.metric_series(shown, metric)[1]  # no rows at all: one line of gaps
        plots.append((metric, _palette_png(metric_plot(sorted(wanted), values, title, threshold_levels(config, metric)))))
    return plots


def _palette_png(png: bytes, colours: int = 24) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colours, method=Image.Quantize.FASTOCTREE).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def plots_markdown(plots: Sequence[tuple[str, bytes]]) -> str:
    """The plots as markdown images with base64 data URIs: what the Dagster UI renders."""
    import base64

    return "\n\n".join(f"![{metric}](data:image/png;base64,{base64.b64encode(png).decode()})" for metric, png in plots)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"


def _counts(row: Mapping[str, Any]) -> str:
    """A slice's rows, and its questions where requests of several questions made them more."""
    requests, questions = int(row["request_count"]), row.get("question_count")
    return f"{requests} ({int(questions)})" if questions and int(questions) != requests else str(requests)


def summary_markdown(
    start: datetime,
    end: datetime,
    rows: Sequence[Mapping[str, Any]],
    verdicts: Sequence[Verdict],
    *,
    note: str = "",
) -> str:
    """One window in a few lines: requests, a table of the slices, the failing checks, drift, malformed rows."""
    requests = sum(int(row.get("request_count") or 0) for row in rows)
    problems = {entry["reason"]: entry["count"] for row in rows[:1] for entry in row.get("malformed") or []}
    lines = [f"**{start.isoformat()} – {end.isoformat()}**{note}: **{requests}** request(s) and prediction(s)."]
    scored = [metric for metric in ("toxicity_mean", "toxicity_max", "perplexity_p50") if any(row.get(metric) is not None for row in rows)]
    if requests:
        lines += [
            "",
            "| version | source | rows (questions) | errors 5xx / 4xx | latency p50 / p95 ms | no answer | generation errors | groundedness | "
            "top-1 score | out of corpus | query drift | largest PSI | FK grade |" + "".join(f" {metric} |" for metric in scored),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(scored),
        ]
        for row in rows:
            if not row.get("request_count"):
                continue
            lines.append(
                f"| {row.get('served_model_version') or '–'} | {row.get('source')} | {_counts(row)} | "
                f"{_fmt(row['error_rate'])} / {_fmt(row.get('client_error_rate'))} | "
                f"{_fmt(row['latency_p50_ms'])} / {_fmt(row['latency_p95_ms'])} | {_fmt(row['no_answer_rate'])} | "
                f"{_fmt(row.get('generation_error_rate'))} | "
                f"{_fmt(row['groundedness_mean'])} | {_fmt(row['top1_score_mean'])} | {_fmt(row['out_of_corpus_rate'])} | "
                f"{_fmt(row['query_drift'])} | {_fmt(row[PSI_MAX])} | {_fmt(row['flesch_kincaid_grade'])} |"
                + "".join(f" {_fmt(row.get(metric))} |" for metric in scored)
            )
        lines += ["", f"Drift reference: {rows[0].get('reference')}."]
    else:
        lines.append("An empty window: no requests and no predictions, so every check passes with nothing to judge.")
    failing = [verdict for verdict in verdicts if not verdict.passed]
    passing = [verdict for verdict in verdicts if verdict.status == PASSED]
    no_data = [verdict for verdict in verdicts if verdict.status == NO_DATA]
    lines.append("")
    if failing:
        ordered = sorted(failing, key=lambda verdict: verdict.status != ERROR)
        lines.append(f"Checks failing ({len(failing)}): " + "; ".join(f"**{verdict.description}**" for verdict in ordered) + ".")
    lines.append(f"Checks passing: {len(passing)}; without data: {len(no_data)}.")
    state = drift_state(rows)
    lines.append(f"Drift state: **{state['state']}**" + (f" ({', '.join(state['drift_failing'])})" if state["drift_failing"] else "") + ".")
    if problems:
        lines.append("Malformed rows kept out: " + ", ".join(f"{reason} {count}" for reason, count in sorted(problems.items())) + ".")
    else:
        lines.append("Malformed rows kept out: none.")
    shares = _top_shares(rows)
    if shares:
        lines.append("Most cited documents: " + ", ".join(f"{doc} {share:.2f}" for doc, share in shares) + ".")
    lines.append(f"Model-based scorers: {next((row['scorers'] for row in rows if row.get('scorers')), SCORERS_OFF)}.")
    skipped = scorer_skipped(rows)
    if skipped:
        lines.append("Answers without a score: " + ", ".join(f"{reason} {count}" for reason, count in skipped.items()) + ".")
    return "\n".join(lines)


def scorer_skipped(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The window's answers without a score, over its rows, as ``"<scorer>.<reason>"`` → count."""
    counts: dict[str, int] = {}
    for row in rows:
        for entry in row.get("scorer_skipped") or []:
            counts[entry["reason"]] = counts.get(entry["reason"], 0) + int(entry["count"])
    return dict(sorted(counts.items()))


def _top_shares(rows: Sequence[Mapping[str, Any]], n: int = 5) -> list[tuple[str, float]]:
    weighted: dict[str, float] = {}
    total = 0
    for row in rows:
        count = int(row.get("request_count") or 0)
        total += count if row.get("source_shares") else 0
        for entry in row.get("source_shares") or []:
            weighted[entry["document"]] = weighted.get(entry["document"], 0.0) + entry["share"] * count
    return sorted(((doc, value / total) for doc, value in weighted.items()), key=lambda item: -item[1])[:n] if total else []


def as_json(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Table rows as JSON-ready dicts (times as ISO strings)."""
    return json.loads(json.dumps(list(rows), default=lambda value: value.isoformat() if isinstance(value, datetime) else str(value)))
