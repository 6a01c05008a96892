"""Monitoring's pure logic: normalising the inference log and batch predictions, window metrics,
drift statistics, query drift with the real embedding model, unanswered-question groups,
thresholds, and plots."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import textstat

from llmops_dagster.core import store
from llmops_dagster.core.answer import NO_ANSWER
from llmops_dagster.core.monitoring import (
    DRIFT_COLUMNS,
    CheckOutcome,
    MonitoringConfig,
    check_names,
    column_drift,
    corpus_centroid,
    drift_metrics,
    evaluate_thresholds,
    group_unanswered,
    metric_series,
    normalise_rows,
    out_of_corpus_rate,
    query_drift,
    reference_rows,
    top_cosine,
    window_floor,
    window_metrics,
)
from llmops_dagster.core.plots import PNG_SIGNATURE, markdown_table, metric_plot

CORPUS = Path(__file__).resolve().parents[1] / "sample_corpus"
DAY = datetime(2026, 11, 20, tzinfo=UTC)
PASSAGE = "Chunks overlap by 32 tokens by default, so a sentence cut at a boundary still appears whole in one chunk."
SIMPLE = "The cat sat on the mat. The dog ran to the park. We had fun."
COMPLEX = (
    "Notwithstanding considerable methodological heterogeneity, contemporaneous epidemiological investigations "
    "demonstrate statistically indistinguishable cardiovascular outcomes across socioeconomically stratified populations."
)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def log_row(request_id: str, minutes: float, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "databricks_request_id": request_id,
        "timestamp_ms": ms(DAY + timedelta(minutes=minutes)),
        "status_code": 200,
        "execution_time_ms": 100.0,
        "served_model_version": "3",
        "endpoint": "/invocations",
        "question": "How much do chunks overlap?",
        "answer": "Chunks overlap by 32 tokens by default.",
        "found": True,
        "chunk_ids": ["c1", "c2"],
        "sources": ["chunking-notes.md", "operations-guide.pdf#page=4"],
        "scores": [0.8, 0.4],
        "mode": "vector",
        "question_tokens": 6,
        "answer_tokens": 9,
        "generator": "extractive",
    }
    row.update(fields)
    return row


def inference_log() -> list[dict[str, object]]:
    """Seven good requests on one day (one failed, one refused, one without an answer, one /search)
    and four bad."""
    return [
        log_row("a", 10, execution_time_ms=100.0),
        log_row("b", 20, execution_time_ms=200.0, answer=SIMPLE, chunk_ids=["c2"], sources=["operations-guide.pdf#page=4"], scores=[0.2]),
        log_row("c", 30, execution_time_ms=300.0, answer=NO_ANSWER, found=False, answer_tokens=8),
        log_row(
            "d",
            40,
            execution_time_ms=400.0,
            status_code=500,
            error="RuntimeError: boom",
            answer=None,
            found=None,
            chunk_ids=None,
            sources=None,
            scores=None,
            answer_tokens=None,
        ),
        log_row("e", 50, execution_time_ms=500.0, endpoint="/search", answer=None, found=None, answer_tokens=None),
        log_row("f", 60, execution_time_ms=600.0, served_model_version="4", chunk_ids=["gone"], sources=["x.md"], scores=[0.9]),
        # Refused for want of a token: a client's error, with no question logged.
        log_row(
            "g", 65, status_code=401, served_model_version="4", question=None, answer=None, found=None, chunk_ids=None, sources=None, scores=None
        ),
        log_row("bad1", 70, timestamp_ms=None),
        log_row("bad2", 80, question=None),
        log_row("bad3", 90, scores=[0.5]),
        log_row("bad4", 100, status_code=None),
    ]


def predictions() -> list[dict[str, object]]:
    base = {
        "dagster_run_id": "run",
        "answer": "Chunks overlap by 32 tokens by default.",
        "found": True,
        "passages": [PASSAGE],
        "sources": ["chunking-notes.md"],
        "scores": [0.03],
        "model_version": "3",
        "latency_ms": 50.0,
    }
    return [
        {**base, "id": "p1", "question": "How much do chunks overlap?", "predicted_at": DAY + timedelta(hours=2)},
        {**base, "id": "p2", "question": "Chunk overlap?", "predicted_at": DAY + timedelta(hours=3), "latency_ms": 70.0},
        {**base, "id": "p3", "question": "", "predicted_at": DAY + timedelta(hours=4)},
    ]


CHUNKS = {"c1": PASSAGE, "c2": "The operations guide lists the quarantine reasons."}


@pytest.fixture(scope="module")
def normalised():
    log = pa.Table.from_pylist(inference_log(), store.INFERENCE_LOG_SCHEMA)
    batch = pa.Table.from_pylist(predictions(), store.PREDICTIONS_SCHEMA)
    return normalise_rows(log, batch, chunk_texts=CHUNKS)


def test_malformed_rows_are_counted_by_reason(normalised) -> None:
    frame, problems = normalised
    assert problems == {
        "batch.missing_question": 1,
        "endpoint.length_mismatch:chunk_ids/sources/scores": 1,
        "endpoint.missing_question": 1,
        "endpoint.missing_status_code": 1,
        "endpoint.missing_timestamp": 1,
    }
    assert len(frame) == 7 + 2
    assert sorted(frame["source"].value_counts().items()) == [("batch", 2), ("endpoint", 7)]
    # pandas in gives the same as Arrow in, including the wrong types Arrow's schema would refuse.
    log = pa.Table.from_pylist(inference_log(), store.INFERENCE_LOG_SCHEMA).to_pandas()
    again, same = normalise_rows(log, pa.Table.from_pylist(predictions(), store.PREDICTIONS_SCHEMA).to_pandas(), chunk_texts=CHUNKS)
    assert same == problems and len(again) == len(frame)
    import pandas as pd

    odd = pd.DataFrame([log_row("x", 1, scores=["high"]), log_row("y", 2, timestamp_ms="yesterday"), log_row("z", 3, found="yes")])
    assert normalise_rows(odd, None)[1] == {"endpoint.bad_scores": 1, "endpoint.unparsable_timestamp": 1, "endpoint.wrong_type:found": 1}
    batch = pd.DataFrame([{**predictions()[0], "predicted_at": "not a time"}, {**predictions()[0], "passages": ["a", "b"]}])
    assert normalise_rows(None, batch)[1] == {"batch.length_mismatch:passages/sources/scores": 1, "batch.unparsable_timestamp": 1}


def test_window_metrics_on_known_rows(normalised) -> None:
    frame, _ = normalised
    rows = window_metrics(frame, DAY - timedelta(days=1), DAY + timedelta(days=1))
    empty, *day = rows
    assert empty["window_start"] == DAY - timedelta(days=1) and empty["request_count"] == 0 and empty["source"] is None
    assert all(empty[metric] is None for metric in ("error_rate", "latency_p50_ms", "groundedness_mean", "source_shares"))
    by_key = {(row["served_model_version"], row["source"]): row for row in day}
    assert set(by_key) == {("3", "batch"), ("3", "endpoint"), ("4", "endpoint")}

    served = by_key[("3", "endpoint")]
    assert served["request_count"] == 5
    assert served["error_rate"] == pytest.approx(1 / 5) and served["client_error_rate"] == 0.0
    assert served["latency_p50_ms"] == pytest.approx(250.0)  # of the answered four: the failed request's 400 ms is not an answer's
    assert served["latency_p95_ms"] == pytest.approx(np.percentile([100, 200, 300, 500], 95))
    assert served["question_tokens_mean"] == pytest.approx(6.0)
    assert served["answer_tokens_mean"] == pytest.approx((9 + 9 + 8) / 3)  # the three answer requests
    assert served["no_answer_rate"] == pytest.approx(1 / 3)  # a, b answered, c did not; /search and the error are not asked
    assert served["empty_retrieval_rate"] == 0.0
    assert served["top1_score_mean"] == pytest.approx((0.8 + 0.2 + 0.8 + 0.8) / 4)
    assert served["source_shares"] == {"operations-guide.pdf": 1.0, "chunking-notes.md": 0.75}
    # a is copied from chunk c1; b's answer is not in chunk c2.
    assert served["groundedness_mean"] == pytest.approx((1.0 + 0.0) / 2)
    assert served["out_of_corpus_rate"] == pytest.approx(1 / 4)  # vector-mode top scores 0.8, 0.2, 0.8, 0.8 against 0.3
    assert served["query_drift"] is None  # no question vectors attached
    grades = [textstat.flesch_kincaid_grade(text) for text in ("Chunks overlap by 32 tokens by default.", SIMPLE)]
    assert served["flesch_kincaid_grade"] == pytest.approx(np.mean(grades))

    # Version 4's one chunk has left the index: no passages, so no groundedness rather than a guess.
    assert by_key[("4", "endpoint")]["groundedness_mean"] is None
    refusing = by_key[("4", "endpoint")]
    assert refusing["request_count"] == 2 and (refusing["error_rate"], refusing["client_error_rate"]) == (0.0, 0.5)

    batch = by_key[("3", "batch")]
    assert batch["request_count"] == 2 and batch["latency_p50_ms"] == pytest.approx(60.0)
    assert batch["error_rate"] is None and batch["client_error_rate"] is None and batch["question_tokens_mean"] is None  # not recorded for batch rows
    assert batch["groundedness_mean"] == pytest.approx(1.0)
    assert batch["out_of_corpus_rate"] is None  # hybrid scores are not cosines


def test_token_counts_for_batch_rows_when_a_counter_is_given() -> None:
    batch = pa.Table.from_pylist(predictions()[:2], store.PREDICTIONS_SCHEMA)
    frame, _ = normalise_rows(None, batch, count_tokens=lambda text: len(text.split()))
    (row,) = window_metrics(frame, DAY, DAY + timedelta(days=1))
    assert row["question_tokens_mean"] == pytest.approx((5 + 2) / 2)


def test_windows_align_on_the_epoch() -> None:
    assert window_floor(DAY + timedelta(hours=13), "1d") == DAY
    assert window_floor(DAY + timedelta(hours=13, minutes=5), "6h") == DAY + timedelta(hours=12)
    frame, _ = normalise_rows(pa.Table.from_pylist(inference_log()[:3], store.INFERENCE_LOG_SCHEMA), None)
    rows = window_metrics(frame, DAY, DAY + timedelta(hours=1), MonitoringConfig(window="30m"))
    assert [row["request_count"] for row in rows] == [2, 1]
    assert len(reference_rows(frame, MonitoringConfig(window="15m"))) == 1  # the first 15 minutes: request a


def test_readability_is_textstat_and_orders_texts() -> None:
    rows = [log_row("s", 1, answer=SIMPLE), log_row("c", 2, answer=COMPLEX)]
    frame, _ = normalise_rows(pa.Table.from_pylist(rows, store.INFERENCE_LOG_SCHEMA), None)
    simple, complex_ = (window_metrics(frame, DAY, DAY + timedelta(minutes=n), MonitoringConfig(window="1m"))[-1] for n in (2, 3))
    assert simple["flesch_kincaid_grade"] == pytest.approx(textstat.flesch_kincaid_grade(SIMPLE))
    assert simple["automated_readability_index"] == pytest.approx(textstat.automated_readability_index(SIMPLE))
    assert complex_["flesch_kincaid_grade"] == pytest.approx(textstat.flesch_kincaid_grade(COMPLEX))
    assert simple["flesch_kincaid_grade"] < 3 < 15 < complex_["flesch_kincaid_grade"]
    assert simple["automated_readability_index"] < complex_["automated_readability_index"]


def test_drift_statistics_of_known_distributions() -> None:
    rng = np.random.default_rng(7)
    reference = rng.normal(0.0, 1.0, 2000)
    same = drift_metrics(reference, reference)
    assert same["population_stability_index"] == pytest.approx(0.0, abs=1e-12) and same["js_distance"] == pytest.approx(0.0, abs=1e-6)
    assert same["ks_test"]["pvalue"] == pytest.approx(1.0)

    resampled = drift_metrics(reference, rng.normal(0.0, 1.0, 2000))
    assert resampled["population_stability_index"] < 0.05 and resampled["js_distance"] < 0.1
    assert resampled["ks_test"]["pvalue"] > 0.01

    shifted = drift_metrics(reference, rng.normal(1.0, 1.0, 2000))
    assert shifted["population_stability_index"] > 0.25
    assert shifted["js_distance"] > 0.3
    assert shifted["ks_test"]["pvalue"] < 1e-10 and shifted["ks_test"]["statistic"] > 0.3
    assert shifted["reference_count"] == shifted["current_count"] == 2000

    assert drift_metrics([], [1.0])["population_stability_index"] is None
    too_few = drift_metrics(reference[:10], reference[:10], min_count=20)
    assert too_few["js_distance"] is None and too_few["current_count"] == 10
    constant = drift_metrics([5.0] * 50, [5.0] * 40 + [9.0] * 10)  # one distinct reference value: below, equal, above
    assert constant["population_stability_index"] > 0.25
    two_values = drift_metrics([0.0] * 50 + [1.0] * 50, [0.0] * 90 + [1.0] * 10)  # split at the upper value
    assert two_values["population_stability_index"] > 0.25


def test_psi_stays_quiet_on_samples_of_one_distribution_and_is_null_below_its_minimum() -> None:
    """A fresh sample always has values just past the reference's range: PSI's outer bins are open,
    so they are no drift. On 500 values a side the 0.1 level is seldom crossed by chance, and 0.25
    never; on 50 it would be nearly always, so PSI is null there while the KS test, valid at any
    size, is not."""
    rng = np.random.default_rng(11)
    quiet = np.array([drift_metrics(rng.lognormal(size=500), rng.lognormal(size=500))["population_stability_index"] for _ in range(200)])
    assert np.mean(quiet > 0.1) <= 0.02 and quiet.max() < 0.25 and np.median(quiet) < 0.05, (np.mean(quiet > 0.1), quiet.max())
    noisy = np.array([drift_metrics(rng.lognormal(size=50), rng.lognormal(size=50))["population_stability_index"] for _ in range(200)])
    assert np.mean(noisy > 0.1) > 0.9, "why PSI needs its minimum: on 50 a side, noise alone crosses 0.1"
    reference = rng.normal(size=500)
    beyond = drift_metrics(reference, np.append(reference[:499], reference.max() + 0.01))
    assert beyond["population_stability_index"] < 1e-3, "one value past the maximum is no drift"
    small = drift_metrics(rng.normal(size=50), rng.normal(size=50), min_count=20, psi_min_count=500)
    assert small["population_stability_index"] is None and small["ks_test"]["pvalue"] > 0.01 and small["js_distance"] is not None
    assert MonitoringConfig().psi_min_count == 500


def test_column_drift_names_every_drift_column(normalised) -> None:
    frame, _ = normalised
    drift = column_drift(frame, frame)
    assert set(drift) == set(DRIFT_COLUMNS)
    assert drift["latency_ms"]["population_stability_index"] == pytest.approx(0.0, abs=1e-12)
    assert drift["question_top_cosine"]["ks_test"] is None  # no vectors attached


def test_config_parsing_and_its_errors() -> None:
    config = MonitoringConfig.from_mapping(
        {
            "window": "6h",
            "reference": {"start": "2026-11-01", "end": "2026-11-08"},
            "out_of_corpus_floor": 0.35,
            "thresholds": {
                "error_rate": {"warn": 0.01, "error": 0.05},
                "latency_p95_ms": {"warn": 2000},
                "no_answer_rate": None,
                "top1_score.population_stability_index": {"error": 0.5},
            },
        }
    )
    assert config.window_length == timedelta(hours=6) and config.reference == "fixed"
    assert config.reference_start == datetime(2026, 11, 1, tzinfo=UTC)
    metrics = {threshold.metric: threshold for threshold in config.thresholds}
    assert "no_answer_rate" not in metrics and metrics["error_rate"].warn == 0.01 and "groundedness_mean" in metrics
    assert MonitoringConfig.from_mapping(None) == MonitoringConfig()
    for raw, setting in [
        ({"window": "daily"}, "monitoring.window"),
        ({"window": "7m"}, "'7m' cannot be a partition schedule"),  # refused with the settings, not when the definitions load
        ({"windows": "1d"}, "unknown setting"),
        ({"reference": "yesterday"}, "monitoring.reference"),
        ({"reference": {"kind": "fixed", "start": "2026-11-08", "end": "2026-11-01"}}, "monitoring.reference"),
        ({"reference": {"kind": "fixed"}}, "needs start and end"),
        ({"out_of_corpus_floor": "high"}, "monitoring.out_of_corpus_floor"),
        ({"plot_windows": 0}, "monitoring.plot_windows"),
        ({"thresholds": {"happiness": {"warn": 1}}}, "monitoring.thresholds.happiness"),
        ({"thresholds": {"error_rate": {"warn": 0.5, "error": 0.1}}}, "monitoring.thresholds.error_rate"),
        ({"thresholds": {"error_rate": {"warning": 0.1}}}, "monitoring.thresholds.error_rate"),
        ({"thresholds": {"error_rate": {}}}, "monitoring.thresholds.error_rate"),
    ]:
        with pytest.raises(ValueError, match=setting):
            MonitoringConfig.from_mapping(raw)


def test_thresholds_give_severity_per_metric() -> None:
    config = MonitoringConfig.from_mapping({"thresholds": {"ks_test": {"warn": 0.01}, "top1_score.population_stability_index": {"warn": 0.2}}})
    rng = np.random.default_rng(3)
    reference = rng.normal(0.0, 1.0, 500)
    drift = {"top1_score": drift_metrics(reference, rng.normal(2.0, 1.0, 500)), "latency_ms": drift_metrics(reference, reference)}
    row = {"error_rate": 0.3, "client_error_rate": 0.25, "no_answer_rate": 0.4, "groundedness_mean": 0.9, "out_of_corpus_rate": None}
    outcomes = {outcome.name: outcome for outcome in evaluate_thresholds(row, drift, config)}
    assert set(outcomes) == set(check_names(config))
    assert outcomes["error_rate"] == CheckOutcome("error_rate", "ERROR", 0.3, 0.2, False)
    assert outcomes["client_error_rate"] == CheckOutcome("client_error_rate", "WARN", 0.25, 0.2, False)  # no ERROR level
    assert outcomes["no_answer_rate"] == CheckOutcome("no_answer_rate", "WARN", 0.4, 0.3, False)
    assert outcomes["groundedness_mean"] == CheckOutcome("groundedness_mean", "WARN", 0.9, 0.7, True)  # below is bad
    assert outcomes["out_of_corpus_rate"].passed and outcomes["out_of_corpus_rate"].value is None  # nothing to judge
    assert not outcomes["top1_score_population_stability_index"].passed  # the scoped level: WARN at 0.2
    assert outcomes["top1_score_population_stability_index"].severity == "WARN"
    assert outcomes["latency_ms_population_stability_index"].passed
    assert not outcomes["top1_score_ks_test"].passed and outcomes["latency_ms_ks_test"].passed  # judged on the p-value
    grounded = {outcome.name: outcome for outcome in evaluate_thresholds({"groundedness_mean": 0.4}, None, config)}["groundedness_mean"]
    assert grounded.severity == "ERROR"


def test_series_and_plot_keep_gaps(normalised) -> None:
    import matplotlib.image

    frame, _ = normalised
    rows = window_metrics(frame, DAY - timedelta(days=2), DAY + timedelta(days=1))
    starts, values = metric_series(rows, "latency_p50_ms", source="endpoint")
    assert starts == [DAY - timedelta(days=2), DAY - timedelta(days=1), DAY] and values[:2] == [None, None]
    assert values[2] == pytest.approx((250.0 * 5 + 600.0 * 2) / 7)  # versions 3 and 4 (answered requests' p50), weighted by request count
    png = metric_plot(starts, values, "latency p50 (ms)", threshold={"WARN": 400, "ERROR": 800}, ylabel="ms")
    assert png.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert image.ndim == 3 and image.shape[0] > 100
    assert metric_plot(starts, [None, None, None], "nothing").startswith(PNG_SIGNATURE)
    table = markdown_table(starts, values, "latency p50 (ms)", threshold=300)
    assert "| 2026-11-18 | – |" in table and "(threshold)" in table
    with pytest.raises(ValueError, match="3 windows for 2 values"):
        metric_plot(starts, {"endpoint": values, "batch": [1.0, 2.0]}, "latency p50 (ms)")


def test_series_weigh_by_requests_or_questions_and_count_an_idle_source_as_zero() -> None:
    day, next_day, later = DAY, DAY + timedelta(days=1), DAY + timedelta(days=2)
    rows = [
        {"window_start": day, "source": "endpoint", "served_model_version": "1", "request_count": 1, "question_count": 10,
         "no_answer_rate": 1.0, "latency_p50_ms": 100.0},
        {"window_start": day, "source": "endpoint", "served_model_version": "2", "request_count": 5, "question_count": 5,
         "no_answer_rate": 0.0, "latency_p50_ms": 400.0},
        {"window_start": next_day, "source": "batch", "served_model_version": "2", "request_count": 3, "question_count": 3},
        {"window_start": later, "source": None, "served_model_version": None},  # a window with no row computed: a gap
    ]
    assert metric_series(rows, "no_answer_rate", source="endpoint")[1][0] == pytest.approx(10 / 15)  # by questions
    assert metric_series(rows, "latency_p50_ms", source="endpoint")[1][0] == pytest.approx((100 + 5 * 400) / 6)  # by requests
    assert metric_series(rows, "request_count", source="endpoint")[1] == [6.0, 0.0, None]  # idle in a computed window: 0
    assert metric_series(rows, "question_count")[1] == [15.0, 3.0, None]


def test_a_null_later_question_is_counted_as_malformed_and_its_request_kept(tmp_path: Path) -> None:
    from llmops_dagster.core import monitoring_table

    lance = store.LanceStore(str(tmp_path / "lancedb"))
    lance.apply(store.CHUNKS, store.CHUNKS_SCHEMA, "id", pa.Table.from_pylist(
        [{"id": chunk, "doc_id": "d", "source": "n.md", "ordinal": n, "text": text} for n, (chunk, text) in enumerate(CHUNKS.items())],
        store.CHUNKS_SCHEMA), [])
    later = [None, {"question": "Is it copied?", "answer": PASSAGE, "found": True, "chunk_ids": ["c1"], "sources": ["n.md"], "scores": [0.9]}]
    logged = pa.Table.from_pylist([log_row("r", 1, later_questions=later)], store.INFERENCE_LOG_SCHEMA)
    lance.append(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, logged)
    frame, problems = monitoring_table.frame_between(lance, DAY, DAY + timedelta(days=1), monitoring_table.Scoring())
    assert problems == {"endpoint.wrong_type:later_questions": 1}
    assert frame["question"].tolist() == ["How much do chunks overlap?", "Is it copied?"] and frame["passages"].tolist()[1] == [PASSAGE]


def test_plots_draw_each_source_as_its_own_line(normalised) -> None:
    """The endpoint's requests and the batch predictions are two populations: each is a line of its
    own colour, never one line of their averaged percentiles."""
    from PIL import Image

    from llmops_dagster.core import monitoring_table
    from llmops_dagster.core.monitoring import MonitoringConfig

    def colours(png: bytes) -> set[tuple[int, int, int]]:
        return set(Image.open(io.BytesIO(png)).convert("RGB").getdata())

    def has(found: set[tuple[int, int, int]], hex_colour: str) -> bool:
        wanted = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
        return any(all(abs(a - b) <= 24 for a, b in zip(colour, wanted, strict=True)) for colour in found)

    frame, _ = normalised
    rows = window_metrics(frame, DAY - timedelta(days=1), DAY + timedelta(days=1))
    starts = [DAY - timedelta(days=1), DAY]
    both = dict(monitoring_table.metric_plots(rows, starts, MonitoringConfig()))["latency_p50_ms"]
    alone = dict(monitoring_table.metric_plots([row for row in rows if row["source"] != "batch"], starts, MonitoringConfig()))["latency_p50_ms"]
    assert has(colours(both), "#1f77b4") and has(colours(both), "#2ca02c")  # endpoint, then batch
    assert has(colours(alone), "#1f77b4") and not has(colours(alone), "#2ca02c")


@pytest.fixture(scope="module")
def embedder_and_corpus():
    """The packaged all-MiniLM-L6-v2 and the vectors of the three short sample documents' chunks."""
    from llmops_dagster.core.chunking import ChunkConfig, Chunker
    from llmops_dagster.core.documents import parse_file
    from llmops_dagster.core.embedding import EmbedderConfig, load_embedder

    embedder = load_embedder(EmbedderConfig(precision="fp32", device="cpu"))
    chunker = Chunker(embedder.tokenizer, ChunkConfig(), embedder.max_tokens)
    names = ("chunking-notes.md", "release-checklist.txt", "vector-search-primer.html")
    texts = [chunk.text for name in names for chunk in chunker.chunk(name, parse_file(CORPUS / name, 1 << 30).blocks)]
    return embedder, embedder.encode(texts)


