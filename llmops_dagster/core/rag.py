"""The RAG model: query encoder (base or adapted) → LanceDB retrieval → answer generator.

``RagPipeline`` is plain Python and serves evaluation, the CLI and the MLflow pyfunc alike, so what
is evaluated is what is served. ``RagModel`` wraps it as an ``mlflow.pyfunc.PythonModel``; the
registered version bundles the embedding model, the adapter, the retrieval settings and the
generator, and points at the environment's index by URI (``model_config``, which
``mlflow.pyfunc.load_model(..., model_config={"lancedb_uri": ...})`` can override).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from llmops_dagster.core.answer import AnswerConfig
from llmops_dagster.core.generation import (
    ExtractiveGenerator,
    Generation,
    GenerationStream,
    Generator,
    GeneratorConfig,
    build_generator,
)
from llmops_dagster.core.index import SEARCH_MODES, AnnParams, Fusion, Passage, search
from llmops_dagster.core.rerank import RERANKERS, load_reranker
from llmops_dagster.core.training import apply_adapter

if TYPE_CHECKING:
    from lancedb.table import Table

    from llmops_dagster.core.embedding import Embedder

QUESTION_COLUMN = "question"
OUTPUT_COLUMNS = (
    "answer", "found", "passages", "sources", "scores", "latency_ms",
    "cited", "prompt_tokens", "completion_tokens", "generator", "error",
)


class IndexMismatchError(RuntimeError):
    """The index holds vectors of another embedding model than the one this model version needs."""


@dataclass(frozen=True)
class RagConfig:
    k: int = 5
    mode: str = "hybrid"
    fusion: str = "rrf"  # hybrid only: rrf | score (see index.Fusion)
    text_weight: float = 0.5  # hybrid only: the full-text list's weight against the vector list's
    depth: int = 50  # hybrid only: candidates per list before fusing
    rerank: str = "none"  # none | maxsim: order the first rerank_depth candidates again (core.rerank)
    rerank_depth: int = 20
    select_by_evaluation: bool = True  # register the retrieval candidate that evaluated best, not these
    # What writes the answer (core.generation): extractive, a local model or an OpenAI-compatible
    # endpoint, with the prompt template; a mapping from the settings becomes a GeneratorConfig.
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    max_sentences: int = 1  # token F1 on the sample gold questions: 0.34 with 1, 0.26 with 2, 0.20 with 3
    min_score: float = 0.3

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {SEARCH_MODES}, got '{self.mode}'")
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if not isinstance(self.generator, GeneratorConfig):
            object.__setattr__(self, "generator", GeneratorConfig.from_settings(self.generator))
        self.fusion_config()  # validates fusion, text_weight and depth
        if self.rerank not in RERANKERS:
            raise ValueError(f"rerank must be one of {RERANKERS}, got '{self.rerank}'")

    def fusion_config(self) -> Fusion:
        return Fusion(self.fusion, self.text_weight, self.depth, self.rerank_depth if self.rerank != "none" else 0)

    def retrieval_label(self) -> str:
        label = self.mode if self.mode != "hybrid" else f"hybrid {self.fusion} w_text={self.text_weight:g} depth={self.depth}"
        return label + (f" + {self.rerank} top {self.rerank_depth}" if self.rerank != "none" else "")

    def answer_config(self) -> AnswerConfig:
        return AnswerConfig(max_sentences=self.max_sentences, min_score=self.min_score)


class QueryEncoder:
    """The embedder, with the trained query-side adapter applied when there is one."""

    def __init__(self, embedder: Embedder, adapter: np.ndarray | None = None) -> None:
        self.embedder = embedder
        self.adapter = adapter

    def encode(self, texts: list[str]) -> np.ndarray:
        return apply_adapter(self.adapter, self.embedder.encode(texts))


class EncodeVia:
    """An embedder whose ``encode`` goes through another callable (the server's micro-batcher);
    everything else (tokenizer, model path) is the embedder's own."""

    def __init__(self, embedder: Embedder, encode: Callable[[list[str]], np.ndarray]) -> None:
        self._embedder, self.encode = embedder, encode

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)


def source_label(passage: Passage) -> str:
    """``file`` or ``file#page=N``: where a passage came from, in a form a PDF viewer understands."""
    return f"{passage.source}#page={passage.page}" if passage.page else passage.source


