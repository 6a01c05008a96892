"""The optional model-based scorers of monitoring: toxicity from a text-classification model and
perplexity from a causal LM, both tiny models built here from the packaged embedding model's
tokenizer (no model hub), their window metrics, thresholds, drift, plots, the settings' errors, and
a ``monitoring`` table written by the schema before them."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from llmops_dagster.core import monitoring_table, plots, store
from llmops_dagster.core.monitoring import (
    DRIFT_COLUMNS,
    MonitoringConfig,
    attach_answer_scores,
    check_names,
    evaluate_thresholds,
    normalise_rows,
    window_metrics,
)
from llmops_dagster.core.scorers import AnswerScorers, ScorersConfig, score_texts
from llmops_dagster.settings import SettingsError, load_settings

DAY = datetime(2026, 11, 20, tzinfo=UTC)
TRAINED = "Chunks overlap by thirty two tokens so a sentence cut at a boundary still appears whole."
UNRELATED = "The weather in the mountains was cold and windy for the whole week of the festival."
TOXIC = ["you are a stupid idiot and i hate you", "shut up you worthless idiot", "i hate you, stupid fool"]
NEUTRAL = ["chunks overlap by thirty two tokens", "the guide lists the quarantine reasons", "the index is rebuilt every night", TRAINED]


@dataclass(frozen=True)
class Models:
    classifier: Path
    language_model: Path


def _tokenizer():
    from transformers import AutoTokenizer

    from llmops_dagster.core.embedding import default_model_path

    return AutoTokenizer.from_pretrained(default_model_path())


def _train(model, batches, steps: int) -> None:
    import torch

    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """A 2-layer GPT-2 that has learnt one sentence, and a 2-layer BERT classifier that has learnt
    which of a few answers are toxic; both with the all-MiniLM-L6-v2 tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("scorer-models")
    tokenizer = _tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            lm = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2, loss_type="ForCausalLMLoss"))
            ids = tokenizer(TRAINED, return_tensors="pt")["input_ids"]
            _train(lm, [{"input_ids": ids, "labels": ids}], steps=40)
            config = BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
                id2label={0: "neutral", 1: "toxic"},
                label2id={"neutral": 0, "toxic": 1},
            )
            classifier = BertForSequenceClassification(config)
            batch = tokenizer(TOXIC + NEUTRAL, return_tensors="pt", padding=True)
            labels = torch.tensor([1] * len(TOXIC) + [0] * len(NEUTRAL))
            _train(classifier, [{**batch, "labels": labels}], steps=30)
        finally:
            torch.set_num_threads(threads)
    for model, folder in ((lm, root / "lm"), (classifier, root / "classifier")):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return Models(classifier=root / "classifier", language_model=root / "lm")


def _config(models: Models, **extra: object) -> MonitoringConfig:
    scorers = {"toxicity": {"model": str(models.classifier), "label": "toxic"}, "perplexity": {"model": str(models.language_model)}}
    return MonitoringConfig.from_mapping({"scorers": scorers, **extra})


def log_row(request_id: str, minutes: float, answer: str | None, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "databricks_request_id": request_id,
        "timestamp_ms": int((DAY + timedelta(minutes=minutes)).timestamp() * 1000),
        "status_code": 200,
        "execution_time_ms": 100.0,
        "served_model_version": "3",
        "endpoint": "/invocations",
        "question": "How much do chunks overlap?",
        "answer": answer,
        "found": True,
        "chunk_ids": ["c1"],
        "sources": ["chunking-notes.md"],
        "scores": [0.8],
        "mode": "vector",
    }
    row.update(fields)
    return row


def inference_log() -> list[dict[str, object]]:
    """Two toxic and two neutral answers, an answer with no text, one the model found none for, a
    failed request and a /search call (neither asks for an answer)."""
    return [
        log_row("t1", 1, TOXIC[0]),
        log_row("t2", 2, TOXIC[1]),
        log_row("n1", 3, NEUTRAL[0]),
        log_row("n2", 4, TRAINED),
        log_row("blank", 5, "   "),
        log_row("none", 6, "I could not find that in the documents.", found=False),
        log_row("failed", 7, None, status_code=500, found=None),
        log_row("search", 8, None, endpoint="/search", found=None),
    ]


