"""Data-quality rules behind the asset checks. Pure functions: inputs in, verdict out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmops_dagster.core.documents import QuarantineReason


@dataclass(frozen=True)
class Verdict:
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _sample(items: Iterable[str], n: int = 5) -> str:
    items = sorted(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def no_files_lost(landing_paths: set[str], document_paths: set[str], quarantine_paths: set[str]) -> Verdict:
    """Every landing file is in exactly one of documents or quarantine, and nothing else is."""
    missing = landing_paths - document_paths - quarantine_paths
    both = document_paths & quarantine_paths
    ghosts = (document_paths | quarantine_paths) - landing_paths
    metadata = {
        "landing_files": len(landing_paths),
        "documents": len(document_paths),
        "quarantined": len(quarantine_paths),
        "missing": len(missing),
        "in_both": len(both),
        "no_longer_in_landing": len(ghosts),
    }
    problems = []
    if missing:
        problems.append(f"{len(missing)} landing file(s) in neither table: {_sample(missing)}")
    if both:
        problems.append(f"{len(both)} file(s) in both tables: {_sample(both)}")
    if ghosts:
        problems.append(f"{len(ghosts)} row(s) for files no longer in the landing zone: {_sample(ghosts)}")
    if problems:
        return Verdict(False, "; ".join(problems), metadata)
    return Verdict(True, f"{len(landing_paths)} landing files = {len(document_paths)} documents + {len(quarantine_paths)} quarantined", metadata)


def quarantine_reasons_known(reasons: list[str]) -> Verdict:
    known = {reason.value for reason in QuarantineReason}
    unknown = [reason for reason in reasons if reason not in known]
    counts = {reason: reasons.count(reason) for reason in sorted(set(reasons))}
    if unknown:
        return Verdict(False, f"{len(unknown)} row(s) without a known reason: {_sample(set(map(str, unknown)))}", counts)
    return Verdict(True, f"{len(reasons)} quarantined file(s), each with a known reason", counts)


def chunks_well_formed(texts: list[str], n_tokens: list[int], limit: int) -> Verdict:
    """No empty chunk, and none longer than the configured token budget (so the model truncates nothing)."""
    empty = sum(1 for text in texts if not text or not text.strip())
    over = sum(1 for n in n_tokens if n > limit)
    metadata = {
        "chunks": len(texts),
        "empty": empty,
        "over_limit": over,
        "max_tokens": max(n_tokens, default=0),
        "mean_tokens": round(float(np.mean(n_tokens)), 1) if n_tokens else 0.0,
        "token_limit": limit,
    }
    if empty or over:
        return Verdict(False, f"{empty} empty chunk(s), {over} chunk(s) over {limit} tokens", metadata)
    return Verdict(True, f"{len(texts)} chunks, all non-empty and within {limit} tokens", metadata)


def every_document_chunked(document_paths: set[str], chunk_sources: set[str]) -> Verdict:
    unchunked = document_paths - chunk_sources
    orphans = chunk_sources - document_paths
    metadata = {"documents": len(document_paths), "unchunked": len(unchunked), "orphan_sources": len(orphans)}
    if unchunked or orphans:
        return Verdict(False, f"unchunked: {_sample(unchunked) or 'none'}; chunks of removed documents: {_sample(orphans) or 'none'}", metadata)
    return Verdict(True, f"all {len(document_paths)} documents have chunks, and no chunk is orphaned", metadata)


@dataclass
class VectorStats:
    """Streaming statistics over vector batches, so a large index need not fit in memory."""

    dimension: int
    rows: int = 0
    nan_rows: int = 0
    bad_dimension: int = 0
    min_norm: float = float("inf")
    max_norm: float = 0.0

    def update(self, vectors: np.ndarray) -> None:
        self.rows += len(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            self.bad_dimension += len(vectors)
            return
        nan = np.isnan(vectors).any(axis=1)
        self.nan_rows += int(nan.sum())
        norms = np.linalg.norm(vectors[~nan], axis=1)
        if len(norms):
            self.min_norm = min(self.min_norm, float(norms.min()))
            self.max_norm = max(self.max_norm, float(norms.max()))


def vectors_valid(stats: VectorStats, tolerance: float = 1e-3) -> Verdict:
    metadata = {
        "rows": stats.rows,
        "dimension": stats.dimension,
        "nan_rows": stats.nan_rows,
        "wrong_dimension_rows": stats.bad_dimension,
        "min_norm": round(stats.min_norm, 6) if stats.rows else 0.0,
        "max_norm": round(stats.max_norm, 6),
    }
    problems = []
    if stats.nan_rows:
        problems.append(f"{stats.nan_rows} vector(s) contain NaN")
    if stats.bad_dimension:
        problems.append(f"{stats.bad_dimension} vector(s) are not {stats.dimension}-dimensional")
    if stats.rows and (abs(stats.min_norm - 1) > tolerance or abs(stats.max_norm - 1) > tolerance):
        problems.append(f"norms range over [{stats.min_norm:.4f}, {stats.max_norm:.4f}], not 1±{tolerance}")
    if problems:
        return Verdict(False, "; ".join(problems), metadata)
    return Verdict(True, f"{stats.rows} vectors of dimension {stats.dimension}, unit norm, no NaN", metadata)


def index_matches_chunks(chunk_ids: set[str], index_ids: set[str], models: set[str], expected_model: str) -> Verdict:
    missing = chunk_ids - index_ids
    extra = index_ids - chunk_ids
    metadata = {
        "chunks": len(chunk_ids),
        "index_rows": len(index_ids),
        "missing_from_index": len(missing),
        "not_in_chunks": len(extra),
        "embedding_models": ", ".join(sorted(models)) or "none",
    }
    problems = []
    if missing or extra:
        problems.append(f"{len(missing)} chunk(s) missing from the index, {len(extra)} index row(s) without a chunk")
    if models and models != {expected_model}:
        problems.append(f"index holds vectors of {sorted(models)}, expected only {expected_model}")
    if problems:
        return Verdict(False, "; ".join(problems), metadata)
    return Verdict(True, f"index rows = chunks = {len(chunk_ids)}, all embedded with {expected_model}", metadata)


def ann_recall_ok(recall: float | None, threshold: float, queries: int, ann_index: str | None) -> Verdict:
    if ann_index is None:
        return Verdict(True, "no ANN index yet: searches are exact", {"ann_index": "none (exact search)"})
    if recall is None:
        return Verdict(False, "ANN index present but recall was not measured", {"ann_index": ann_index})
    metadata = {"recall_at_10": round(recall, 4), "threshold": threshold, "queries": queries, "ann_index": ann_index}
    if recall < threshold:
        return Verdict(False, f"ANN recall@10 {recall:.3f} is below {threshold}", metadata)
    return Verdict(True, f"ANN recall@10 {recall:.3f} ≥ {threshold} over {queries} queries", metadata)
