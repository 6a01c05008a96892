"""Pair mining and the query-side adapter, on the sample corpus with the real embedding model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmops_dagster.core.chunking import ChunkConfig, Chunker
from llmops_dagster.core.documents import parse_file
from llmops_dagster.core.embedding import Embedder, EmbedderConfig
from llmops_dagster.core.training import (
    ChunkRecord,
    NotEnoughPairsError,
    Pair,
    TrainingConfig,
    fit,
    mine_pairs,
    split_pairs,
    train_adapter,
)

from helpers import SAMPLE_CORPUS


@pytest.fixture(scope="module")
def corpus() -> tuple[Embedder, list[ChunkRecord], np.ndarray]:
    embedder = Embedder(EmbedderConfig(precision="fp32", device="cpu"))
    chunker = Chunker(embedder.tokenizer, ChunkConfig(), embedder.max_tokens)
    records = []
    for path in sorted(p for p in SAMPLE_CORPUS.iterdir() if p.is_file()):
        for chunk in chunker.chunk(path.name, parse_file(path, 1 << 30).blocks):
            records.append(ChunkRecord(chunk.id, path.name, chunk.heading, chunk.text))
    return embedder, records, embedder.encode([r.text for r in records])


def test_mined_pairs_are_deterministic_and_point_at_the_chunks_that_hold_them(corpus) -> None:
    _, records, _ = corpus
    pairs = mine_pairs(records)
    assert pairs == mine_pairs(list(reversed(records)))
    assert {p.kind for p in pairs} == {"heading", "cloze"}
    by_id = {r.id: r for r in records}
    for pair in pairs:
        assert pair.relevant and pair.relevant <= by_id.keys()
        if pair.kind == "cloze":
            assert all(pair.query in by_id[chunk_id].text for chunk_id in pair.relevant)
        else:
            assert all(by_id[chunk_id].heading == pair.query for chunk_id in pair.relevant)
    assert Pair.from_json(pairs[0].to_json()) == pairs[0]


def test_split_holds_out_unseen_queries_of_every_kind(corpus) -> None:
    _, records, _ = corpus
    pairs = mine_pairs(records)
    train, held_out = split_pairs(pairs, held_out=0.3, seed=3)
    assert len(train) + len(held_out) == len(pairs)
    assert not {p.query for p in train} & {p.query for p in held_out}
    assert {p.kind for p in held_out} == {"heading", "cloze"}
    assert split_pairs(pairs, held_out=0.3, seed=3) == (train, held_out)
    assert split_pairs(pairs, held_out=0.3, seed=4) != (train, held_out)


def test_training_beats_the_base_model_on_held_out_pairs(corpus, tmp_path: Path) -> None:
    embedder, records, vectors = corpus
    config = TrainingConfig()  # the environments' default: adapter mode, seed 0
    report = fit(records, vectors, embedder.encode, embedder.model_path, config, tmp_path)
    assert report.winner == "trained"
    assert report.trained["mrr@10"] > report.base["mrr@10"], (report.base, report.trained)
    assert report.trained["ndcg@10"] >= report.base["ndcg@10"]
    assert report.result.losses[-1] < report.result.losses[0]

    # Fixed seeds: the same data gives the same weights.
    ids = [r.id for r in records]
    again = train_adapter(embedder.encode([p.query for p in report.train]), report.train, vectors, ids, config)
    assert np.allclose(again.weight, report.result.weight, atol=1e-6)


def test_a_corpus_too_small_to_hold_out_anything_is_refused(corpus, tmp_path: Path) -> None:
    embedder, _, _ = corpus
    tiny = [ChunkRecord("a", "a.txt", "", "Short.")]
    with pytest.raises(NotEnoughPairsError, match="0 training and 0 held-out pairs from 1 chunks"):
        fit(tiny, embedder.encode(["Short."]), embedder.encode, embedder.model_path, TrainingConfig(), tmp_path)


@pytest.mark.parametrize(
    "bad",
    [{"mode": "lora"}, {"held_out": 0.0}, {"held_out": 1.0}, {"epochs": 0}, {"batch_size": 1}, {"temperature": 0}, {"l2": -1}],
)
def test_invalid_training_settings_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        TrainingConfig(**bad)


@pytest.mark.slow
def test_full_fine_tune_saves_a_model_the_embedder_loads(corpus, tmp_path: Path) -> None:
    """The GPU mode, run small on the CPU: the transformer itself is trained and saved."""
    embedder, records, vectors = corpus
    config = TrainingConfig(mode="full", max_pairs=48, max_held_out=12, batch_size=8, device="cpu")
    report = fit(records, vectors, embedder.encode, embedder.model_path, config, tmp_path)
    saved = report.result.model_dir
    assert saved is not None and (saved / "config.json").is_file() and list(saved.glob("*.safetensors"))
    assert report.result.device == "cpu" and len(report.result.losses) == config.full_epochs
    assert np.isfinite(report.result.losses).all()
    tuned = Embedder(EmbedderConfig(model=str(saved), device="cpu"))
    assert tuned.fingerprint != embedder.fingerprint and tuned.encode(["a query"]).shape == (1, 384)
    assert 0 <= report.trained["mrr@10"] <= 1


def test_a_retried_training_adds_no_second_loss_curve_to_the_run(tmp_path: Path) -> None:
    import mlflow

    from llmops_dagster.core.training import log_losses

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        experiment = mlflow.MlflowClient().create_experiment("losses")  # not whichever experiment an earlier test set
        with mlflow.start_run(experiment_id=experiment) as run:
            log_losses([0.9, 0.5, 0.3])
            log_losses([0.9, 0.5, 0.3])  # the step again, in the same run
            log_losses([0.9, 0.5, 0.3, 0.2])  # a longer try adds only its new step
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    finally:
        mlflow.set_tracking_uri(previous)
    assert sorted((metric.step, metric.value) for metric in history) == [(0, 0.9), (1, 0.5), (2, 0.3), (3, 0.2)]