def test_perplexity_is_lower_on_what_the_model_learnt(models: Models) -> None:
    scorers = AnswerScorers(ScorersConfig.from_mapping({"perplexity": {"model": str(models.language_model), "batch_size": 2}}))
    scores = scorers.score([TRAINED, UNRELATED, None, ""])["perplexity"]
    trained, unrelated = scores.values[:2]
    assert trained is not None and unrelated is not None
    assert 1.0 <= trained < 5.0, trained  # learnt: nearly every next token is certain
    assert unrelated > 20 * trained, (trained, unrelated)
    assert scores.values[2:] == [None, None] and scores.skipped == {"empty_answer": 2}
    # Padding is masked out: a text scores the same alone as beside a longer one in a batch.
    alone = AnswerScorers(ScorersConfig.from_mapping({"perplexity": {"model": str(models.language_model)}}))
    assert alone.score([TRAINED])["perplexity"].values[0] == pytest.approx(trained, rel=1e-4)
    # Truncation: only the first max_tokens tokens count, so the learnt start of a long text dominates.
    short = AnswerScorers(ScorersConfig.from_mapping({"perplexity": {"model": str(models.language_model), "max_tokens": 8}}))
    cut = short.score([TRAINED + " " + UNRELATED])["perplexity"].values[0]
    assert cut is not None and cut < 5.0


def test_toxicity_is_the_toxic_labels_probability(models: Models) -> None:
    from transformers import pipeline

    scorers = AnswerScorers(ScorersConfig.from_mapping({"toxicity": {"model": str(models.classifier)}}))
    toxic, neutral = scorers.score([TOXIC[0], NEUTRAL[0]])["toxicity"].values
    assert toxic is not None and neutral is not None and 0.0 <= neutral < 0.5 < toxic <= 1.0
    # The same probability the pipeline gives the "toxic" label, and one minus that of "neutral".
    classifier = pipeline("text-classification", model=str(models.classifier), device="cpu")
    [labels] = classifier([TOXIC[0]], top_k=None)
    by_label = {entry["label"]: entry["score"] for entry in labels}
    assert toxic == pytest.approx(by_label["toxic"], abs=1e-6) and by_label["neutral"] == pytest.approx(1 - toxic, abs=1e-6)


class _Flaky:
    """Fails on one text, and on any batch holding it: the failure must cost that text only."""

    batch_size = 4

    def score(self, texts: list[str]) -> list[float]:
        if "boom" in texts:
            raise RuntimeError("scorer broke")
        return [float("inf") if text == "inf" else 0.25 for text in texts]


def test_a_failed_or_unscorable_answer_is_null_with_a_reason() -> None:
    scores = score_texts(_Flaky(), ["fine", "boom", "inf", None, "fine"])
    assert scores.values == [0.25, None, None, None, 0.25]
    assert scores.reasons == [None, "failed:RuntimeError", "not_finite", "empty_answer", None]
    assert scores.skipped == {"failed:RuntimeError": 1, "not_finite": 1, "empty_answer": 1}


