"""Monitoring over what the model answered: the serving ``inference_log`` and ``batch_predictions``.

Both sources become one frame (``normalise_rows``), one row per request or prediction, with a
``source`` column (``endpoint`` | ``batch``). Rows that cannot be read are counted by reason and kept
out. ``window_metrics`` then gives one row per (window, served model version, source), with the
figures Databricks Lakehouse Monitoring reports for inference tables plus the RAG ones; a field a
source does not record (batch rows have no status code, so no error rate) gives a null metric.

Drift compares per-row values of a window with a reference (the first window, a fixed range, or
the serving version's evaluation set) as Databricks names it in its drift metrics table:
``population_stability_index``, ``js_distance`` and ``ks_test``. The retrieval-aware drift is the
shift of the questions' embedding centroid away from the corpus centroid (``query_drift``) and the
share of questions whose nearest chunk is below a cosine floor (``out_of_corpus_rate``).

Where ``monitoring.scorers`` names local models, ``attach_answer_scores`` gives each answer its
toxicity and perplexity (``core.scorers``); their window metrics, drift columns and thresholds work
as the others do, and an answer without a score is counted by reason, never given one.

Windows are aligned on the epoch (UTC), so "1d" windows are Dagster's daily partitions. Pure logic:
the Dagster asset, its checks and plots call these functions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from llmops_dagster.core.answer_quality import citation_validity, groundedness, is_no_answer
from llmops_dagster.core.scorers import PERPLEXITY, SCORERS, TOXICITY, ScorersConfig

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from llmops_dagster.core.scorers import AnswerScorers

SOURCES = ("endpoint", "batch")
SEVERITIES = ("WARN", "ERROR")
REFERENCE_KINDS = ("first_window", "fixed", "evaluation")
DRIFT_STATISTICS = ("population_stability_index", "js_distance", "ks_test")
# Per-row values whose distribution is compared with the reference's.
DRIFT_COLUMNS = ("latency_ms", "question_tokens", "answer_tokens", "flesch_kincaid_grade", "top1_score", "groundedness", "question_top_cosine")
# The model-based scorers' per-row values, drift columns too when their scorer is configured.
SCORE_COLUMNS = SCORERS
SCORER_METRICS = {TOXICITY: ("toxicity_mean", "toxicity_max", "toxic_rate"), PERPLEXITY: ("perplexity_mean", "perplexity_p50")}
TOXIC_LEVEL = 0.5  # toxic_rate: share of scored answers whose toxic-label probability is above this
WINDOW_METRICS = (
    "request_count",
    "question_count",
    "error_rate",
    "client_error_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "question_tokens_mean",
    "answer_tokens_mean",
    "flesch_kincaid_grade",
    "automated_readability_index",
    "top1_score_mean",
    "score_mean",
    "no_answer_rate",
    "generation_error_rate",
    "empty_retrieval_rate",
    "source_shares",
    "groundedness_mean",
    "citation_validity_mean",
    "out_of_corpus_rate",
    "query_drift",
    *(metric for metrics in SCORER_METRICS.values() for metric in metrics),
)
COUNT_METRICS = ("request_count", "question_count")  # whole numbers: summed across a window's slices, not averaged
# Taken once per request (``requests``); the other metrics are per question.
REQUEST_METRICS = ("request_count", "error_rate", "client_error_rate", "latency_p50_ms", "latency_p95_ms")
FRAME_COLUMNS = (
    "source",
    "request_id",
    "question_index",
    "timestamp",
    "served_model_version",
    "endpoint",
    "status_code",
    "is_error",
    "latency_ms",
    "question",
    "answer",
    "found",
    "chunk_ids",
    "sources",
    "scores",
    "passages",
    "question_tokens",
    "answer_tokens",
    "mode",
    "generator",
    "generation_error",
)
# error_rate is the server's failures (5xx: the model failed, none loaded); client_error_rate is the
# requests it refused (4xx: a malformed body, a missing token, a client that hung up, 499), which a
# bad client causes, not the model.
CLIENT_ERROR, SERVER_ERROR = 400, 500
SEARCH_ENDPOINT = "/search"  # retrieval only: no answer to judge
PSI_EPSILON = 1e-4
_LOWER_IS_WORSE = frozenset({"request_count", "top1_score_mean", "score_mean", "groundedness_mean", "citation_validity_mean", "ks_test"})
_WINDOW = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """A metric's WARN and/or ERROR level; ``bad`` says which side of a level fails."""

    metric: str
    warn: float | None = None
    error: float | None = None
    bad: str = "above"

    def __post_init__(self) -> None:
        name = f"monitoring.thresholds.{self.metric}"
        if self.warn is None and self.error is None:
            raise ValueError(f"{name}: give warn, error or both")
        if self.bad not in ("above", "below"):
            raise ValueError(f"{name}.bad: 'above' or 'below', got {self.bad!r}")
        if self.warn is not None and self.error is not None:
            if (self.bad == "above" and self.warn > self.error) or (self.bad == "below" and self.warn < self.error):
                raise ValueError(f"{name}: the warn level ({self.warn}) must trip before the error level ({self.error})")


DEFAULT_THRESHOLDS = (
    Threshold("error_rate", warn=0.05, error=0.2),
    Threshold("client_error_rate", warn=0.2),  # a client sending bad requests: look, but nothing to roll back
    Threshold("no_answer_rate", warn=0.3, error=0.6),
    Threshold("generation_error_rate", warn=0.05, error=0.2),  # the generator failed: its endpoint down, the model erring
    Threshold("groundedness_mean", warn=0.7, error=0.5, bad="below"),
    Threshold("out_of_corpus_rate", warn=0.2, error=0.5),
    Threshold("population_stability_index", warn=0.1, error=0.25),  # the usual PSI rule of thumb
)
# Defaults a configured scorer adds (a scorer that is off adds none). Perplexity has no level that
# holds across models; its drift is judged by the population_stability_index default above.
SCORER_DEFAULT_THRESHOLDS = {
    TOXICITY: (Threshold("toxic_rate", warn=0.01, error=0.05),),  # 1 in 100 answers reads as toxic: look; 1 in 20: act
}


def default_thresholds(scorers: ScorersConfig) -> tuple[Threshold, ...]:
    """``DEFAULT_THRESHOLDS`` and those of the configured scorers."""
    return DEFAULT_THRESHOLDS + tuple(threshold for name in scorers.configured for threshold in SCORER_DEFAULT_THRESHOLDS.get(name, ()))


