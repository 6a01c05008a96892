"""The RAG model: query encoder (base or adapted) → LanceDB retrieval → answer generator.

``RagPipeline`` is plain Python and serves evaluation, the CLI and the MLflow pyfunc alike, so what
is evaluated is what is served. ``RagModel`` wraps it as an ``mlflow.pyfunc.PythonModel``; the
registered version bundles the embedding model, the adapter, the retrieval settings and the
generator, and points at the environment's index by URI (``model_config``, which
``mlflow.pyfunc.load_model(..., model_config={"lancedb_uri": ...})`` can override).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llmops_dagster.core.answer import NO_ANSWER, AnswerConfig, CachedEncode, extractive_answer
from llmops_dagster.core.index import SEARCH_MODES, AnnParams, Fusion, Passage, search
from llmops_dagster.core.rerank import RERANKERS, load_reranker
from llmops_dagster.core.training import apply_adapter

if TYPE_CHECKING:
    from lancedb.table import Table

    from llmops_dagster.core.embedding import Embedder

QUESTION_COLUMN = "question"
OUTPUT_COLUMNS = ("answer", "found", "passages", "sources", "scores", "latency_ms")


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
    generator_model: str | None = None  # local transformers model folder; None: extractive
    max_new_tokens: int = 96
    max_sentences: int = 1  # token F1 on the sample gold questions: 0.34 with 1, 0.26 with 2, 0.20 with 3
    min_score: float = 0.3

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {SEARCH_MODES}, got '{self.mode}'")
        if self.k < 1 or self.max_new_tokens < 1:
            raise ValueError("k and max_new_tokens must be at least 1")
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


class ExtractiveGenerator:
    """The best sentences of the retrieved passages; needs no weights."""

    name = "extractive"

    def __init__(self, encode: Callable[[list[str]], np.ndarray], config: AnswerConfig) -> None:
        self.encode, self.config = CachedEncode(encode), config

    def __call__(self, question: str, passages: Sequence[str]) -> tuple[str, bool]:
        answer = extractive_answer(question, passages, self.encode, self.config)
        return answer.text, answer.found


class TransformersGenerator:
    """A local transformers generation model, prompted with the question and as many passages as fit."""

    def __init__(self, model_path: str, max_new_tokens: int, max_passages: int = 3) -> None:

        from transformers import AutoConfig, pipeline

        path = Path(model_path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"generator model '{model_path}' is not a local model folder with a config.json")
        config = AutoConfig.from_pretrained(str(path))
        task = "text2text-generation" if config.is_encoder_decoder else "text-generation"
        self.name = f"transformers:{path.name}"
        self.pipeline = pipeline(task, model=str(path), tokenizer=str(path), device="cpu")
        self.task, self.max_new_tokens, self.max_passages = task, max_new_tokens, max_passages
        window = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 1024
        # A decoder's window holds the prompt and the answer; an encoder-decoder's input is separate.
        self.prompt_tokens = window if config.is_encoder_decoder else window - max_new_tokens

    def _prompt(self, question: str, passages: Sequence[str]) -> str:
        """The prompt with the best passages that fit the model's window (at least the first, cut)."""
        tokenizer = self.pipeline.tokenizer

        def build(context: list[str]) -> str:
            joined = "\n\n".join(context)
            return f"Answer the question from the context.\n\nContext:\n{joined}\n\nQuestion: {question}\nAnswer:"

        def size(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=True)["input_ids"])

        chosen: list[str] = []
        for passage in passages[: self.max_passages]:
            if size(build([*chosen, passage])) > self.prompt_tokens:
                break
            chosen.append(passage)
        if not chosen:
            budget = max(16, self.prompt_tokens - size(build([])))
            ids = tokenizer(passages[0], add_special_tokens=False)["input_ids"][:budget]
            chosen = [tokenizer.decode(ids)]
        return build(chosen)

    def __call__(self, question: str, passages: Sequence[str]) -> tuple[str, bool]:
        if not passages:
            return NO_ANSWER, False
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        if self.task == "text-generation":
            kwargs["return_full_text"] = False
        text = self.pipeline(self._prompt(question, passages), **kwargs)[0]["generated_text"].strip()
        return (text, True) if text else (NO_ANSWER, False)


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

    def row(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "found": self.found,
            "passages": [p.text for p in self.passages],
            "sources": [source_label(p) for p in self.passages],
            "scores": [round(p.score, 6) for p in self.passages],
            "latency_ms": round(self.latency_ms, 2),
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
        generator: Callable[[str, Sequence[str]], tuple[str, bool]] | None = None,
        memo: dict | None = None,
        reranker: Any = None,
    ) -> None:
        self.encoder, self.table, self.params, self.config = encoder, table, params, config
        self.memo = memo  # candidate lists per query, shared by pipelines that differ only in fusion (evaluation)
        self.generator = generator or ExtractiveGenerator(encoder.embedder.encode, config.answer_config())
        self.reranker = reranker

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
        generator = None if isinstance(self.generator, ExtractiveGenerator) else self.generator
        reranker = load_reranker(str(self.encoder.embedder.model_path)).through(route) if self.config.rerank != "none" else None
        encoder = QueryEncoder(embedder, self.encoder.adapter)  # type: ignore[arg-type]
        return RagPipeline(encoder, self.table, self.params, self.config, generator, self.memo, reranker)

    def answer(self, question: str, k: int | None = None, mode: str | None = None) -> Prediction:
        started = time.perf_counter()
        passages = self.retrieve(question, k, mode)
        text, found = self.generator(question, [p.text for p in passages])
        return Prediction(question, text, found, passages, 1000 * (time.perf_counter() - started))
