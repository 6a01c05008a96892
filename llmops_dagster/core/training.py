"""Training the embedding model on (query, passage) pairs mined from the corpus itself.

Pairs come from two sources a corpus always has:

- heading → section: a section heading asks for the chunks under it;
- inverse cloze: one sentence of a chunk asks for the chunk(s) that contain it.

They are split by query: held-out queries are never seen in training, while their target chunks
may be, which is the deployment situation (the index is fixed, users ask new questions about it).

The default mode trains a query-side adapter, ``q' = normalize(q + q W)``, on frozen, cached chunk
vectors, with a softmax over every chunk in the corpus (all other chunks are negatives) and an L2
pull of ``W`` towards zero so the model stays close to the base where the data says little. The
index is untouched: only queries pass through the adapter. It trains in seconds on two CPU cores.
The ``full`` mode fine-tunes the transformer itself with in-batch negatives; it is meant for GPUs
and needs the corpus embedded again with the new weights.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmops_dagster.core.answer import sentences
from llmops_dagster.core.embedding import load_tokenizer, mean_pool

if TYPE_CHECKING:
    import pyarrow as pa
    from lancedb.table import Table

    from llmops_dagster.core.embedding import Embedder

TRAINING_MODES = ("adapter", "full")
MIN_CLOZE_WORDS = 6
# Where a training run keeps its outputs in its MLflow run, under ARTIFACT_DIR.
ARTIFACT_DIR = "embedding_model"
ADAPTER_FILE = "adapter.npy"
HELD_OUT_FILE = "held_out.jsonl"
TRAIN_FILE = "train.jsonl"


@dataclass(frozen=True)
class TrainingConfig:
    mode: str = "adapter"
    held_out: float = 0.3
    seed: int = 0
    epochs: int = 30
    learning_rate: float = 3e-4
    l2: float = 1.0
    temperature: float = 0.03
    batch_size: int = 32
    max_pairs: int = 3000  # mined pairs used; encoding them dominates the run time on CPU
    max_held_out: int = 500  # evaluation runs every held-out query through five systems
    full_learning_rate: float = 2e-5  # full mode: the transformer itself moves, so far smaller steps
    full_epochs: int = 1
    device: str = "auto"  # full mode only

    def __post_init__(self) -> None:
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"mode must be one of {TRAINING_MODES}, got '{self.mode}'")
        if not 0 < self.held_out < 1:
            raise ValueError(f"held_out must be between 0 and 1, got {self.held_out}")
        if self.epochs < 1 or self.full_epochs < 1 or self.batch_size < 2 or self.max_pairs < 2 or self.max_held_out < 1:
            raise ValueError("epochs and max_held_out must be ≥ 1, batch_size and max_pairs ≥ 2")
        if self.learning_rate <= 0 or self.full_learning_rate <= 0 or self.temperature <= 0 or self.l2 < 0:
            raise ValueError("learning rates and temperature must be positive, l2 non-negative")


@dataclass(frozen=True)
class ChunkRecord:
    id: str
    source: str
    heading: str
    text: str


CHUNK_COLUMNS = ["id", "source", "heading", "text"]


def chunk_records(rows: pa.Table) -> list[ChunkRecord]:
    """ChunkRecords from an Arrow table of the index (or chunks) with at least ``CHUNK_COLUMNS``."""
    return [ChunkRecord(r["id"], r["source"], r["heading"] or "", r["text"]) for r in rows.select(CHUNK_COLUMNS).to_pylist()]


@dataclass(frozen=True)
class Pair:
    query: str
    relevant: frozenset[str]  # chunk ids that answer the query
    kind: str  # heading | cloze

    def to_json(self) -> str:
        return json.dumps({"query": self.query, "relevant": sorted(self.relevant), "kind": self.kind}, ensure_ascii=False)

    @staticmethod
    def from_json(line: str) -> Pair:
        row = json.loads(line)
        return Pair(row["query"], frozenset(row["relevant"]), row["kind"])


def mine_pairs(chunks: Sequence[ChunkRecord]) -> list[Pair]:
    """Heading → section and sentence → containing chunk(s), in a deterministic order."""
    by_heading: dict[tuple[str, str], set[str]] = {}
    by_sentence: dict[str, set[str]] = {}
    for chunk in chunks:
        if chunk.heading.strip():
            by_heading.setdefault((chunk.source, chunk.heading.strip()), set()).add(chunk.id)
        for sentence in sentences(chunk.text):
            if len(sentence.split()) >= MIN_CLOZE_WORDS:
                # Overlapping chunks share sentences: every chunk holding it is relevant.
                by_sentence.setdefault(sentence, set()).add(chunk.id)
    headings_seen: dict[str, int] = {}
    for _, heading in by_heading:
        headings_seen[heading] = headings_seen.get(heading, 0) + 1
    pairs = [
        Pair(heading, frozenset(ids), "heading")
        for (_, heading), ids in sorted(by_heading.items())
        if headings_seen[heading] == 1  # "Introduction" in three files asks for nothing in particular
    ]
    pairs += [Pair(sentence, frozenset(ids), "cloze") for sentence, ids in sorted(by_sentence.items())]
    return pairs


def split_pairs(
    pairs: Sequence[Pair], held_out: float, seed: int, max_pairs: int | None = None, max_held_out: int | None = None
) -> tuple[list[Pair], list[Pair]]:
    """Shuffle with ``seed``, cap at ``max_pairs``, and hold out a share of the queries of each kind
    (at most ``max_held_out`` in all; held-out queries beyond it are dropped, never trained on)."""
    rng = random.Random(seed)
    train: list[Pair] = []
    test: list[Pair] = []
    for kind in sorted({pair.kind for pair in pairs}):
        group = [pair for pair in pairs if pair.kind == kind]
        rng.shuffle(group)
        if max_pairs is not None:
            group = group[: max(1, int(max_pairs * len(group) / max(1, len(pairs))))]
        cut = int(round(len(group) * held_out))
        if len(group) >= 2:
            cut = min(max(cut, 1), len(group) - 1)
        test.extend(group[:cut])
        train.extend(group[cut:])
    if max_held_out is not None and len(test) > max_held_out:
        test = random.Random(seed).sample(test, max_held_out)
    return train, test


def apply_adapter(weight: np.ndarray | None, queries: np.ndarray) -> np.ndarray:
    """``normalize(q + q W)``; the identity when there is no adapter."""
    if weight is None:
        return queries
    adapted = queries + queries @ weight
    return (adapted / np.linalg.norm(adapted, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float32)


def rank(queries: np.ndarray, vectors: np.ndarray, ids: Sequence[str], k: int = 10) -> list[list[str]]:
    """Exact top-k chunk ids by cosine similarity (vectors are unit norm)."""
    scores = queries @ vectors.T
    k = min(k, len(ids))
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    ordered = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable"), axis=1)
    return [[ids[j] for j in row] for row in ordered]


@dataclass
class TrainingResult:
    weight: np.ndarray | None  # adapter mode
    model_dir: Path | None  # full mode
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    train_pairs: int = 0


def _targets(pairs: Sequence[Pair], position: dict[str, int], size: int) -> np.ndarray:
    targets = np.zeros((len(pairs), size), dtype=np.float32)
    for row, pair in enumerate(pairs):
        columns = [position[chunk_id] for chunk_id in pair.relevant if chunk_id in position]
        targets[row, columns] = 1.0 / len(columns)
    return targets


def train_adapter(
    queries: np.ndarray, pairs: Sequence[Pair], vectors: np.ndarray, ids: Sequence[str], config: TrainingConfig
) -> TrainingResult:
    """Fit ``W`` by softmax cross-entropy over the whole corpus; deterministic for a given seed."""
    import torch

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    position = {chunk_id: i for i, chunk_id in enumerate(ids)}
    keep = [i for i, pair in enumerate(pairs) if pair.relevant & position.keys()]
    corpus = torch.from_numpy(np.array(vectors, dtype=np.float32))
    q = torch.from_numpy(np.ascontiguousarray(queries[keep], dtype=np.float32))
    targets = torch.from_numpy(_targets([pairs[i] for i in keep], position, len(ids)))
    weight = torch.nn.Parameter(torch.zeros(corpus.shape[1], corpus.shape[1]))
    optimiser = torch.optim.Adam([weight], lr=config.learning_rate)
    losses = []
    for _ in range(config.epochs):
        total = 0.0
        for batch in torch.randperm(len(q), generator=generator).split(config.batch_size):
            adapted = torch.nn.functional.normalize(q[batch] + q[batch] @ weight, dim=1)
            logits = adapted @ corpus.T / config.temperature
            loss = -(targets[batch] * torch.log_softmax(logits, dim=1)).sum(1).mean()
            loss = loss + config.l2 * (weight**2).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / max(1, len(q)))
    return TrainingResult(
        weight=weight.detach().numpy().copy(),
        model_dir=None,
        losses=losses,
        seconds=time.perf_counter() - started,
        train_pairs=len(keep),
    )


def train_full(
    pairs: Sequence[Pair],
    texts: dict[str, str],
    base_model: Path,
    out_dir: Path,
    config: TrainingConfig,
    log: Callable[[str], None] = lambda _: None,
) -> TrainingResult:
    """Fine-tune the transformer on (query, chunk text) pairs with in-batch negatives; saves to ``out_dir``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    started = time.perf_counter()
    device = "cuda" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    if config.device == "cuda" and device != "cuda":
        raise RuntimeError("training.device is 'cuda' but torch sees no CUDA device")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    _, max_tokens = load_tokenizer(str(base_model))
    model = AutoModel.from_pretrained(str(base_model)).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.full_learning_rate)
    examples = [(pair.query, texts[min(pair.relevant)]) for pair in pairs if pair.relevant & texts.keys()]

    def embed(batch: list[str]) -> torch.Tensor:
        encoded = tokenizer(batch, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt").to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            hidden = model(**encoded).last_hidden_state
        return mean_pool(hidden, encoded["attention_mask"])

    losses = []
    for epoch in range(config.full_epochs):
        total = 0.0
        for batch in torch.randperm(len(examples), generator=generator).split(config.batch_size):
            queries = embed([examples[i][0] for i in batch])
            passages = embed([examples[i][1] for i in batch])
            # Each query's own passage is the positive; the batch's other passages are negatives.
            logits = queries @ passages.T / config.temperature
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(batch), device=device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / max(1, len(examples)))
        log(f"epoch {epoch + 1}/{config.full_epochs}: loss {losses[-1]:.4f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().to("cpu").save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    for extra in ("sentence_bert_config.json",):
        if (base_model / extra).is_file():
            (out_dir / extra).write_bytes((base_model / extra).read_bytes())
    return TrainingResult(None, out_dir, losses, time.perf_counter() - started, device, len(examples))


def config_params(config: TrainingConfig) -> dict[str, str | int | float]:
    return {f"training.{key}": value for key, value in asdict(config).items()}


def pairs_digest(pairs: Sequence[Pair]) -> str:
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(pair.to_json().encode())
    return digest.hexdigest()[:16]


@dataclass
class ModelReport:
    """What training produced, and how base and trained compare on the held-out pairs (exact search)."""

    config: TrainingConfig
    train: list[Pair]
    held_out: list[Pair]
    result: TrainingResult
    base: dict[str, float]
    trained: dict[str, float]

    @property
    def winner(self) -> str:
        return "trained" if self.trained["mrr@10"] > self.base["mrr@10"] else "base"


class NotEnoughPairsError(ValueError):
    """The corpus is too small to mine a training set and a held-out set."""


def fit(
    chunks: Sequence[ChunkRecord],
    vectors: np.ndarray,
    encode: Callable[[list[str]], np.ndarray],
    base_model: Path,
    config: TrainingConfig,
    work_dir: Path,
    log: Callable[[str], None] = lambda _: None,
) -> ModelReport:
    """Mine pairs, hold some out, train, and measure base and trained retrieval on the held-out queries."""
    from llmops_dagster.core.metrics import retrieval_report

    pairs = mine_pairs(chunks)
    train, held_out = split_pairs(pairs, config.held_out, config.seed, config.max_pairs, config.max_held_out)
    if len(train) < 2 or not held_out:
        raise NotEnoughPairsError(
            f"{len(train)} training and {len(held_out)} held-out pairs from {len(chunks)} chunks; "
            "the corpus needs a few sections with headings or sentences of six words or more"
        )
    log(f"mined {len(pairs)} pairs from {len(chunks)} chunks; {len(train)} used for training, {len(held_out)} held out")
    ids = [chunk.id for chunk in chunks]
    relevant = [set(pair.relevant) for pair in held_out]
    held_queries = encode([pair.query for pair in held_out])
    base = retrieval_report(rank(held_queries, vectors, ids), relevant)
    if config.mode == "adapter":
        result = train_adapter(encode([pair.query for pair in train]), train, vectors, ids, config)
        trained = retrieval_report(rank(apply_adapter(result.weight, held_queries), vectors, ids), relevant)
    else:
        from llmops_dagster.core.embedding import Embedder, EmbedderConfig

        result = train_full(train, {chunk.id: chunk.text for chunk in chunks}, base_model, work_dir / "model", config, log)
        tuned = Embedder(EmbedderConfig(model=str(result.model_dir), device=result.device))
        tuned_vectors = tuned.encode([chunk.text for chunk in chunks])
        trained = retrieval_report(rank(tuned.encode([pair.query for pair in held_out]), tuned_vectors, ids), relevant)
    log(f"held-out MRR@10: base {base['mrr@10']:.4f}, trained {trained['mrr@10']:.4f} ({result.seconds:.1f}s of training)")
    return ModelReport(config, train, held_out, result, base, trained)


def mlflow_metrics(prefix: str, report: dict[str, float]) -> dict[str, float]:
    """Metrics as MLflow keys: ``held_out.base`` and ``recall@5`` → ``held_out.base.recall_at_5``."""
    from llmops_dagster.core.metrics import metric_name

    return {f"{prefix}.{metric_name(name)}": float(value) for name, value in report.items()}


@dataclass(frozen=True)
class TrainedEmbeddingModel:
    """One training of the embedding model, as logged to its MLflow run."""

    report: ModelReport
    chunks: int
    base_model: str  # the base embedder's fingerprint
    index_version: int
    mlflow_run_id: str

    @property
    def artifacts(self) -> str:
        return f"runs:/{self.mlflow_run_id}/{ARTIFACT_DIR}"

    @property
    def has_adapter(self) -> bool:
        return self.report.result.weight is not None


def index_chunks(table: Table) -> tuple[list[ChunkRecord], np.ndarray]:
    """The index's chunks and their stored vectors, in the same order."""
    rows = table.search().select([*CHUNK_COLUMNS, "vector"]).limit(None).to_arrow()
    chunks = chunk_records(rows)
    vectors = np.asarray(rows.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False)).reshape(len(chunks), -1)
    return chunks, vectors