# Paraphrases of gold questions (sample_corpus/questions) about the three short documents.
PARAPHRASES = [
    "How does squared Euclidean distance relate to cosine similarity when vectors have unit length?",
    "What are BM25's two common parameters, and what does each control?",
    "Why does hybrid search combine results by rank rather than summing vector and keyword scores?",
    "Why can't a chunk budget counted in characters or words be trusted?",
    "Which chunk sizes usually suit manuals and notes?",
    "What breaks when chunk identifiers depend on their position in the document?",
    "When is a release regarded as complete?",
    "Why check the quarantine table before a promotion during a release?",
]
COOKING = [
    "How long should I boil an egg for a soft yolk?",
    "What temperature do I roast a whole chicken at?",
    "How do I make a sourdough starter from scratch?",
    "Which spices go into a garam masala blend?",
    "How can I stop pasta from sticking together?",
    "What is the best way to caramelise onions?",
    "How much salt goes into bread dough?",
    "How do I keep guacamole from turning brown?",
]


def test_query_drift_separates_off_topic_questions_from_paraphrases(embedder_and_corpus) -> None:
    embedder, corpus = embedder_and_corpus
    centroid = corpus_centroid(corpus)
    floor = MonitoringConfig().out_of_corpus_floor
    covered, cooking = embedder.encode(PARAPHRASES), embedder.encode(COOKING)
    assert out_of_corpus_rate(top_cosine(covered, corpus), floor) <= 0.125
    assert out_of_corpus_rate(top_cosine(cooking, corpus), floor) == 1.0
    assert query_drift(cooking, centroid) > query_drift(covered, centroid) + 0.3
    # A window that drifts halfway to cooking sits between the two.
    half = query_drift(np.vstack([covered[:4], cooking[:4]]), centroid)
    assert query_drift(covered, centroid) < half < query_drift(cooking, centroid)