def test_window_metrics_with_scorers(models: Models) -> None:
    from transformers import pipeline

    config = _config(models, thresholds={"toxicity_max": {"warn": 0.5, "error": 0.9}, "perplexity.population_stability_index": {"warn": 0.1}})
    log = pa.Table.from_pylist(inference_log(), store.INFERENCE_LOG_SCHEMA)
    frame, problems = normalise_rows(log, None)
    assert problems == {}
    scored = attach_answer_scores(frame, AnswerScorers(config.scorers))
    [row] = window_metrics(scored, DAY, DAY + timedelta(days=1), config)

    # The window's mean is the mean of what the pipeline itself gives the four answered rows.
    answered = [TOXIC[0], TOXIC[1], NEUTRAL[0], TRAINED]
    classifier = pipeline("text-classification", model=str(models.classifier), device="cpu")
    expected = [next(e["score"] for e in labels if e["label"] == "toxic") for labels in classifier(answered, top_k=None)]
    assert row["toxicity_mean"] == pytest.approx(float(np.mean(expected)), abs=1e-6)
    assert row["toxicity_max"] == pytest.approx(max(expected), abs=1e-6)
    assert row["toxic_rate"] == pytest.approx(sum(score > 0.5 for score in expected) / 4)
    assert row["toxic_rate"] == 0.5  # the two toxic answers, not the neutral ones
    perplexities = [value for value in scored["perplexity"] if value is not None and not np.isnan(value)]
    assert len(perplexities) == 4 and row["perplexity_p50"] == pytest.approx(float(np.median(perplexities)))
    # Rows without a score are counted by reason; the failed request and /search asked for no answer.
    assert row["scorer_skipped"] == {
        "perplexity.empty_answer": 1,
        "perplexity.no_answer": 1,
        "toxicity.empty_answer": 1,
        "toxicity.no_answer": 1,
    }

    # Thresholds and drift treat them like the other metrics.
    names = check_names(config)
    assert "toxicity_max" in names and "perplexity_population_stability_index" in names and "toxicity_population_stability_index" in names
    assert config.drift_columns[-2:] == ("toxicity", "perplexity")
    outcomes = {outcome.name: outcome for outcome in evaluate_thresholds(row, {}, config)}
    assert (outcomes["toxicity_max"].passed, outcomes["toxicity_max"].severity) == (False, "ERROR" if max(expected) > 0.9 else "WARN")