def log_losses(losses: list[float]) -> None:
    """``train_loss`` per step on the active MLflow run, leaving out the steps it already holds: a
    retried step logs into the same run, and MLflow would otherwise keep both curves as one."""
    import mlflow
    from mlflow.entities import Metric

    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    logged = {metric.step for metric in client.get_metric_history(run_id, "train_loss")}
    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", loss, now, step) for step, loss in enumerate(losses) if step not in logged]
    for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def train_embedding_model(
    table: Table, embedder: Embedder, config: TrainingConfig, log: Callable[[str], None] = lambda _: None
) -> TrainedEmbeddingModel:
    """Train on the pairs mined from the index and log everything to the active MLflow run:
    parameters, per-epoch loss, held-out metrics of base and trained, the pairs, the weights, and
    the tags that ``registry.training_record`` finds the training by.

    The one code path of the ``embedding_model`` asset and the ``train`` Pipes step; the caller
    makes the run active (the Dagster run's, wherever the step runs).
    """
    import mlflow

    from llmops_dagster.core.registry import TRAINING_ADAPTER_TAG, TRAINING_WINNER_TAG

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run to log the training into")
    chunks, vectors = index_chunks(table)
    with tempfile.TemporaryDirectory() as scratch:
        report = fit(chunks, vectors, embedder.encode, embedder.model_path, config, Path(scratch), log=log)
        mlflow.log_params(
            {
                **config_params(config),
                "training.base_model": embedder.fingerprint,
                "training.index_version": table.version,
                "training.pairs_train": len(report.train),
                "training.pairs_held_out": len(report.held_out),
                "training.pairs_digest": pairs_digest(report.train + report.held_out),
            }
        )
        log_losses(report.result.losses)
        mlflow.log_metrics({**mlflow_metrics("held_out.base", report.base), **mlflow_metrics("held_out.trained", report.trained)})
        mlflow.log_metric("training_seconds", report.result.seconds)
        mlflow.log_text("\n".join(p.to_json() for p in report.held_out) + "\n", f"{ARTIFACT_DIR}/{HELD_OUT_FILE}")
        mlflow.log_text("\n".join(p.to_json() for p in report.train) + "\n", f"{ARTIFACT_DIR}/{TRAIN_FILE}")
        if report.result.weight is not None:
            path = Path(scratch) / ADAPTER_FILE
            np.save(path, report.result.weight)
            mlflow.log_artifact(str(path), ARTIFACT_DIR)
        if report.result.model_dir is not None:
            mlflow.log_artifacts(str(report.result.model_dir), f"{ARTIFACT_DIR}/model")
    mlflow.set_tags({TRAINING_WINNER_TAG: report.winner, TRAINING_ADAPTER_TAG: str(report.result.weight is not None).lower()})
    return TrainedEmbeddingModel(report, len(chunks), embedder.fingerprint, table.version, run.info.run_id)