def test_window_metrics_with_question_vectors(embedder_and_corpus) -> None:
    from llmops_dagster.core.monitoring import attach_question_vectors

    embedder, corpus = embedder_and_corpus
    rows = [log_row(str(i), i, question=q, mode="hybrid") for i, q in enumerate(PARAPHRASES)]
    rows += [log_row(f"k{i}", 24 * 60 + i, question=q, mode="hybrid") for i, q in enumerate(COOKING)]
    frame, _ = normalise_rows(pa.Table.from_pylist(rows, store.INFERENCE_LOG_SCHEMA), None)
    frame = attach_question_vectors(frame, embedder.encode, corpus)
    first, second = window_metrics(frame, DAY, DAY + timedelta(days=2), corpus_centroid=corpus_centroid(corpus))
    assert first["out_of_corpus_rate"] <= 0.125 and second["out_of_corpus_rate"] == 1.0
    assert second["query_drift"] > first["query_drift"] + 0.3
    drift = column_drift(reference_rows(frame, MonitoringConfig()), frame[frame["timestamp"] >= DAY + timedelta(days=1)])
    assert drift["question_top_cosine"]["population_stability_index"] > 0.25


def test_unanswered_questions_group_by_meaning(embedder_and_corpus) -> None:
    embedder, _ = embedder_and_corpus
    questions = [
        "How long should I boil an egg?",
        "How many minutes do eggs need to boil?",
        "How long do I boil eggs for?",
        "What is the refund policy for cancelled orders?",
        "Can I get my money back if I cancel an order?",
        "How long should I boil an egg?",  # asked twice
        "Who won the 1998 football world cup?",
    ]
    groups = group_unanswered(questions, embedder.encode(questions), threshold=MonitoringConfig().unanswered_distance)
    assert [group["size"] for group in groups] == [4, 2, 1]
    assert groups[0]["representative"] in questions[:3] and set(groups[0]["questions"]) == set(questions[:3])
    assert set(groups[1]["questions"]) == set(questions[3:5])
    assert group_unanswered([], np.zeros((0, 384))) == []
    assert group_unanswered(["only one"], np.ones((1, 384)))[0]["size"] == 1


