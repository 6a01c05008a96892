"""Search structures over the embeddings table: full-text index, ANN index, and search itself.

Below ``ann_min_rows`` vectors, exact (flat) search is both exact and fast, so no ANN index is
built. Above it, an IVF index with scalar-quantised vectors (IVF_SQ) is built with partitions
~ sqrt(rows), and queries re-rank ``refine_factor`` × k candidates on the full vectors; the
``ann_recall`` asset check measures the resulting recall@10 against exact search.

Why IVF_SQ by default: on 20k clustered 384-d unit vectors, IVF_PQ with 8 dimensions per
sub-vector reached recall@10 0.925 even with nprobes=32 and refine_factor=10 (PQ error dominates),
and took 50 s to build; IVF_SQ reached 1.000 with refine_factor=10 and built in about 1 s, at
384 bytes per vector instead of 48. IVF_PQ (4 dimensions per sub-vector) remains available for
tables too large to hold scalar-quantised vectors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from lancedb.table import Table

    from llmops_dagster.core.embedding import Embedder

SearchMode = Literal["hybrid", "vector", "text"]
SEARCH_MODES: tuple[str, ...] = ("hybrid", "vector", "text")
# rrf: reciprocal rank fusion (weighted when text_weight != 0.5); score: min-max normalised scores, mixed
FUSIONS: tuple[str, ...] = ("rrf", "score")
RRF_K = 60  # the constant of Cormack et al.'s reciprocal rank fusion, as LanceDB's RRFReranker uses
TEXT_COLUMN = "search_text"  # context + text; tables written before contexts existed index "text"
RESULT_COLUMNS = ["id", "text", "source", "page", "page_end", "heading"]


ANN_INDEX_TYPES = ("IVF_SQ", "IVF_PQ")


@dataclass(frozen=True)
class AnnParams:
    """When to build an ANN index and how to query it; the ``index`` settings, by the same names."""

    ann_min_rows: int = 20000
    nprobes: int = 32
    refine_factor: int = 10
    ann_index_type: str = "IVF_SQ"

    def __post_init__(self) -> None:
        if self.ann_index_type not in ANN_INDEX_TYPES:
            raise ValueError(f"ann_index_type must be one of {ANN_INDEX_TYPES}, got '{self.ann_index_type}'")

    @classmethod
    def of(cls, settings: AnnParams) -> AnnParams:
        """The ANN part of ``settings`` (an ``IndexSettings``, which extends this class)."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> AnnParams:
        """The mapping a registered model stores; versions registered before the settings' names were
        used store ``min_rows`` and ``index_type``."""
        renamed = {"min_rows": "ann_min_rows", "index_type": "ann_index_type"}
        return cls(**{renamed.get(key, key): value for key, value in stored.items()})


@dataclass(frozen=True)
class IndexState:
    rows: int
    fts_index: bool
    ann_index: str | None  # index type, or None for exact search
    ann_partitions: int | None
    unindexed_rows: int
    actions: tuple[str, ...]


def text_column(table: Table) -> str:
    """The column the full-text index covers: ``search_text``, or ``text`` in an older table version."""
    return TEXT_COLUMN if TEXT_COLUMN in table.schema.names else "text"


def _indices(table: Table) -> dict[str, object]:
    return {index.columns[0]: index for index in table.list_indices()}


def _unindexed(table: Table) -> int:
    return sum(int(index.num_unindexed_rows or 0) for index in table.list_indices())