def test_a_window_in_the_table_with_scorers_drift_and_plots(models: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compute_window over a Lance inference log: the scores reach the table, drift compares them
    with the first window's (here: neutral answers, then toxic ones), and they are plotted."""
    config = _config(models, drift_min_count=2, psi_min_count=2)
    lance = store.LanceStore(str(tmp_path / "lancedb"))
    calm = [log_row(f"c{n}", n, NEUTRAL[n % 3]) for n in range(6)]
    rough = [log_row(f"r{n}", 24 * 60 + n, TOXIC[n % 3]) for n in range(6)]
    lance.append(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, pa.Table.from_pylist(calm + rough, store.INFERENCE_LOG_SCHEMA))
    scoring = monitoring_table.Scoring(scorers=AnswerScorers(config.scorers))
    next_day = DAY + timedelta(days=1)
    for begin in (DAY, next_day):
        monitoring_table.write_window(lance, monitoring_table.compute_window(lance, begin, begin + timedelta(days=1), config, scoring))
    rows = {row["window_start"]: row for row in monitoring_table.read_rows(lance)}
    assert rows[DAY]["toxicity_mean"] < 0.5 < rows[next_day]["toxicity_mean"]
    assert str(models.classifier) in rows[next_day]["scorers"] and str(models.language_model) in rows[next_day]["scorers"]
    drift = {entry["column"]: entry for entry in rows[next_day]["drift"]}
    assert drift["toxicity"]["population_stability_index"] > 0.25 and drift["perplexity"]["current_count"] == 6
    verdicts = monitoring_table.window_verdicts([rows[next_day]], check_names(config))
    assert not next(v for v in verdicts if v.name == "toxicity_population_stability_index").passed

    # Plotted like the other metrics (the drawing itself is test_monitoring_core's: here, what is drawn).
    drawn: dict[str, dict[str, list[float | None]]] = {}

    def draw(windows: list[datetime], values: dict[str, list[float | None]], title: str, threshold: object = None) -> bytes:
        drawn[title] = dict(values)  # a line per source
        buffer = io.BytesIO()
        Image.new("RGB", (2, 2)).save(buffer, "PNG")
        return buffer.getvalue()

    monkeypatch.setattr(plots, "metric_plot", draw)
    shown = monitoring_table.metric_plots(list(rows.values()), [DAY, next_day], config)
    assert [metric for metric, _ in shown] == list(monitoring_table.plotted(config))
    assert {"toxicity_mean", "toxicity_max", "toxic_rate", "perplexity_mean", "perplexity_p50"} <= set(drawn)
    assert drawn["toxicity_max"] == {"endpoint": [rows[DAY]["toxicity_max"], rows[next_day]["toxicity_max"]]}
    summary = monitoring_table.summary_markdown(next_day, next_day + timedelta(days=1), [rows[next_day]], verdicts)
    assert f"Model-based scorers: toxicity on: model {models.classifier}" in summary and "toxicity_mean" in summary


def test_scorers_off_say_so_and_give_null_metrics() -> None:
    config = MonitoringConfig()
    assert config.scorers.configured == () and config.drift_columns == DRIFT_COLUMNS
    assert "monitoring.scorers.toxicity" in config.scorers.describe() and "monitoring.scorers.perplexity" in config.scorers.describe()
    assert config.scorers.states() == {
        "toxicity": "off: monitoring.scorers.toxicity is not set",
        "perplexity": "off: monitoring.scorers.perplexity is not set",
    }
    frame, _ = normalise_rows(pa.Table.from_pylist(inference_log(), store.INFERENCE_LOG_SCHEMA), None)
    [row] = window_metrics(frame, DAY, DAY + timedelta(days=1), config)
    assert all(row[metric] is None for metric in monitoring_table.SCORER_METRICS) and row["scorer_skipped"] == {}
    assert not any("toxicity" in name or "perplexity" in name for name in check_names(config))
    assert not set(monitoring_table.SCORER_METRICS) & set(monitoring_table.plotted(config))
    summary = monitoring_table.summary_markdown(DAY, DAY + timedelta(days=1), [], [])
    assert "Model-based scorers: off: no local scorer model is configured" in summary
    with pytest.raises(ValueError, match="monitoring.thresholds.toxicity_mean: the toxicity scorer is off"):
        MonitoringConfig.from_mapping({"thresholds": {"toxicity_mean": {"warn": 0.2}}})


def test_bad_scorer_settings_fail_when_the_settings_load(models: Models, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    for scorers, message in [
        ({"toxicity": {"model": str(missing)}}, f"monitoring.scorers.toxicity.model: {missing} does not exist"),
        ({"toxicity": {"model": str(models.classifier), "label": "TOXIC"}}, "has no label 'TOXIC'; its labels: neutral, toxic"),
        ({"perplexity": {"model": str(models.classifier)}}, "is a BertForSequenceClassification, not a causal language model"),
        ({"perplexity": {"model": str(models.language_model), "max_tokens": 0}}, "monitoring.scorers.perplexity.max_tokens"),
        ({"toxicity": {"label": "toxic"}}, "monitoring.scorers.toxicity.model: required"),
        ({"sentiment": {"model": str(models.classifier)}}, "monitoring.scorers: unknown key"),
    ]:
        with pytest.raises(ValueError, match=message):
            MonitoringConfig.from_mapping({"scorers": scorers})
    # Through the declaration file: the settings load, not the run, reports it.
    declaration = yaml.safe_load((Path(__file__).resolve().parents[1] / "environments.yaml").read_text())
    declaration["environments"]["test"] = {"monitoring": {"scorers": {"toxicity": {"model": str(missing)}}}}
    path = tmp_path / "environments.yaml"
    path.write_text(yaml.safe_dump(declaration))
    with pytest.raises(SettingsError, match=f"environment 'test': monitoring.scorers.toxicity.model: {missing} does not exist"):
        load_settings("test", declaration=path)


def test_a_table_written_before_the_scorers_still_reads_and_takes_new_rows(tmp_path: Path) -> None:
    """Rows of the previous schema read back with null scores; the next write rewrites the table in
    today's schema, keeping them."""
    new_fields = {*monitoring_table.SCORER_METRICS, "scorers", "scorer_skipped"}
    old_schema = pa.schema([field for field in monitoring_table.MONITORING_SCHEMA if field.name not in new_fields])
    lance = store.LanceStore(str(tmp_path / "lancedb"))
    old_row = {
        "id": "old",
        "window_key": monitoring_table.window_key(DAY),
        "window_start": DAY,
        "window_end": DAY + timedelta(days=1),
        "source": "endpoint",
        "request_count": 3,
        "error_rate": 0.0,
    }
    lance.append(monitoring_table.MONITORING, old_schema, pa.Table.from_pylist([old_row], old_schema))
    [read] = monitoring_table.read_rows(lance)
    assert read["request_count"] == 3 and read["toxicity_mean"] is None and read["scorer_skipped"] is None
    assert "Model-based scorers: off" in monitoring_table.summary_markdown(DAY, DAY + timedelta(days=1), [read], [])

    next_day = DAY + timedelta(days=1)
    report = monitoring_table.compute_window(lance, next_day, next_day + timedelta(days=1), MonitoringConfig(), monitoring_table.Scoring())
    monitoring_table.write_window(lance, report)
    assert lance.open(monitoring_table.MONITORING).schema.names == monitoring_table.MONITORING_SCHEMA.names
    rows = monitoring_table.read_rows(lance)
    assert [row["window_start"] for row in rows] == [DAY, next_day] and rows[0]["error_rate"] == 0.0
    assert rows[1]["scorers"] == monitoring_table.SCORERS_OFF and rows[1]["toxicity_mean"] is None


def test_the_monitoring_asset_names_its_scorer_models(models: Models, tmp_path: Path) -> None:
    """Materialized with both scorers: the metadata names each model, the window's figures include
    the scores, and the rows without a score are counted."""
    import dagster as dg

    from llmops_dagster.assets.monitoring import build_monitoring_assets
    from llmops_dagster.core.embedding import EmbedderConfig
    from llmops_dagster.resources import EmbedderResource, LanceDBResource
    from llmops_dagster.resources.section import SettingsSection

    config = _config(models, start="2026-11-01")
    lance = store.LanceStore(str(tmp_path / "lancedb"))
    lance.append(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, pa.Table.from_pylist(inference_log(), store.INFERENCE_LOG_SCHEMA))
    monitoring_asset, _ = build_monitoring_assets("test", config)
    result = dg.materialize(
        [monitoring_asset],
        partition_key=DAY.strftime("%Y-%m-%d"),
        resources={"lancedb": LanceDBResource(uri=lance.uri), "embedder": EmbedderResource(embedding=SettingsSection.of(EmbedderConfig()))},
    )
    [event] = result.get_asset_materialization_events()
    metadata = event.step_materialization_data.materialization.metadata
    described = metadata["model_based_scorers"].value
    assert f"toxicity on: model {models.classifier}, label 'toxic'" in described and f"perplexity on: model {models.language_model}" in described
    assert metadata["scorer_skipped"].value == {
        "perplexity.empty_answer": 1,
        "perplexity.no_answer": 1,
        "toxicity.empty_answer": 1,
        "toxicity.no_answer": 1,
    }
    assert 0.0 < metadata["endpoint/toxicity_mean"].value < 1.0 and metadata["endpoint/perplexity_p50"].value > 1.0
    assert metadata["plots"].value.count("data:image/png;base64,") == len(monitoring_table.plotted(config))


def test_a_configured_toxicity_scorer_brings_a_default_toxic_rate_threshold(models: Models) -> None:
    """On by default once the scorer is on; off with it; overridable and droppable like the others."""
    on = _config(models)
    assert {t.metric: (t.warn, t.error, t.bad) for t in on.thresholds}["toxic_rate"] == (0.01, 0.05, "above")
    assert "toxic_rate" in check_names(on)
    outcome = next(o for o in evaluate_thresholds({"toxic_rate": 0.02}, {}, on) if o.name == "toxic_rate")
    assert (outcome.passed, outcome.severity) == (False, "WARN")
    assert "toxic_rate" not in check_names(MonitoringConfig.from_mapping({}))
    tuned = _config(models, thresholds={"toxic_rate": {"error": 0.1}})
    assert {t.metric: (t.warn, t.error) for t in tuned.thresholds}["toxic_rate"] == (None, 0.1)
    assert "toxic_rate" not in check_names(_config(models, thresholds={"toxic_rate": None}))
    with pytest.raises(ValueError, match="monitoring.thresholds: a mapping"):
        _config(models, thresholds=None)