def _monitoring_store(tmp_path: Path, log: list[dict[str, object]], batch: list[dict[str, object]] | None = None) -> store.LanceStore:
    lance = store.LanceStore(str(tmp_path / "lancedb"))
    lance.append(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, pa.Table.from_pylist(log, store.INFERENCE_LOG_SCHEMA))
    if batch:
        lance.append(store.PREDICTIONS, store.PREDICTIONS_SCHEMA, pa.Table.from_pylist(batch, store.PREDICTIONS_SCHEMA))
    return lance


def _day_of_requests(day: int, count: int, slower: float = 0.0, **fields: object) -> list[dict[str, object]]:
    return [log_row(f"d{day}-{n}", day * 1440 + n, execution_time_ms=100.0 + 7 * n + slower, **fields) for n in range(count)]


def test_the_first_window_reference_is_the_first_with_rows_that_can_be_read(tmp_path: Path) -> None:
    """A first day of malformed rows only (no status codes) left the reference empty, drift unmeasured
    for good, and the drift state said OK. The reference is now the first readable window, and a
    window whose drift was not measured has the state NO_DATA."""
    from llmops_dagster.core import monitoring_table

    log = _day_of_requests(0, 3, status_code=None) + _day_of_requests(1, 30) + _day_of_requests(2, 30, slower=800.0)
    lance = _monitoring_store(tmp_path, log)
    config = MonitoringConfig.from_mapping({"drift_min_count": 3, "psi_min_count": 3, "thresholds": {"out_of_corpus_rate": None}})
    day = timedelta(days=1)
    second = monitoring_table.compute_window(lance, DAY + day, DAY + 2 * day, config, monitoring_table.Scoring())
    assert second.reference == f"first window {(DAY + day).isoformat()}, which holds this window: no drift is measured in it"
    assert monitoring_table.drift_state(second.rows)["state"] == monitoring_table.NO_DATA
    third = monitoring_table.compute_window(lance, DAY + 2 * day, DAY + 3 * day, config, monitoring_table.Scoring())
    assert third.reference == f"first window {(DAY + day).isoformat()} (30 rows)"
    [latency] = [entry for entry in third.rows[0]["drift"] if entry["column"] == "latency_ms"]
    assert latency["population_stability_index"] > 0.25
    assert monitoring_table.drift_state(third.rows)["state"] == monitoring_table.ERROR