def ann_partitions(rows: int) -> int:
    """~sqrt(rows), but each partition needs a few hundred training vectors."""
    return max(1, min(int(math.sqrt(rows)), rows // 256))


def ensure_indexes(table: Table, params: AnnParams) -> IndexState:
    """Bring the FTS and ANN indexes up to date with the table; do nothing if they already are."""
    actions: list[str] = []
    rows = table.count_rows()
    indices = _indices(table)
    from lancedb.index import FTS, IvfPq, IvfSq

    if rows and text_column(table) not in indices:
        table.create_index(text_column(table), config=FTS(), replace=True)
        actions.append("created full-text index")
    dimension = table.schema.field("vector").type.list_size
    if rows >= params.ann_min_rows and "vector" not in indices:
        partitions = ann_partitions(rows)
        if params.ann_index_type == "IVF_PQ":
            config = IvfPq(distance_type="cosine", num_partitions=partitions, num_sub_vectors=max(1, dimension // 4))
        else:
            config = IvfSq(distance_type="cosine", num_partitions=partitions)
        table.create_index("vector", config=config, replace=True)
        actions.append(f"built {params.ann_index_type} index ({partitions} partitions)")
    stale = _unindexed(table)
    if stale:
        # Folds appended rows into existing indexes (unindexed rows are still searched, only slower).
        table.optimize()
        actions.append(f"indexed {stale} new row(s)")
    return describe(table, tuple(actions))


def describe(table: Table, actions: tuple[str, ...] = ()) -> IndexState:
    rows = table.count_rows()
    indices = _indices(table)
    vector_index = indices.get("vector")
    return IndexState(
        rows=rows,
        fts_index=text_column(table) in indices,
        ann_index=str(vector_index.index_type) if vector_index else None,
        ann_partitions=ann_partitions(rows) if vector_index else None,
        unindexed_rows=_unindexed(table),
        actions=actions,
    )



def _vector_query(table: Table, vector: np.ndarray, k: int, params: AnnParams, exact: bool = False):
    query = table.search(vector, vector_column_name="vector").distance_type("cosine").limit(k)
    if exact:
        return query.bypass_vector_index()
    return query.nprobes(params.nprobes).refine_factor(params.refine_factor)


@dataclass(frozen=True)
class RecallReport:
    recall_at_k: float
    k: int
    queries: int
    ann_p50_ms: float
    exact_p50_ms: float


def measure_recall(table: Table, params: AnnParams, sample: int = 200, k: int = 10, seed: int = 0) -> RecallReport:
    """Recall@k of the table's ANN search against exact search, using stored vectors as queries."""
    rows = table.count_rows()
    rng = np.random.default_rng(seed)
    picks = rng.choice(rows, size=min(sample, rows), replace=False)
    vectors = table.take_offsets(sorted(picks.tolist())).select(["vector"]).to_arrow()
    queries = np.asarray(vectors.column("vector").to_pylist(), dtype=np.float32)
    hits, ann_times, exact_times = [], [], []
    for query in queries:
        started = time.perf_counter()
        ann = _vector_query(table, query, k, params).select(["id", "_distance"]).to_arrow().column("id").to_pylist()
        ann_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        exact = _vector_query(table, query, k, params, exact=True).select(["id", "_distance"]).to_arrow().column("id").to_pylist()
        exact_times.append(time.perf_counter() - started)
        hits.append(len(set(ann) & set(exact)) / max(1, len(exact)))
    return RecallReport(
        recall_at_k=float(np.mean(hits)) if hits else 1.0,
        k=k,
        queries=len(hits),
        ann_p50_ms=1000 * float(np.median(ann_times)) if ann_times else 0.0,
        exact_p50_ms=1000 * float(np.median(exact_times)) if exact_times else 0.0,
    )


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    source: str
    page: int | None
    heading: str
    score: float
    page_end: int | None = None

    def as_json(self) -> dict[str, Any]:
        """What ``llmops search --json`` prints and the server's /search and chat return for a passage."""
        return {"text": self.text, "source": self.source, "page": self.page, "heading": self.heading, "score": round(self.score, 6),
                "chunk_id": self.id}


class Reranker(Protocol):
    def scores(self, query: str, passages: Sequence[tuple[str, str]]) -> list[float]: ...


@dataclass(frozen=True)
class Fusion:
    """How hybrid search merges its vector and full-text candidate lists."""

    method: str = "rrf"
    text_weight: float = 0.5  # 0: vector only, 1: text only; 0.5 weighs both lists alike
    depth: int = 50  # candidates taken from each list before fusing
    rerank_depth: int = 0  # with a reranker: how many of the fused candidates it orders again

    def __post_init__(self) -> None:
        if self.method not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got '{self.method}'")
        if not 0 <= self.text_weight <= 1:
            raise ValueError(f"text_weight must be between 0 and 1, got {self.text_weight}")
        if self.depth < 1:
            raise ValueError(f"depth must be at least 1, got {self.depth}")
        if self.rerank_depth < 0:
            raise ValueError(f"rerank_depth must not be negative, got {self.rerank_depth}")

    def fuse(self, vector: list[tuple[str, float]], text: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """(id, fused score), best first, from two (id, score) lists that are each best first."""
        weights = (1.0 - self.text_weight, self.text_weight)
        fused: dict[str, float] = {}
        for weight, hits in zip(weights, (vector, text), strict=True):
            for rank, (key, score) in enumerate(hits, 1):
                part = 2 * weight / (RRF_K + rank) if self.method == "rrf" else weight * _scaled(score, hits)
                fused[key] = fused.get(key, 0.0) + part
        order = {key: rank for rank, (key, _) in enumerate([*vector, *text])}
        return sorted(fused.items(), key=lambda item: (-item[1], order[item[0]]))


def _scaled(score: float, hits: list[tuple[str, float]]) -> float:
    values = [value for _, value in hits]
    low, high = min(values), max(values)
    return (score - low) / (high - low) if high > low else 1.0


MEMO_DEPTH = 50


def _hits(
    table: Table, kind: str, query: str, embedder: Embedder | None, depth: int, params: AnnParams, columns: list[str]
) -> list[tuple[dict, float]]:
    """(row, score) best first: cosine similarity for ``vector``, BM25 for ``text``."""
    if kind == "vector":
        vector = embedder.encode([query])[0]  # type: ignore[union-attr]
        hits = _vector_query(table, vector, depth, params).select([*columns, "_distance"]).to_arrow().to_pylist()
        return [(row, 1.0 - row["_distance"]) for row in hits]
    builder = table.search(query, query_type="fts", fts_columns=text_column(table)).limit(depth)
    return [(row, row["_score"]) for row in builder.select([*columns, "_score"]).to_arrow().to_pylist()]


def search(
    table: Table,
    query: str,
    k: int,
    mode: SearchMode,
    params: AnnParams,
    embedder: Embedder | None = None,
    fusion: Fusion | None = None,
    reranker: Reranker | None = None,
    memo: dict | None = None,
) -> list[Passage]:
    """Ranked passages; scores are cosine similarity (vector), BM25 (text), the fused score (hybrid),
    or the reranker's score for the ``fusion.rerank_depth`` candidates it ordered again.

    ``memo`` keeps each query's candidate lists (``MEMO_DEPTH`` deep), so that evaluating many
    fusions of the same lists, with the same encoder and table version, queries LanceDB once.
    """
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got '{mode}'")
    if mode != "text" and embedder is None:
        raise ValueError(f"{mode} search needs an embedder")
    fusion = fusion or Fusion()
    reranked = reranker is not None and fusion.rerank_depth > 0
    depth = max(k, fusion.depth if mode == "hybrid" else k, fusion.rerank_depth if reranked else 0)
    columns = [*RESULT_COLUMNS, text_column(table)] if reranked else RESULT_COLUMNS
    if memo is not None:
        depth = max(depth, MEMO_DEPTH)  # one fetch serves every candidate depth up to it
        columns = [*RESULT_COLUMNS, text_column(table)]
    rows: dict[str, dict] = {}
    lists: dict[str, list[tuple[str, float]]] = {}
    for kind in ("vector", "text"):
        if mode not in (kind, "hybrid"):
            continue
        fetched, cached = memo.get((kind, query), (0, [])) if memo is not None else (0, [])
        if fetched < depth:
            cached = _hits(table, kind, query, embedder, depth, params, columns)
            if memo is not None:
                memo[(kind, query)] = (depth, cached)
        limit = depth if mode == "hybrid" else k
        lists[kind] = [(row["id"], score) for row, score in cached[:limit]]
        rows.update((row["id"], row) for row, _ in cached[:limit])
    ranked = fusion.fuse(lists["vector"], lists["text"]) if mode == "hybrid" else lists[mode]
    if reranked:
        head, tail = ranked[: fusion.rerank_depth], ranked[fusion.rerank_depth :]
        column = text_column(table)
        scores = reranker.scores(query, [(key, rows[key][column]) for key, _ in head])  # type: ignore[union-attr]
        ranked = sorted(zip((key for key, _ in head), scores, strict=True), key=lambda item: -item[1]) + tail
    passages = []
    for key, score in ranked[:k]:
        row = rows[key]
        passages.append(
            Passage(row["id"], row["text"], row["source"], row["page"], row["heading"] or "", float(score), row["page_end"])
        )
    return passages
