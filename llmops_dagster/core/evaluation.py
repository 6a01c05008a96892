"""Offline evaluation of RAG pipelines, and the gate verdicts built on it.

The evaluation set is the held-out mined pairs (relevant = chunk ids) plus the gold questions of
the landing zone (relevant = the named source file; token-F1 where a gold answer is given).
Rankings are compared at the level the gold names: chunk ids for pairs, source files for gold
questions. Every system is evaluated through ``RagPipeline``, the code the model serves with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmops_dagster.core.checks import Verdict
from llmops_dagster.core.metrics import retrieval_report, token_f1
from llmops_dagster.core.questions import Question
from llmops_dagster.core.rag import QueryEncoder, RagPipeline
from llmops_dagster.core.training import Pair

EVAL_DEPTH = 10
GATE_METRICS = ("recall@5", "mrr@10")


@dataclass(frozen=True)
class EvaluationThresholds:
    min_recall_at_5: float = 0.6
    min_mrr_at_10: float = 0.5
    champion_tolerance: float = 0.02  # the challenger may trail the champion by this much on each gate metric
    smoke_question: str = "What do these documents describe?"

    def __post_init__(self) -> None:
        for name in ("min_recall_at_5", "min_mrr_at_10", "champion_tolerance"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")

    def minimums(self) -> dict[str, float]:
        return {"recall@5": self.min_recall_at_5, "mrr@10": self.min_mrr_at_10}


@dataclass(frozen=True)
class EvalItem:
    query: str
    relevant: frozenset[str]
    level: str  # chunk | source
    query_set: str  # held_out | gold
    answer: str | None = None


def evaluation_set(held_out: Sequence[Pair], gold: Sequence[Question], known_sources: set[str]) -> tuple[list[EvalItem], list[str]]:
    """Items to evaluate, and why any gold question was left out (its source is not indexed)."""
    items = [EvalItem(pair.query, pair.relevant, "chunk", "held_out") for pair in held_out]
    skipped = []
    for question in gold:
        if question.source is not None and question.source not in known_sources:
            skipped.append(f"{question.origin}: source '{question.source}' is not an indexed document")
            continue
        relevant = frozenset({question.source}) if question.source else frozenset()
        items.append(EvalItem(question.question, relevant, "source", "gold", question.answer))
    return items, skipped


def _ranking(pipeline: RagPipeline, item: EvalItem, mode: str) -> list[str]:
    passages = pipeline.retrieve(item.query, EVAL_DEPTH, mode)
    if item.level == "chunk":
        return [p.id for p in passages]
    return list(dict.fromkeys(p.source for p in passages))


class _Precomputed:
    """The pipeline's query encoder with every evaluation query encoded in one batch up front."""

    def __init__(self, encoder: QueryEncoder, queries: list[str]) -> None:
        self.embedder = encoder.embedder
        self.encoder = encoder
        self.cache = dict(zip(queries, encoder.encode(queries), strict=True)) if queries else {}

    def encode(self, texts: list[str]) -> np.ndarray:
        if all(text in self.cache for text in texts):
            return np.stack([self.cache[text] for text in texts])
        return self.encoder.encode(texts)


def evaluate(pipeline: RagPipeline, items: Sequence[EvalItem], mode: str, answers: bool = False) -> dict[str, dict[str, float]]:
    """Metrics per query set (``held_out``, ``gold``) and over ``all``; answer F1 when ``answers``."""
    scored = [item for item in items if item.relevant]
    if mode != "text":
        encoder = _Precomputed(pipeline.encoder, list(dict.fromkeys(item.query for item in items)))
        pipeline = RagPipeline(encoder, pipeline.table, pipeline.params, pipeline.config, pipeline.generator)  # type: ignore[arg-type]
    rankings = [_ranking(pipeline, item, mode) for item in scored]
    report: dict[str, dict[str, float]] = {}
    for query_set in ("all", "held_out", "gold"):
        chosen = [i for i, item in enumerate(scored) if query_set == "all" or item.query_set == query_set]
        if chosen:
            report[query_set] = retrieval_report([rankings[i] for i in chosen], [set(scored[i].relevant) for i in chosen])
    with_answers = [item for item in items if item.answer]
    if answers and with_answers:
        f1 = [token_f1(pipeline.answer(item.query, mode=mode).answer, item.answer or "") for item in with_answers]
        report.setdefault("gold", {})["answer_f1"] = sum(f1) / len(f1)
        report["gold"]["answered"] = float(len(f1))
    return report


def meets_thresholds(metrics: dict[str, float], thresholds: EvaluationThresholds) -> Verdict:
    minimums = thresholds.minimums()
    metadata = {name: round(metrics.get(name, 0.0), 4) for name in minimums} | {f"min_{k}": v for k, v in minimums.items()}
    below = [f"{name} {metrics.get(name, 0.0):.3f} < {minimum}" for name, minimum in minimums.items() if metrics.get(name, 0.0) < minimum]
    if below:
        return Verdict(False, "below the environment's thresholds: " + "; ".join(below), metadata)
    return Verdict(True, "meets thresholds: " + ", ".join(f"{n} {metrics[n]:.3f} ≥ {m}" for n, m in minimums.items()), metadata)


def no_worse_than_champion(
    challenger: dict[str, float], champion: dict[str, float] | None, tolerance: float, champion_label: str | None, not_comparable: str | None = None
) -> Verdict:
    if not_comparable:
        return Verdict(False, not_comparable, {"champion": champion_label or "none"})
    if champion is None:
        return Verdict(True, "no champion yet: nothing to compare with", {"champion": "none"})
    metadata: dict[str, float | str] = {"champion": champion_label or "", "tolerance": tolerance}
    worse = []
    for name in GATE_METRICS:
        delta = challenger.get(name, 0.0) - champion.get(name, 0.0)
        metadata[f"delta_{name}"] = round(delta, 4)
        if delta < -tolerance:
            worse.append(f"{name} {challenger.get(name, 0.0):.3f} vs champion {champion.get(name, 0.0):.3f}")
    if worse:
        return Verdict(False, f"worse than {champion_label} beyond {tolerance}: " + "; ".join(worse), metadata)
    return Verdict(True, f"no worse than {champion_label} (tolerance {tolerance})", metadata)