def test_the_evaluation_run_is_not_judged_against_itself(tmp_path: Path) -> None:
    """With ``reference: evaluation``, the served version's latest batch run is the reference and
    also falls in a window: that window's batch slice has no drift measured, while its endpoint
    slice is judged against the run."""
    from llmops_dagster.core import monitoring_table

    batch = [{**predictions()[0], "id": f"p{n}", "dagster_run_id": "eval", "latency_ms": 40.0 + n} for n in range(30)]
    lance = _monitoring_store(tmp_path, _day_of_requests(0, 30), batch)
    config = MonitoringConfig.from_mapping({"reference": "evaluation", "drift_min_count": 3, "psi_min_count": 3})
    report = monitoring_table.compute_window(lance, DAY, DAY + timedelta(days=1), config, monitoring_table.Scoring())
    by_source = {row["source"]: row for row in report.rows}
    assert by_source["batch"]["request_count"] == 30 and by_source["batch"]["drift"] == []
    [latency] = [entry for entry in by_source["endpoint"]["drift"] if entry["column"] == "latency_ms"]
    assert latency["reference_count"] == 30 and latency["population_stability_index"] > 0.25


def test_a_generator_that_failed_is_a_generation_error_not_a_missing_answer() -> None:
    """An OpenAI-compatible endpoint that is down answers every question with its error: that is
    the generator failing, not the corpus lacking an answer, and it is counted and judged apart."""
    from llmops_dagster.core.monitoring import row_values, unanswered_questions

    failure = "generation failed: APIConnectionError: Connection refused"
    log = [
        log_row("ok", 1),
        log_row("none", 2, answer=NO_ANSWER, found=False, answer_tokens=12),
        log_row("down-1", 3, answer="Generation failed: APIConnectionError", found=False, answer_tokens=7, error=failure),
        log_row("down-2", 4, answer="Generation failed: APIConnectionError", found=False, answer_tokens=7, error=failure),
        log_row("refused", 5, status_code=400, answer=None, found=None, error="the input needs a 'question' column"),
    ]
    batch = [{**predictions()[0], "error": "Connection refused"}, {**predictions()[1], "error": ""}]
    log_table = pa.Table.from_pylist(log, store.INFERENCE_LOG_SCHEMA)
    frame, problems = normalise_rows(log_table, pa.Table.from_pylist(batch, store.PREDICTIONS_SCHEMA), chunk_texts=CHUNKS)
    assert problems == {}
    rows = {row["source"]: row for row in window_metrics(frame, DAY, DAY + timedelta(days=1))}
    endpoint, offline = rows["endpoint"], rows["batch"]
    assert endpoint["generation_error_rate"] == pytest.approx(2 / 4)  # of the four that asked for an answer
    assert endpoint["no_answer_rate"] == pytest.approx(1 / 2)  # "none" of the two the generator answered
    assert endpoint["answer_tokens_mean"] == pytest.approx((9 + 12) / 2)  # the error text is no answer's length
    assert endpoint["error_rate"] == 0.0 and endpoint["client_error_rate"] == pytest.approx(1 / 5)
    assert offline["generation_error_rate"] == pytest.approx(1 / 2)
    values = row_values(frame)
    assert values["groundedness"][frame["request_id"] == "down-1"].tolist() == [None]
    # Nor do the error texts' lengths drift the answers' token counts.
    from llmops_dagster.core.monitoring import drift_values

    endpoint_rows = frame[frame["source"] == "endpoint"]
    assert sorted(drift_values(endpoint_rows, ["answer_tokens"])["answer_tokens"].tolist()) == [9.0, 12.0]
    assert unanswered_questions(frame) == ["How much do chunks overlap?"]  # "none" only, not the failures