@dataclass
class Prediction:
    question: str
    answer: str
    found: bool
    passages: list[Passage] = field(default_factory=list)
    latency_ms: float = 0.0
    generation: Generation | None = None  # who wrote the answer, what it cited and cost, or why it failed

    def row(self) -> dict[str, Any]:
        generation = self.generation
        return {
            "answer": self.answer,
            "found": self.found,
            "passages": [p.text for p in self.passages],
            "sources": [source_label(p) for p in self.passages],
            "scores": [round(p.score, 6) for p in self.passages],
            "latency_ms": round(self.latency_ms, 2),
            "cited": list(generation.cited) if generation else [],
            "prompt_tokens": generation.usage.prompt_tokens if generation else 0,
            "completion_tokens": generation.usage.completion_tokens if generation else 0,
            "generator": json.dumps(generation.identity, sort_keys=True) if generation else "",
            "error": (generation.error or "") if generation else "",
        }


def index_problem(found: set[str], expected: str) -> str | None:
    """Why an index whose rows carry the fingerprints ``found`` cannot answer queries that need
    ``expected`` (model and context template), or None when it can."""
    if found and found != {expected}:
        return f"the index holds vectors for {', '.join(sorted(found))}, not for {expected}"
    return None


def index_models(table: Table) -> set[str]:
    column = table.search().select(["embedding_model"]).limit(None).to_arrow().column("embedding_model")
    return set(column.unique().to_pylist())


class RagPipeline:
    def __init__(
        self,
        encoder: QueryEncoder,
        table: Table,
        params: AnnParams,
        config: RagConfig,
        generator: Generator | None = None,
        memo: dict | None = None,
        reranker: Any = None,
    ) -> None:
        self.encoder, self.table, self.params, self.config = encoder, table, params, config
        self.memo = memo  # candidate lists per query, shared by pipelines that differ only in fusion (evaluation)
        self._generator = generator
        self.reranker = reranker

    @property
    def generator(self) -> Generator:
        """The configured generator, built when first needed: retrieval-only uses (selection, search)
        never load a local model or reach an endpoint."""
        if self._generator is None:
            embedder = self.encoder.embedder
            self._generator = build_generator(self.config.generator, embedder.encode, embedder.count_tokens, self.config.answer_config())
        return self._generator

    def variant(self, encoder: Any = None, config: RagConfig | None = None, memo: dict | None = None) -> RagPipeline:
        """This pipeline with another query encoder, config or candidate memo. The generator (built
        or not yet) is shared while the generator settings stay the same."""
        config = config or self.config
        generator = self._generator if config.generator == self.config.generator else None
        return RagPipeline(encoder or self.encoder, self.table, self.params, config, generator, self.memo if memo is None else memo)

    def retrieve(self, question: str, k: int | None = None, mode: str | None = None) -> list[Passage]:
        reranker = self.reranker
        if reranker is None and self.config.rerank != "none":
            reranker = load_reranker(str(self.encoder.embedder.model_path))
        return search(
            self.table, question, k or self.config.k, mode or self.config.mode, self.params, self.encoder,  # type: ignore[arg-type]
            self.config.fusion_config(), reranker, self.memo,
        )

    def routed(self, route: Callable[[Callable], Callable]) -> RagPipeline:
        """The same pipeline with every call into the embedding model (query, answer sentences, rerank
        tokens) made through ``route``: the server runs them all on one thread, in batches."""
        embedder = EncodeVia(self.encoder.embedder, route(self.encoder.embedder.encode))
        generator = None if self._generator is None or isinstance(self._generator, ExtractiveGenerator) else self._generator
        reranker = load_reranker(str(self.encoder.embedder.model_path)).through(route) if self.config.rerank != "none" else None
        encoder = QueryEncoder(embedder, self.encoder.adapter)  # type: ignore[arg-type]
        return RagPipeline(encoder, self.table, self.params, self.config, generator, self.memo, reranker)

    def answer(self, question: str, k: int | None = None, mode: str | None = None) -> Prediction:
        """Retrieve, then generate. A generator that fails (an endpoint down after its retries) gives a
        prediction with ``generation.error`` set and no answer; it never raises for one question."""
        started = time.perf_counter()
        passages = self.retrieve(question, k, mode)
        generation = self.generator.generate(question, passages)
        return self.prediction(question, passages, generation, started)

    def stream_answer(self, question: str, k: int | None = None, mode: str | None = None) -> tuple[list[Passage], GenerationStream]:
        """The passages, and the answer as a stream of text pieces; the stream's ``result`` is the
        Generation once it is used up (``prediction`` then makes the row)."""
        passages = self.retrieve(question, k, mode)
        return passages, self.generator.stream(question, passages)

    @staticmethod
    def prediction(question: str, passages: list[Passage], generation: Generation, started: float) -> Prediction:
        text = generation.text if generation.error is None else f"Generation failed: {generation.error}"
        return Prediction(question, text, generation.found, passages, 1000 * (time.perf_counter() - started), generation)