def load_adapter(record: dict[str, Any]) -> np.ndarray:
    """The query adapter a training logged (``record``: ``registry.training_record``)."""
    import mlflow

    return np.load(mlflow.artifacts.download_artifacts(f"{record['artifacts']}/{ADAPTER_FILE}"))


def trained_adapter(record: dict[str, Any] | None) -> np.ndarray | None:
    """The query adapter the gate compares as "trained": None where nothing trained here (``record``
    None, the environment adopts its model) or the training logged none (a full fine-tune)."""
    return load_adapter(record) if record is not None and record["has_adapter"] else None


def deployable_adapter(record: dict[str, Any]) -> tuple[np.ndarray | None, str, str | None]:
    """What a RAG model takes from a training: the query adapter (None: the base model), the
    embedder variant it deploys (``trained`` or ``base``), and why it cannot deploy the better model
    when that is a fully fine-tuned one (the index holds base-model vectors)."""
    if record["winner"] == "trained" and record["has_adapter"]:
        return load_adapter(record), "trained", None
    if record["winner"] == "trained":
        return None, "base", (
            "the fully fine-tuned model evaluated better, but the index holds base-model vectors; "
            "deploying the base model. Point embedding.model at the logged model to re-embed with it."
        )
    return None, "base", None


def held_out_pairs(record: dict[str, Any]) -> list[Pair]:
    """The pairs a training held out, read back from its MLflow run."""
    import mlflow

    text = Path(mlflow.artifacts.download_artifacts(f"{record['artifacts']}/{HELD_OUT_FILE}")).read_text()
    return [Pair.from_json(line) for line in text.splitlines() if line.strip()]


def evaluation_pairs(record: dict[str, Any] | None, table: Table, config: TrainingConfig) -> list[Pair]:
    """The pairs the gate scores besides the gold questions: those training ``record`` held out, or
    where nothing trained here (an environment that adopts its model), pairs mined from ``table``."""
    return held_out_pairs(record) if record is not None else mined_held_out(table, config)


def mined_held_out(table: Table, config: TrainingConfig) -> list[Pair]:
    """Held-out pairs mined from an index no training ran on (an environment that adopts its model)."""
    chunks = chunk_records(table.search().select(CHUNK_COLUMNS).limit(None).to_arrow())
    _, held_out = split_pairs(mine_pairs(chunks), config.held_out, config.seed, config.max_pairs, config.max_held_out)
    return held_out