def test_scores_of_another_retrieval_mode_neither_average_in_nor_read_as_drift() -> None:
    """Clients that ask for mode=text get BM25 scores (about 10) where the hybrid default gives
    reciprocal-rank ones (about 0.03): their mix is not a change in retrieval quality."""
    retrieved = {"sources": ["a.md", "b.md"], "chunk_ids": ["c1", "c2"]}
    hybrid = [log_row(f"h{i}", i, mode="hybrid", scores=[0.030 + 0.001 * (i % 5), 0.02], **retrieved) for i in range(40)]
    text = [log_row(f"t{i}", 100 + i, mode="text", scores=[9.0 + i % 3, 4.0], **retrieved) for i in range(10)]
    table = pa.Table.from_pylist([*hybrid, *text], store.INFERENCE_LOG_SCHEMA)
    frame, _ = normalise_rows(table, None, chunk_texts=CHUNKS)
    [row] = [row for row in window_metrics(frame, DAY, DAY + timedelta(days=1)) if row["request_count"]]
    assert row["top1_score_mean"] == pytest.approx(np.mean([0.030 + 0.001 * (i % 5) for i in range(40)]))
    assert row["score_mean"] < 0.05
    reference_table = pa.Table.from_pylist(hybrid[:20], store.INFERENCE_LOG_SCHEMA)
    reference, _ = normalise_rows(reference_table, None, chunk_texts=CHUNKS)
    drift = column_drift(reference, frame[~frame["request_id"].isin([f"h{i}" for i in range(20)])], min_count=5, columns=["top1_score"])
    assert drift["top1_score"]["current_count"] == 20  # the hybrid rows; the text rows' scores are left out
    assert drift["top1_score"]["ks_test"]["pvalue"] > 0.05