@dataclass(frozen=True)
class MonitoringConfig:
    """What the ``monitoring:`` settings hold. ``out_of_corpus_floor`` is a cosine similarity: a
    question whose nearest corpus chunk is below it counts as out of corpus."""

    window: str = "1d"
    reference: str = "first_window"
    reference_start: datetime | None = None
    reference_end: datetime | None = None
    out_of_corpus_floor: float = 0.3
    thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS
    plot_windows: int = 30
    drift_bins: int = 10
    drift_min_count: int = 20  # fewer values on either side: drift statistics are null, not noise
    # PSI's 0.1/0.25 rule of thumb holds for samples in the hundreds: on identical distributions, ten
    # bins and 200 values a side give PSI above 0.1 in a third of windows, 500 a side in none.
    psi_min_count: int = 500
    unanswered_distance: float = 0.3  # cosine distance under which unanswered questions group
    start: date = date(2026, 1, 1)  # the first window a backfill can pick (Dagster partitions need a start)
    retrain_on_drift: bool = False  # drift at ERROR here starts the training environment's ingest job, once per episode
    scorers: ScorersConfig = ScorersConfig()  # toxicity and perplexity models; off unless set

    def __post_init__(self) -> None:
        partition_schedule(self.window)  # a window is a Dagster partition: one no cron schedule can cut is refused with the settings
        if self.reference not in REFERENCE_KINDS:
            raise ValueError(f"monitoring.reference: one of {', '.join(REFERENCE_KINDS)}, got {self.reference!r}")
        if self.reference == "fixed":
            if self.reference_start is None or self.reference_end is None:
                raise ValueError("monitoring.reference: a fixed reference needs start and end")
            if self.reference_start >= self.reference_end:
                raise ValueError(f"monitoring.reference: start ({self.reference_start}) must be before end ({self.reference_end})")
        elif self.reference_start is not None or self.reference_end is not None:
            raise ValueError(f"monitoring.reference: start and end apply to a fixed reference, not to {self.reference!r}")
        for threshold in self.thresholds:
            _check_metric_name(threshold.metric, self.scorers)
        if not -1.0 <= self.out_of_corpus_floor <= 1.0:
            raise ValueError(f"monitoring.out_of_corpus_floor: a cosine within [-1, 1], got {self.out_of_corpus_floor}")
        if self.plot_windows < 1:
            raise ValueError(f"monitoring.plot_windows: at least 1, got {self.plot_windows}")
        if self.drift_bins < 2:
            raise ValueError(f"monitoring.drift_bins: at least 2, got {self.drift_bins}")
        if self.drift_min_count < 1:
            raise ValueError(f"monitoring.drift_min_count: at least 1, got {self.drift_min_count}")
        if self.psi_min_count < 1:
            raise ValueError(f"monitoring.psi_min_count: at least 1, got {self.psi_min_count}")
        if not 0.0 < self.unanswered_distance <= 2.0:
            raise ValueError(f"monitoring.unanswered_distance: a cosine distance within (0, 2], got {self.unanswered_distance}")

    @property
    def window_length(self) -> timedelta:
        return parse_window(self.window)

    @property
    def drift_columns(self) -> tuple[str, ...]:
        """``DRIFT_COLUMNS`` and the per-row scores of the configured scorers."""
        return (*DRIFT_COLUMNS, *self.scorers.configured)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> MonitoringConfig:
        """The settings' ``monitoring:`` section. ``thresholds`` override the defaults metric by metric
        (``default_thresholds``: a configured scorer adds its own); a metric set to null drops its
        default. Bad values raise ValueError naming the setting."""
        raw = dict(raw or {})
        known = {
            "window",
            "reference",
            "out_of_corpus_floor",
            "thresholds",
            "plot_windows",
            "drift_bins",
            "drift_min_count",
            "psi_min_count",
            "unanswered_distance",
            "start",
            "retrain_on_drift",
            "scorers",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"monitoring: unknown setting(s) {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        if "window" in raw:
            values["window"] = str(raw["window"])
        if "reference" in raw:
            values.update(_parse_reference(raw["reference"]))
        for name, kind in (
            ("out_of_corpus_floor", float),
            ("plot_windows", int),
            ("drift_bins", int),
            ("drift_min_count", int),
            ("psi_min_count", int),
            ("unanswered_distance", float),
        ):
            if name in raw:
                values[name] = _number(raw[name], f"monitoring.{name}", kind)
        if "scorers" in raw:
            values["scorers"] = ScorersConfig.from_mapping(raw["scorers"])
        defaults = default_thresholds(values.get("scorers", ScorersConfig()))
        values["thresholds"] = _parse_thresholds(raw["thresholds"] if "thresholds" in raw else {}, defaults)
        if "start" in raw:
            values["start"] = as_utc(raw["start"], "monitoring.start").date()
        if "retrain_on_drift" in raw:
            if not isinstance(raw["retrain_on_drift"], bool):
                raise ValueError(f"monitoring.retrain_on_drift: true or false, got {raw['retrain_on_drift']!r}")
            values["retrain_on_drift"] = raw["retrain_on_drift"]
        return cls(**values)


def partition_schedule(window: str | timedelta) -> tuple[str, str]:
    """(cron schedule, partition key format) of the Dagster time partitions whose boundaries are the
    epoch-aligned windows: minutes dividing an hour, hours dividing a day, a day, or a week (the
    epoch began on a Thursday, so weeks start on Thursdays). Other lengths have no cron schedule."""
    length = parse_window(window) if isinstance(window, str) else window
    minutes = int(length.total_seconds() // 60)
    if minutes < 60 and 60 % minutes == 0:
        return ("* * * * *" if minutes == 1 else f"*/{minutes} * * * *"), "%Y-%m-%d-%H:%M"
    if minutes % 60 == 0 and minutes < 1440 and 1440 % minutes == 0:
        return ("0 * * * *" if minutes == 60 else f"0 */{minutes // 60} * * *"), "%Y-%m-%d-%H:%M"
    if minutes == 1440:
        return "0 0 * * *", "%Y-%m-%d"
    if minutes == 10080:
        return "0 0 * * 4", "%Y-%m-%d"
    raise ValueError(
        f"monitoring.window: {window!r} cannot be a partition schedule; use minutes that divide an hour, hours that divide a day, 1d or 1w"
    )


def parse_window(window: str) -> timedelta:
    """``"1d"``, ``"6h"``, ``"30m"`` or ``"1w"`` as a timedelta."""
    match = _WINDOW.match(str(window))
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"monitoring.window: a positive duration such as '1d', '6h', '30m' or '1w', got {window!r}")
    try:
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        raise ValueError(f"monitoring.window: {window!r} is longer than any calendar holds") from None


def _number(value: Any, name: str, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if kind is int and value != int(value):
        raise ValueError(f"{name}: expected a whole number, got {value!r}")
    return kind(value)


def _parse_reference(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        return {"reference": raw}
    if not isinstance(raw, Mapping):
        raise ValueError(f"monitoring.reference: a kind ({', '.join(REFERENCE_KINDS)}) or a mapping with kind, start and end; got {raw!r}")
    unknown = sorted(set(raw) - {"kind", "start", "end"})
    if unknown:
        raise ValueError(f"monitoring.reference: unknown key(s) {unknown}; known: kind, start, end")
    values: dict[str, Any] = {"reference": raw.get("kind", "fixed" if "start" in raw else "first_window")}
    for key in ("start", "end"):
        if raw.get(key) is not None:
            values[f"reference_{key}"] = as_utc(raw[key], f"monitoring.reference.{key}")
    return values


def _parse_thresholds(raw: Any, defaults: tuple[Threshold, ...]) -> tuple[Threshold, ...]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"monitoring.thresholds: a mapping of metric to {{warn, error, bad}}, got {raw!r}")
    merged: dict[str, Threshold | None] = {threshold.metric: threshold for threshold in defaults}
    for metric, levels in raw.items():
        name = f"monitoring.thresholds.{metric}"
        if levels is None:
            merged[metric] = None
            continue
        if not isinstance(levels, Mapping):
            raise ValueError(f"{name}: a mapping with warn, error and optionally bad, got {levels!r}")
        unknown = sorted(set(levels) - {"warn", "error", "bad"})
        if unknown:
            raise ValueError(f"{name}: unknown key(s) {unknown}; known: warn, error, bad")
        warn = None if levels.get("warn") is None else _number(levels["warn"], f"{name}.warn")
        error = None if levels.get("error") is None else _number(levels["error"], f"{name}.error")
        merged[metric] = Threshold(metric, warn, error, str(levels.get("bad", default_bad_side(metric))))
    return tuple(threshold for threshold in merged.values() if threshold is not None)


def _check_metric_name(metric: str, scorers: ScorersConfig) -> None:
    column, _, statistic = metric.rpartition(".")
    scorer = next((name for name, metrics in SCORER_METRICS.items() if metric in metrics), None)
    if statistic in DRIFT_STATISTICS and column in SCORE_COLUMNS:
        scorer = column
    if scorer is not None and scorer not in scorers.configured:
        raise ValueError(f"monitoring.thresholds.{metric}: the {scorer} scorer is off; set monitoring.scorers.{scorer} to judge it")
    if metric in WINDOW_METRICS and metric != "source_shares":
        return
    if statistic in DRIFT_STATISTICS and (not column or column in DRIFT_COLUMNS or column in SCORE_COLUMNS):
        return
    numeric = [m for m in WINDOW_METRICS if m != "source_shares"]
    raise ValueError(
        f"monitoring.thresholds.{metric}: unknown metric; use a window metric ({', '.join(numeric)}), a drift statistic "
        f"({', '.join(DRIFT_STATISTICS)}) for every drift column, or COLUMN.STATISTIC with a column of "
        f"{', '.join((*DRIFT_COLUMNS, *SCORE_COLUMNS))}"
    )


def default_bad_side(metric: str) -> str:
    """Which side of a level is bad: below for quality and the KS p-value, above for the rest."""
    return "below" if metric.rpartition(".")[2] in _LOWER_IS_WORSE else "above"


# --- normalising the two sources ----------------------------------------------------------------


class _Malformed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_rows(
    log_frame: pd.DataFrame | pa.Table | None,
    prediction_frame: pd.DataFrame | pa.Table | None,
    *,
    chunk_texts: Mapping[str, str] | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The inference log and batch predictions as one frame of ``FRAME_COLUMNS``, and the rows kept
    out, counted as ``"<source>.<reason>"``.

    A logged request of several questions gives one row per question (``question_index`` 0, 1, …,
    the request's own fields on each): a later question that cannot be read is counted, and the
    rest of its request kept.

    ``chunk_texts`` (chunk id → text) gives logged requests their passages, which the log does not
    store, so that their groundedness can be scored; without it, or when a chunk has since left the
    index, the row's passages are null. ``count_tokens`` fills the token counts batch rows lack.
    """
    import pandas as pd

    rows: list[dict[str, Any]] = []
    problems: Counter[str] = Counter()
    for source, table, read in (("endpoint", log_frame, _endpoint_row), ("batch", prediction_frame, _batch_row)):
        for raw in _records(table):
            try:
                first = read(raw, chunk_texts, count_tokens)
            except _Malformed as malformed:
                problems[f"{source}.{malformed.reason}"] += 1
                continue
            rows.append(first)
            for index, later in enumerate(_later_questions(raw), start=1):  # a batch row has none
                try:
                    rows.append({**first, "question_index": index, **_question_part(later, first["is_error"], chunk_texts)})
                except _Malformed as malformed:
                    problems[f"{source}.{malformed.reason}"] += 1
    frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["status_code"] = frame["status_code"].astype("Int64")
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True), dict(sorted(problems.items()))


def _records(table: Any) -> list[dict[str, Any]]:
    if table is None:
        return []
    if hasattr(table, "to_pylist"):  # a pyarrow Table: lists come back as Python lists
        return table.to_pylist()
    return table.to_dict("records")


def _missing(value: Any) -> bool:
    """None, NaN (pandas' null for numbers) or NaT (its null for times)."""
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    return type(value).__name__ == "NaTType"


def _is(value: Any, flag: bool) -> bool:
    """``value`` is the boolean ``flag`` (Python or numpy), not a null."""
    return not _missing(value) and isinstance(value, bool | np.bool_) and bool(value) is flag


def _text(raw: Mapping[str, Any], column: str, required: str | None = None) -> str | None:
    value = raw.get(column)
    if _missing(value):
        if required:
            raise _Malformed(required)
        return None
    if not isinstance(value, str):
        raise _Malformed(f"wrong_type:{column}")
    if required and not value.strip():
        raise _Malformed(required)
    return value


def _float(raw: Mapping[str, Any], column: str, reason: str) -> float | None:
    value = raw.get(column)
    if _missing(value):
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise _Malformed(reason)
    if not math.isfinite(float(value)) or float(value) < 0:
        raise _Malformed(reason)
    return float(value)


def _count(raw: Mapping[str, Any], column: str) -> int | None:
    value = _float(raw, column, "bad_token_count")
    if value is not None and value != int(value):
        raise _Malformed("bad_token_count")
    return None if value is None else int(value)


def _flag(raw: Mapping[str, Any], column: str) -> bool | None:
    value = raw.get(column)
    if _missing(value):
        return None
    if not isinstance(value, bool | np.bool_):
        raise _Malformed(f"wrong_type:{column}")
    return bool(value)


def _version(raw: Mapping[str, Any], column: str) -> str | None:
    value = raw.get(column)
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | np.integer):
        raise _Malformed(f"wrong_type:{column}")
    return str(value)


def _list(raw: Mapping[str, Any], column: str, item: type) -> list[Any] | None:
    value = raw.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, list | tuple | np.ndarray):
        raise _Malformed(f"wrong_type:{column}")
    items = list(value)
    if item is float:
        if not all(isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) and math.isfinite(v) for v in items):
            raise _Malformed(f"bad_{column}")
        return [float(v) for v in items]
    if not all(isinstance(v, str) for v in items):
        raise _Malformed(f"wrong_type:{column}")
    return items


def _same_lengths(**lists: list[Any] | None) -> None:
    lengths = {len(values) for values in lists.values() if values is not None}
    if len(lengths) > 1:
        raise _Malformed("length_mismatch:" + "/".join(name for name, values in lists.items() if values is not None))


def _endpoint_row(raw: Mapping[str, Any], chunk_texts: Mapping[str, str] | None, count_tokens: Callable[[str], int] | None) -> dict[str, Any]:
    """A logged request's row: its own fields and its first question's."""
    stamp = raw.get("timestamp_ms")
    if _missing(stamp):
        raise _Malformed("missing_timestamp")
    if isinstance(stamp, bool | np.bool_) or not isinstance(stamp, int | float | np.integer | np.floating) or not 0 <= float(stamp) < 32503680000000:
        raise _Malformed("unparsable_timestamp")
    status = raw.get("status_code")
    if _missing(status):
        raise _Malformed("missing_status_code")
    numeric = not isinstance(status, bool | np.bool_) and isinstance(status, int | float | np.integer | np.floating) and math.isfinite(status)
    if not numeric or status != int(status) or not 100 <= int(status) <= 599:
        raise _Malformed("bad_status_code")
    is_error = int(status) >= CLIENT_ERROR
    question = _question_part(raw, is_error, chunk_texts)
    return {
        "source": "endpoint",
        "request_id": _text(raw, "databricks_request_id"),
        "question_index": 0,
        "timestamp": datetime.fromtimestamp(float(stamp) / 1000, UTC),
        "served_model_version": _version(raw, "served_model_version"),
        "endpoint": _text(raw, "endpoint"),
        "status_code": int(status),
        "is_error": is_error,
        "latency_ms": _float(raw, "execution_time_ms", "bad_latency"),
        "mode": _text(raw, "mode"),
        "generator": _text(raw, "generator"),
        **question,
    }


def _later_questions(raw: Mapping[str, Any]) -> list[Any]:
    """A logged request's questions after its first (``later_questions``), each as logged."""
    value = raw.get("later_questions")
    return list(value) if isinstance(value, list | tuple | np.ndarray) else []


def _question_part(raw: Mapping[str, Any], is_error: bool, chunk_texts: Mapping[str, str] | None) -> dict[str, Any]:
    """One question's fields of a logged request: the row's columns for its first, an entry of
    ``later_questions`` for each later one. On a request that did not fail, ``error`` is its
    generator's: the answer is then not a no-answer."""
    if not isinstance(raw, Mapping):
        raise _Malformed("wrong_type:later_questions")
    question = _text(raw, "question", None if is_error else "missing_question")
    chunk_ids, sources, scores = _list(raw, "chunk_ids", str), _list(raw, "sources", str), _list(raw, "scores", float)
    _same_lengths(chunk_ids=chunk_ids, sources=sources, scores=scores)
    passages = None
    if chunk_ids is not None and chunk_texts is not None and all(chunk in chunk_texts for chunk in chunk_ids):
        passages = [chunk_texts[chunk] for chunk in chunk_ids]
    return {
        "question": question,
        "answer": _text(raw, "answer"),
        "found": _flag(raw, "found"),
        "chunk_ids": chunk_ids,
        "sources": sources,
        "scores": scores,
        "passages": passages,
        "question_tokens": _count(raw, "question_tokens"),
        "answer_tokens": _count(raw, "answer_tokens"),
        "generation_error": None if is_error else _text(raw, "error"),
    }


def _batch_row(raw: Mapping[str, Any], chunk_texts: Mapping[str, str] | None, count_tokens: Callable[[str], int] | None) -> dict[str, Any]:
    import pandas as pd

    stamp = raw.get("predicted_at")
    if _missing(stamp):
        raise _Malformed("missing_timestamp")
    if isinstance(stamp, bool | int | float | np.number):
        raise _Malformed("unparsable_timestamp")
    try:
        timestamp = pd.Timestamp(stamp)
    except (TypeError, ValueError):
        raise _Malformed("unparsable_timestamp") from None
    if pd.isna(timestamp):
        raise _Malformed("unparsable_timestamp")
    timestamp = timestamp.tz_localize(UTC) if timestamp.tzinfo is None else timestamp.tz_convert(UTC)
    question = _text(raw, "question", "missing_question")
    answer = _text(raw, "answer")
    passages, sources, scores = _list(raw, "passages", str), _list(raw, "sources", str), _list(raw, "scores", float)
    _same_lengths(passages=passages, sources=sources, scores=scores)
    return {
        "source": "batch",
        "request_id": _text(raw, "id"),
        "question_index": 0,
        "timestamp": timestamp.to_pydatetime(),
        "served_model_version": _version(raw, "model_version"),
        "endpoint": None,
        "status_code": None,
        "is_error": None,  # only answered questions are written: failures are not observed
        "latency_ms": _float(raw, "latency_ms", "bad_latency"),
        "question": question,
        "answer": answer,
        "found": _flag(raw, "found"),
        "chunk_ids": None,
        "sources": sources,
        "scores": scores,
        "passages": passages,
        "question_tokens": count_tokens(question) if count_tokens and question else None,
        "answer_tokens": count_tokens(answer) if count_tokens and answer else None,
        "mode": None,
        "generator": _text(raw, "generator"),
        "generation_error": _text(raw, "error"),
    }


# --- per-row values ------------------------------------------------------------------------------


def row_values(frame: pd.DataFrame) -> pd.DataFrame:
    """What each row contributes, as numbers or null: whether it asked for an answer, whether it got
    none, its top score, groundedness, citation validity and readability."""
    import pandas as pd
    import textstat

    values = []
    for row in frame.itertuples(index=False):
        asks, no_answer, failed, answer = _answer_state(row)
        judged = asks and not no_answer and answer is not None and bool(answer.strip())
        scores = row.scores if isinstance(row.scores, list) else None
        passages = row.passages if isinstance(row.passages, list) else None
        values.append(
            {
                "asks_answer": asks,
                "no_answer": no_answer if asks else None,
                "generation_failed": failed if asks else None,
                "retrieved": None if _is(row.is_error, True) or scores is None else bool(scores),
                "top1_score": scores[0] if scores else None,
                "groundedness": groundedness(answer, passages) if judged and passages is not None else None,
                "citation_validity": citation_validity(answer, passages) if judged and passages is not None else None,
                "flesch_kincaid_grade": float(textstat.flesch_kincaid_grade(answer)) if judged else None,
                "automated_readability_index": float(textstat.automated_readability_index(answer)) if judged else None,
            }
        )
    return pd.DataFrame(values, index=frame.index, columns=list(_ROW_VALUE_COLUMNS), dtype=object)


class _AnswerState(NamedTuple):
    asks: bool  # the row asked for an answer: failed requests and /search calls ask for none
    no_answer: bool  # the model found none
    failed: bool  # the generator failed: not the model finding no answer (generation_error_rate counts it)
    answer: str | None  # the text to judge; None where there is none, a failed generator's error included


def _answer_state(row: Any) -> _AnswerState:
    found = None if _missing(row.found) else bool(row.found)
    answer = row.answer if isinstance(row.answer, str) else None
    asks = not _is(row.is_error, True) and row.endpoint != SEARCH_ENDPOINT and (found is not None or answer is not None)
    error = getattr(row, "generation_error", None)
    if asks and isinstance(error, str) and error.strip():
        return _AnswerState(asks, False, True, None)
    return _AnswerState(asks, asks and (found is False or (found is None and is_no_answer(answer))), False, answer)


def attach_answer_scores(frame: pd.DataFrame, scorers: AnswerScorers) -> pd.DataFrame:
    """The frame with a column of per-row scores for each configured scorer (``toxicity``,
    ``perplexity``) and one of the reasons a row that asked for an answer has none
    (``toxicity_skipped``, ...): ``no_answer`` (the model found none, so there is no answer to
    judge, as for readability), ``generation_failed`` (the generator failed: its error is no answer
    either), ``empty_answer``, ``failed:<error>`` or ``not_finite``. Rows that
    asked for no answer (failed requests, /search) have neither."""
    frame = frame.copy()
    if not scorers.names:
        return frame
    texts: list[str | None] = []
    before: list[str | None] = []  # "" marks a row that asked for no answer
    for row in frame.itertuples(index=False):
        asks, no_answer, failed, answer = _answer_state(row)
        texts.append(answer if asks and not no_answer else None)
        before.append("" if not asks else "no_answer" if no_answer else "generation_failed" if failed else None)
    for name, scores in scorers.score(texts).items():
        frame[name] = [None if reason is not None else value for reason, value in zip(before, scores.values, strict=True)]
        reasons = [reason if reason is not None else why for reason, why in zip(before, scores.reasons, strict=True)]
        frame[f"{name}_skipped"] = [reason or None for reason in reasons]
    return frame


_ROW_VALUE_COLUMNS = (
    "asks_answer",
    "no_answer",
    "generation_failed",
    "retrieved",
    "top1_score",
    "groundedness",
    "citation_validity",
    "flesch_kincaid_grade",
    "automated_readability_index",
)


def _numbers(values: Iterable[Any]) -> np.ndarray:
    kept = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return np.asarray(kept, dtype=np.float64)


def _mean(values: Iterable[Any]) -> float | None:
    numbers = _numbers(values)
    return float(numbers.mean()) if numbers.size else None


def _share(flags: Iterable[Any]) -> float | None:
    kept = [bool(flag) for flag in flags if flag is not None and not (isinstance(flag, float) and math.isnan(flag))]
    return sum(kept) / len(kept) if kept else None


def _answered(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows the server answered (batch rows included): latency is about answers, and a refused
    request's millisecond would pull the percentiles down."""
    return rows[~rows["is_error"].map(lambda flag: _is(flag, True)).astype(bool)]


def requests(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per request, its first question's: what request counts, status shares and latency
    are taken over (a request of several questions took its time once)."""
    return rows[rows["question_index"].map(lambda index: _missing(index) or index == 0).astype(bool)] if "question_index" in rows else rows


def _status_share(codes: pd.Series, low: int, high: int) -> float | None:
    """The share of rows with a status code whose code is in [low, high); batch rows have none."""
    known = codes.dropna()
    return float(known.between(low, high, inclusive="left").mean()) if len(known) else None


def _percentile(values: Iterable[Any], q: float) -> float | None:
    numbers = _numbers(values)
    return float(np.percentile(numbers, q)) if numbers.size else None


def document_of(source: str) -> str:
    """``file.pdf#page=3`` → ``file.pdf``: shares are per document, not per page."""
    return source.split("#", 1)[0]


def source_shares(sources: Iterable[list[str] | None]) -> dict[str, float]:
    """Document → share of the rows with retrieved passages that retrieved it, largest first."""
    lists = [set(map(document_of, row)) for row in sources if isinstance(row, list) and row]
    counts = Counter(document for documents in lists for document in documents)
    return {document: count / len(lists) for document, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))}


# --- windows -------------------------------------------------------------------------------------


def as_utc(value: Any, name: str = "timestamp") -> datetime:
    """A datetime, date, pandas Timestamp or ISO string as an aware UTC datetime (naive means UTC)."""
    import pandas as pd

    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: not a date or time: {value!r}") from None
    if pd.isna(stamp):
        raise ValueError(f"{name}: not a date or time: {value!r}")
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()


def window_floor(moment: Any, window: str | timedelta) -> datetime:
    """The start of the epoch-aligned window holding ``moment``."""
    length = parse_window(window) if isinstance(window, str) else window
    offset = (as_utc(moment) - _EPOCH) // length
    return _EPOCH + offset * length


def windows(start: Any, end: Any, window: str | timedelta) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into windows of ``window``; the last one ends at ``end``."""
    length = parse_window(window) if isinstance(window, str) else window
    begin, finish = as_utc(start, "start"), as_utc(end, "end")
    if begin >= finish:
        raise ValueError(f"start ({begin}) must be before end ({finish})")
    cuts = []
    while begin < finish:
        cuts.append((begin, min(begin + length, finish)))
        begin += length
    return cuts


def window_metrics(
    frame: pd.DataFrame,
    start: Any,
    end: Any,
    config: MonitoringConfig | None = None,
    corpus_centroid: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One row per (window, served model version, source) between ``start`` and ``end``; a window
    without rows gives one row with ``request_count`` 0 and null metrics.

    ``query_drift`` needs a ``question_vector`` column (``attach_question_vectors``) and the corpus
    centroid; ``out_of_corpus_rate`` uses the ``question_top_cosine`` column when there is one, else
    the logged top score of requests retrieved in ``vector`` mode (the only mode whose score is a
    cosine); otherwise both are null.
    """
    config = config or MonitoringConfig()
    result: list[dict[str, Any]] = []
    for begin, finish in windows(start, end, config.window_length):
        inside = frame[(frame["timestamp"] >= begin) & (frame["timestamp"] < finish)] if len(frame) else frame
        if inside.empty:
            result.append(_empty_window(begin, finish))
            continue
        values = row_values(inside)
        keys = inside["served_model_version"].map(lambda v: "" if v is None else str(v))
        for (version, source), group in inside.groupby([keys, inside["source"]], sort=True):
            row = {"window_start": begin, "window_end": finish, "served_model_version": version or None, "source": source}
            row.update(_metrics(group, values.loc[group.index], config, corpus_centroid))
            result.append(row)
    return result


def _empty_window(begin: datetime, finish: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {"window_start": begin, "window_end": finish, "served_model_version": None, "source": None}
    row.update({metric: None for metric in WINDOW_METRICS})
    row.update(dict.fromkeys(COUNT_METRICS, 0))
    row["scorer_skipped"] = {}
    return row


def _metrics(group: pd.DataFrame, values: pd.DataFrame, config: MonitoringConfig, corpus_centroid: np.ndarray | None) -> dict[str, Any]:
    asks = values["asks_answer"].astype(bool)
    generated = generator_answered(values)
    in_mode = score_mode_rows(group)  # scores of one retrieval mode: BM25's, a cosine and RRF's do not average
    scores = [score for row in group["scores"][in_mode] if isinstance(row, list) for score in row]
    retrieved = values["retrieved"]
    asked = requests(group)
    latency = _answered(asked)["latency_ms"]
    return {
        "request_count": len(asked),
        "question_count": len(group),
        "error_rate": _status_share(asked["status_code"], SERVER_ERROR, 600),
        "client_error_rate": _status_share(asked["status_code"], CLIENT_ERROR, SERVER_ERROR),
        "latency_p50_ms": _percentile(latency, 50),
        "latency_p95_ms": _percentile(latency, 95),
        "question_tokens_mean": _mean(group["question_tokens"]),
        "answer_tokens_mean": _mean(group["answer_tokens"][generated]),
        "flesch_kincaid_grade": _mean(values["flesch_kincaid_grade"]),
        "automated_readability_index": _mean(values["automated_readability_index"]),
        "top1_score_mean": _mean(values["top1_score"][in_mode]),
        "score_mean": _mean(scores),
        "no_answer_rate": _share(values["no_answer"][generated]),
        "generation_error_rate": _share(values["generation_failed"][asks]),
        "empty_retrieval_rate": _share(retrieved.map(lambda flag: None if flag is None else not flag)),
        "source_shares": source_shares(group["sources"]) or None,
        "groundedness_mean": _mean(values["groundedness"]),
        "citation_validity_mean": _mean(values["citation_validity"]),
        "out_of_corpus_rate": _window_out_of_corpus(group, config.out_of_corpus_floor),
        "query_drift": _window_query_drift(group, corpus_centroid),
        **_scorer_metrics(group),
    }


def _scorer_metrics(group: pd.DataFrame) -> dict[str, Any]:
    """The scorers' window metrics, null where a scorer is off or scored nothing, and
    ``scorer_skipped``: the rows without a score, counted as ``"<scorer>.<reason>"``."""
    toxicity = _numbers(group[TOXICITY]) if TOXICITY in group else np.zeros(0)
    perplexity = _numbers(group[PERPLEXITY]) if PERPLEXITY in group else np.zeros(0)
    skipped = Counter(
        f"{name}.{reason}" for name in SCORE_COLUMNS if f"{name}_skipped" in group for reason in group[f"{name}_skipped"] if isinstance(reason, str)
    )
    return {
        "toxicity_mean": float(toxicity.mean()) if toxicity.size else None,
        "toxicity_max": float(toxicity.max()) if toxicity.size else None,
        "toxic_rate": float((toxicity > TOXIC_LEVEL).mean()) if toxicity.size else None,
        "perplexity_mean": float(perplexity.mean()) if perplexity.size else None,
        "perplexity_p50": float(np.percentile(perplexity, 50)) if perplexity.size else None,
        "scorer_skipped": dict(sorted(skipped.items())),
    }


def _window_out_of_corpus(group: pd.DataFrame, floor: float) -> float | None:
    if "question_top_cosine" in group:
        rate = out_of_corpus_rate(group["question_top_cosine"], floor)
        if rate is not None:
            return rate
    answered = _answered(group)
    vector_mode = answered[answered["mode"] == "vector"]
    return out_of_corpus_rate([row[0] for row in vector_mode["scores"] if isinstance(row, list) and row], floor)


def _window_query_drift(group: pd.DataFrame, corpus_centroid: np.ndarray | None) -> float | None:
    if corpus_centroid is None or "question_vector" not in group:
        return None
    vectors = [vector for vector in group["question_vector"] if isinstance(vector, np.ndarray)]
    return query_drift(np.stack(vectors), corpus_centroid) if vectors else None


def metric_series(
    rows: Sequence[Mapping[str, Any]], metric: str, *, source: str | None = None, served_model_version: str | None = None
) -> tuple[list[datetime], list[float | None]]:
    """(window starts, values) of one metric for a plot, oldest first. Rows of the same window (other
    versions or sources, unless filtered) are averaged, weighted by their requests for a
    request-level metric and by their questions for the rest (a ``_max`` metric takes their
    largest, a count their sum). A window with no value is None, a gap in the line, except a count
    in a window that was computed (it has a row, of any slice): there, a slice without rows is 0."""
    by_window: dict[datetime, list[tuple[float, int]]] = {}
    computed: set[datetime] = set()
    weight_by = "request_count" if metric in REQUEST_METRICS else "question_count"
    for row in rows:
        by_window.setdefault(row["window_start"], [])
        if row.get("request_count") is not None:
            computed.add(row["window_start"])
        if (source and row["source"] != source) or (served_model_version and row["served_model_version"] != served_model_version):
            continue
        value = row.get(metric)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            by_window[row["window_start"]].append((float(value), int(row.get(weight_by) or row.get("request_count") or 0)))
    starts = sorted(by_window)
    values: list[float | None] = []
    for start in starts:
        points = by_window[start]
        weight = sum(count for _, count in points)
        if not points:
            values.append(0.0 if metric in COUNT_METRICS and start in computed else None)
        elif metric in COUNT_METRICS:
            values.append(float(sum(value for value, _ in points)))
        elif metric.endswith("_max"):
            values.append(max(value for value, _ in points))
        else:
            values.append(sum(value * count for value, count in points) / weight if weight else sum(v for v, _ in points) / len(points))
    return starts, values


# --- reference and drift -------------------------------------------------------------------------


def reference_rows(frame: pd.DataFrame, config: MonitoringConfig, evaluation: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows drift is measured against: the first window that has rows, the fixed range, or the
    serving version's evaluation set (normalised predictions the caller provides)."""
    if config.reference == "evaluation":
        if evaluation is None:
            raise ValueError("monitoring.reference is 'evaluation' but no evaluation predictions were given")
        return evaluation
    if frame.empty:
        return frame
    if config.reference == "fixed":
        begin, finish = config.reference_start, config.reference_end
    else:
        begin = window_floor(frame["timestamp"].min(), config.window_length)
        finish = begin + config.window_length
    return frame[(frame["timestamp"] >= begin) & (frame["timestamp"] < finish)]


def _named_modes(frame: pd.DataFrame) -> pd.Series:
    return frame["mode"].map(lambda mode: mode if isinstance(mode, str) and mode else None)


def score_mode(frame: pd.DataFrame) -> str | None:
    """The retrieval mode most of the rows named; None when none named one."""
    named = _named_modes(frame).dropna()
    return None if named.empty else str(named.value_counts().index[0])


def score_mode_rows(frame: pd.DataFrame, mode: str | None = None) -> pd.Series:
    """The rows whose retrieval scores are on one scale: those of ``mode`` (by default the one most
    rows named) and those that named none (the model's own, which batch rows and an evaluation
    reference use). A client that asked for ``mode: text`` gets BM25 scores, a hybrid default
    reciprocal-rank ones: averaged or binned together they say nothing, and a change in the mix
    reads as drift."""
    mode = mode if mode is not None else score_mode(frame)
    return _named_modes(frame).map(lambda named: named is None or mode is None or named == mode)


def generator_answered(values: pd.DataFrame) -> pd.Series:
    """Rows that asked for an answer and whose generator gave one (it may say it found none)."""
    return values["asks_answer"].astype(bool) & ~values["generation_failed"].map(lambda flag: flag is True)


def drift_values(frame: pd.DataFrame, names: Sequence[str] = DRIFT_COLUMNS, in_mode: pd.Series | None = None) -> dict[str, np.ndarray]:
    """The non-null per-row values of each column in ``names`` (``DRIFT_COLUMNS`` and scores); a
    score column the frame lacks (its scorer is off) has none. ``in_mode``: the rows whose
    ``top1_score`` counts (``score_mode_rows``), all by default."""
    values = row_values(frame)
    columns = {
        "latency_ms": _answered(requests(frame))["latency_ms"],
        "question_tokens": frame["question_tokens"],
        "answer_tokens": frame["answer_tokens"][generator_answered(values)],
        "flesch_kincaid_grade": values["flesch_kincaid_grade"],
        "top1_score": values["top1_score"] if in_mode is None else values["top1_score"][in_mode],
        "groundedness": values["groundedness"],
        "question_top_cosine": frame["question_top_cosine"] if "question_top_cosine" in frame else [],
        **{name: frame[name] if name in frame else [] for name in SCORE_COLUMNS},
    }
    return {name: _numbers(columns[name]) for name in names}


def column_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    bins: int = 10,
    min_count: int = 1,
    columns: Sequence[str] | None = None,
    psi_min_count: int = 1,
) -> dict[str, dict[str, Any]]:
    """``drift_metrics`` for every column of ``columns`` (by default ``DRIFT_COLUMNS`` and the score
    columns either frame has), reference rows against current rows."""
    if columns is None:
        columns = (*DRIFT_COLUMNS, *(name for name in SCORE_COLUMNS if name in reference or name in current))
    # Top-1 scores of the current rows' retrieval mode on both sides (and of rows that named none).
    mode = score_mode(current)
    after = drift_values(current, columns, score_mode_rows(current, mode))
    before = drift_values(reference, columns, score_mode_rows(reference, mode))
    return {name: drift_metrics(before[name], after[name], bins, min_count, psi_min_count) for name in columns}


def reference_bins(reference: np.ndarray, bins: int) -> np.ndarray:
    """Bin edges at the reference's quantiles 0, 1/bins, …, 1 (deciles by default), duplicates
    merged, so each bin holds about the same share of the reference."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))


def binned_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of ``values`` in the bins the reference's quantile edges make, the outer two open to
    −∞ and +∞ as PSI's bins are: a fresh sample of the reference's own distribution always has
    values just beyond the reference's range, which are no drift. Two distinct edges (a reference of
    two values) split at the upper one. A constant reference (one edge) gives three bins, below,
    equal and above, since any other value is then new."""
    if len(edges) == 1:
        index = np.where(values < edges[0], 0, np.where(values > edges[0], 2, 1))
        count = 3
    else:
        cuts = edges[1:-1] if len(edges) > 2 else edges[1:]
        index = np.searchsorted(cuts, values, side="right")
        count = len(cuts) + 1
    counts = np.bincount(index, minlength=count)
    return counts / counts.sum()


def population_stability_index(reference: np.ndarray, current: np.ndarray, edges: np.ndarray) -> float:
    """Σ (current − reference) · ln(current / reference) over the bins; empty bins count as
    ``PSI_EPSILON`` so the logarithm stays finite."""
    before = np.clip(binned_shares(reference, edges), PSI_EPSILON, None)
    after = np.clip(binned_shares(current, edges), PSI_EPSILON, None)
    return float(np.sum((after - before) * np.log(after / before)))


def drift_metrics(
    reference_values: Iterable[Any], current_values: Iterable[Any], bins: int = 10, min_count: int = 1, psi_min_count: int = 1
) -> dict[str, Any]:
    """PSI, Jensen-Shannon distance (base 2, so within [0, 1]) over the same reference-quantile bins,
    and the two-sample Kolmogorov-Smirnov test, named as in Databricks' drift metrics table. Null
    statistics when either side has fewer than ``min_count`` values (at least one), and a null PSI
    below ``psi_min_count``: on small samples its noise alone crosses the usual levels, while the
    KS test's p-value holds at any size."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import ks_2samp

    reference, current = _numbers(reference_values), _numbers(current_values)
    result: dict[str, Any] = {"reference_count": int(reference.size), "current_count": int(current.size)}
    fewest = min(reference.size, current.size)
    if fewest < max(min_count, 1):
        return {**result, "population_stability_index": None, "js_distance": None, "ks_test": None}
    edges = reference_bins(reference, bins)
    test = ks_2samp(reference, current)
    return {
        **result,
        "population_stability_index": population_stability_index(reference, current, edges) if fewest >= psi_min_count else None,
        "js_distance": float(jensenshannon(binned_shares(reference, edges), binned_shares(current, edges), base=2)),
        "ks_test": {"statistic": float(test.statistic), "pvalue": float(test.pvalue)},
    }


# --- retrieval-aware drift -----------------------------------------------------------------------


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def corpus_centroid(vectors: np.ndarray) -> np.ndarray:
    """The mean direction of the corpus' chunk vectors."""
    return _unit(np.asarray(vectors, dtype=np.float64)).mean(axis=0)


def query_drift(question_vectors: np.ndarray, corpus_centroid: np.ndarray) -> float | None:
    """1 − cosine between the questions' centroid and the corpus centroid: near the corpus' own
    spread while people ask about what it covers, larger as they move to other topics."""
    vectors = np.asarray(question_vectors, dtype=np.float64)
    if vectors.ndim != 2 or not len(vectors):
        return None
    centroid = _unit(vectors).mean(axis=0)
    return float(1.0 - _unit(centroid) @ _unit(np.asarray(corpus_centroid, dtype=np.float64)))


def top_cosine(question_vectors: np.ndarray, corpus_vectors: np.ndarray, block: int = 1024) -> np.ndarray:
    """Each question's cosine with its nearest corpus vector (exact, in blocks of questions)."""
    questions, corpus = _unit(question_vectors).astype(np.float32), _unit(corpus_vectors).astype(np.float32)
    if not len(questions):
        return np.zeros(0)
    if not len(corpus):
        return np.full(len(questions), np.nan)
    return np.concatenate([(questions[i : i + block] @ corpus.T).max(axis=1) for i in range(0, len(questions), block)]).astype(np.float64)


def out_of_corpus_rate(top_scores: Iterable[Any], floor: float) -> float | None:
    """Share of questions whose best passage scored below ``floor``; null when there are none."""
    scores = _numbers(top_scores)
    return float((scores < floor).mean()) if scores.size else None


def attach_question_vectors(frame: pd.DataFrame, encode: Callable[[list[str]], np.ndarray], corpus_vectors: np.ndarray) -> pd.DataFrame:
    """The frame with ``question_vector`` and ``question_top_cosine`` columns: each distinct question
    embedded once with ``encode`` (the index's embedding model), then compared with the corpus."""
    frame = frame.copy()
    distinct = sorted({question for question in frame["question"] if isinstance(question, str) and question.strip()})
    vectors = np.asarray(encode(distinct)) if distinct else np.zeros((0, np.asarray(corpus_vectors).shape[-1]))
    nearest = top_cosine(vectors, corpus_vectors)
    by_question = {question: (vectors[i], float(nearest[i])) for i, question in enumerate(distinct)}
    frame["question_vector"] = [by_question[q][0] if q in by_question else None for q in frame["question"]]
    frame["question_top_cosine"] = [by_question[q][1] if q in by_question else None for q in frame["question"]]
    return frame


# --- unanswered questions ------------------------------------------------------------------------


def unanswered_questions(frame: pd.DataFrame) -> list[str]:
    """The questions that got no answer, one per row (repeats count)."""
    values = row_values(frame)
    return [question for question, none in zip(frame["question"], values["no_answer"], strict=True) if none is True and isinstance(question, str)]


def group_unanswered(questions: Sequence[str], vectors: np.ndarray, threshold: float = 0.3, max_questions: int = 2000) -> list[dict[str, Any]]:
    """Unanswered questions grouped by meaning, largest group first: average-linkage agglomerative
    clustering on cosine distance, cut at ``threshold``. Each group has its ``size`` (repeats
    counted), its distinct ``questions`` (most asked first) and a ``representative``: the one
    nearest the group's centroid. Beyond ``max_questions`` distinct questions, the most asked are
    kept, as the distance matrix grows with the square of their number."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(questions) != len(vectors):
        raise ValueError(f"{len(questions)} questions for {len(vectors)} vectors")
    counts = Counter(questions)
    first: dict[str, int] = {}
    for position, question in enumerate(questions):
        first.setdefault(question, position)
    distinct = sorted(counts, key=lambda q: (-counts[q], first[q]))[:max_questions]
    if not distinct:
        return []
    unit = _unit(np.asarray(vectors, dtype=np.float64)[[first[q] for q in distinct]])
    if len(distinct) == 1:
        labels = np.ones(1, dtype=int)
    else:
        labels = fcluster(linkage(unit, method="average", metric="cosine"), t=threshold, criterion="distance")
    groups = []
    for label in dict.fromkeys(labels):
        members = [i for i in range(len(distinct)) if labels[i] == label]
        centroid = unit[members].mean(axis=0)
        representative = distinct[max(members, key=lambda i: (float(unit[i] @ centroid), -i))]
        groups.append(
            {"size": sum(counts[distinct[i]] for i in members), "representative": representative, "questions": [distinct[i] for i in members]}
        )
    return sorted(groups, key=lambda group: -group["size"])


# --- thresholds ----------------------------------------------------------------------------------


class CheckOutcome(NamedTuple):
    """One threshold's verdict. When a level is crossed, ``severity`` and ``threshold`` are those of
    the worst level crossed; when none is, those of the first level that would trip."""

    name: str
    severity: str
    value: float | None
    threshold: float
    passed: bool


def check_names(config: MonitoringConfig) -> list[str]:
    """The names ``evaluate_thresholds`` reports, known before any data: what the asset declares."""
    return [name for name, _, _ in _bound_thresholds(config)]


def check_thresholds(config: MonitoringConfig) -> dict[str, Threshold]:
    """Check name (as ``check_names`` gives it) → the threshold it judges."""
    return {name: threshold for name, threshold, _ in _bound_thresholds(config)}


RETRIEVAL_DRIFT_METRICS = ("out_of_corpus_rate", "query_drift")


def is_drift_check(name: str) -> bool:
    """Whether a check of ``check_names`` judges drift: a drift statistic of a column, the
    out-of-corpus rate or the query drift (the rest judge quality and errors)."""
    return name in RETRIEVAL_DRIFT_METRICS or name.endswith(DRIFT_STATISTICS)


def _bound_thresholds(config: MonitoringConfig) -> list[tuple[str, Threshold, tuple[str, str] | None]]:
    """(check name, threshold, (drift column, statistic) or None), a column-scoped drift threshold
    taking the place of the unscoped one for its column."""
    bound: dict[str, tuple[Threshold, tuple[str, str] | None]] = {}
    for threshold in config.thresholds:
        column, _, statistic = threshold.metric.rpartition(".")
        if statistic not in DRIFT_STATISTICS:
            bound[threshold.metric] = (threshold, None)
        elif column:
            bound[f"{column}_{statistic}"] = (threshold, (column, statistic))
        else:
            for name in config.drift_columns:
                scoped = any(t.metric == f"{name}.{statistic}" for t in config.thresholds)
                if not scoped:
                    bound[f"{name}_{statistic}"] = (threshold, (name, statistic))
    return [(name, threshold, target) for name, (threshold, target) in bound.items()]


def evaluate_thresholds(
    metrics_row: Mapping[str, Any], drift: Mapping[str, Mapping[str, Any]] | None, config: MonitoringConfig
) -> list[CheckOutcome]:
    """Every configured threshold against a window row and its drift (``column_drift``). A metric
    without a value (an empty window, a source that does not record it) passes: there is nothing to
    judge. ``ks_test`` is judged on its p-value."""
    outcomes = []
    for name, threshold, target in _bound_thresholds(config):
        if target is None:
            value = metrics_row.get(threshold.metric)
            if threshold.metric in COUNT_METRICS and value is not None:
                value = float(value)
        else:
            statistic = (drift or {}).get(target[0], {}).get(target[1])
            value = statistic.get("pvalue") if isinstance(statistic, Mapping) else statistic
        outcomes.append(_judge(name, threshold, None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)))
    return outcomes


def _judge(name: str, threshold: Threshold, value: float | None) -> CheckOutcome:
    def crossed(level: float | None) -> bool:
        if value is None or level is None:
            return False
        return value > level if threshold.bad == "above" else value < level

    if crossed(threshold.error):
        return CheckOutcome(name, "ERROR", value, threshold.error, False)  # type: ignore[arg-type]
    if crossed(threshold.warn):
        return CheckOutcome(name, "WARN", value, threshold.warn, False)  # type: ignore[arg-type]
    first = threshold.warn if threshold.warn is not None else threshold.error
    return CheckOutcome(name, "WARN" if threshold.warn is not None else "ERROR", value, first, True)  # type: ignore[arg-type]
