"""Retrieval chosen by evaluation: every candidate configuration is scored on one half of the
evaluation set, the best one is registered, and the other half reports how good it is.

The same rule as "base or trained, whichever evaluated better": nothing about retrieval (mode,
fusion, the text list's weight, candidate depth) is a guess that nobody measured. The halves are
fixed by a hash of each query, so a re-run selects on the same questions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from llmops_dagster.core.evaluation import EvalItem
from llmops_dagster.core.rag import RagConfig

KS = (3, 5, 8)  # passages handed to the answer generator, chosen by answer F1 where gold answers exist
TEXT_WEIGHTS = (0.3, 0.5, 0.7)
DEPTHS = (20, 50)
RERANK_DEPTH = 20
SELECT, REPORT, ALL = "select", "report", "all"
# Selection needs a margin to leave the configured retrieval. One question moving between rank 1
# and 2 shifts the objective by 0.25/n; twice that is taken as noise.
MIN_GAIN = 0.005


def margin(questions: int) -> float:
    return max(MIN_GAIN, 0.5 / max(questions, 1))


def candidates(configured: RagConfig) -> list[RagConfig]:
    """The configured retrieval first, then vector, text, every hybrid fusion in the grid, and the
    equal-weight fusions with a MaxSim rerank of their first candidates."""
    plain = replace(configured, rerank="none")
    grid = [replace(plain, mode="vector"), replace(plain, mode="text")]
    grid += [
        replace(plain, mode="hybrid", fusion=fusion, text_weight=weight, depth=depth)
        for fusion in ("rrf", "score")
        for weight in TEXT_WEIGHTS
        for depth in DEPTHS
    ]
    grid += [
        replace(plain, mode="hybrid", fusion=fusion, text_weight=0.5, depth=50, rerank="maxsim", rerank_depth=RERANK_DEPTH)
        for fusion in ("rrf", "score")
    ]
    unique = {retrieval_key(configured): configured}
    for config in grid:
        unique.setdefault(retrieval_key(config), config)
    return list(unique.values())


def retrieval_key(config: RagConfig) -> tuple:
    rerank = (config.rerank, config.rerank_depth) if config.rerank != "none" else ()
    if config.mode != "hybrid":
        return (config.mode, *rerank)
    return (config.mode, config.fusion, config.text_weight, config.depth, *rerank)


def split(items: Sequence[EvalItem]) -> dict[str, list[EvalItem]]:
    """Two halves by a hash of the query: one to select on, one to report on. A set too small to
    halve is used for both, and the report says so by its size."""
    halves: dict[str, list[EvalItem]] = {SELECT: [], REPORT: []}
    for item in items:
        digest = hashlib.sha256(item.query.encode()).digest()[0]
        halves[SELECT if digest % 2 == 0 else REPORT].append(item)
    if not halves[SELECT] or not halves[REPORT]:
        return {SELECT: list(items), REPORT: list(items)}
    return halves


def objective(metrics: dict[str, float]) -> float:
    """What selection maximises: the two metrics the gate checks, weighed alike."""
    return (metrics.get("recall@5", 0.0) + metrics.get("mrr@10", 0.0)) / 2


@dataclass(frozen=True)
class Candidate:
    config: RagConfig
    metrics: dict[str, float]  # on the selection half, over all its queries

    @property
    def score(self) -> float:
        return objective(self.metrics)


@dataclass(frozen=True)
class Selection:
    winner: RagConfig
    configured: RagConfig
    candidates: list[Candidate]  # best first
    margin: float  # the gain needed to leave the configured retrieval
    answer_f1_by_k: dict[int, float] | None = None  # None: no gold answers to choose k by

    @property
    def gain(self) -> float:
        """How much the winner beat the configured retrieval by, on the selection half."""
        scores = {retrieval_key(c.config): c.score for c in self.candidates}
        return scores[retrieval_key(self.winner)] - scores[retrieval_key(self.configured)]

    def summary(self) -> str:
        if retrieval_key(self.winner) == retrieval_key(self.configured):
            text = f"kept the configured retrieval ({self.winner.retrieval_label()}): no candidate beat it by more than noise ({self.margin:.3f})"
        else:
            text = (
                f"selected {self.winner.retrieval_label()} over the configured {self.configured.retrieval_label()} "
                f"(+{self.gain:.3f} in mean recall@5/MRR@10 on the selection half)"
            )
        if self.answer_f1_by_k is None:
            return text + f"; k={self.winner.k} as configured (no gold answers to choose it by)"
        scores = ", ".join(f"k={k}: {f1:.3f}" for k, f1 in sorted(self.answer_f1_by_k.items()))
        return text + f"; k={self.winner.k} by answer F1 ({scores})"


def select(
    configured: RagConfig, items: Sequence[EvalItem], evaluate: Callable[[RagConfig, Sequence[EvalItem]], dict[str, float]]
) -> Selection:
    """Score every candidate on ``items`` (the selection half) and keep the best; the configured
    retrieval stays unless another beats it by more than noise (``margin``)."""
    scored = [Candidate(config, evaluate(config, items)) for config in candidates(configured)]
    ranked = sorted(scored, key=lambda c: -c.score)
    best, kept = ranked[0], scored[0]
    needed = margin(len(items))
    winner = best.config if best.score > kept.score + needed else configured
    return Selection(winner, configured, ranked, needed)


def select_k(selection: Selection, items: Sequence[EvalItem], answer_f1: Callable[[RagConfig, Sequence[EvalItem]], float]) -> Selection:
    """Choose how many passages the generator gets, by answer F1 on the items with gold answers; the
    configured k stays unless another beats it by more than noise."""
    answered = [item for item in items if item.answer]
    if not answered:
        return selection
    scores = {k: answer_f1(replace(selection.winner, k=k), answered) for k in dict.fromkeys((selection.winner.k, *KS))}
    best = max(scores, key=lambda k: scores[k])
    k = best if scores[best] > scores[selection.winner.k] + margin(len(answered)) else selection.winner.k
    return replace(selection, winner=replace(selection.winner, k=k), answer_f1_by_k=scores)