def test_a_request_of_several_questions_is_judged_on_each_and_counted_and_timed_once() -> None:
    """``later_questions`` gives a request's second and later questions a row each: answers, tokens,
    no-answers, groundedness and unanswered questions cover all of them; request count, status
    shares and latency count the request once. A later question that cannot be read is counted as
    malformed, and the rest of its request kept."""
    from llmops_dagster.core.monitoring import drift_values, unanswered_questions

    later = [
        {"question": "Where do quarantined files go?", "answer": NO_ANSWER, "found": False, "chunk_ids": ["c2"], "sources": ["ops.md"],
         "scores": [0.3], "question_tokens": 5, "answer_tokens": 8},
        {"question": "What overlap is used?", "answer": "Generation failed: timeout", "found": False, "chunk_ids": ["c1"], "sources": ["n.md"],
         "scores": [0.7], "question_tokens": 4, "answer_tokens": 4, "error": "TimeoutError"},
        {"question": "Is it copied?", "answer": PASSAGE, "found": True, "chunk_ids": ["c1", "c2"], "sources": ["n.md"], "scores": [0.9, 0.1]},
    ]
    log = [log_row("many", 1, execution_time_ms=900.0, later_questions=later), log_row("one", 2, execution_time_ms=100.0)]
    frame, problems = normalise_rows(pa.Table.from_pylist(log, store.INFERENCE_LOG_SCHEMA), None, chunk_texts=CHUNKS)
    assert problems == {"endpoint.length_mismatch:chunk_ids/sources/scores": 1}  # the third later question
    assert frame["request_id"].tolist() == ["many", "many", "many", "one"] and frame["question_index"].tolist() == [0, 1, 2, 0]
    assert frame["mode"].tolist() == ["vector"] * 4 and frame["latency_ms"].tolist() == [900.0] * 3 + [100.0]

    (row,) = window_metrics(frame, DAY, DAY + timedelta(days=1))
    assert (row["request_count"], row["question_count"]) == (2, 4)
    assert row["latency_p50_ms"] == pytest.approx(500.0)  # 900 ms once, not once per question
    assert row["error_rate"] == 0.0
    assert row["question_tokens_mean"] == pytest.approx((6 + 5 + 4 + 6) / 4)
    assert row["generation_error_rate"] == pytest.approx(1 / 4)
    assert row["no_answer_rate"] == pytest.approx(1 / 3)  # of the three the generator answered
    assert row["top1_score_mean"] == pytest.approx((0.8 + 0.3 + 0.7 + 0.8) / 4)
    assert sorted(drift_values(frame, ["latency_ms"])["latency_ms"].tolist()) == [100.0, 900.0]
    assert unanswered_questions(frame) == ["Where do quarantined files go?"]
