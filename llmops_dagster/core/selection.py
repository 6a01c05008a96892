"""Retrieval chosen by evaluation: every candidate configuration is scored on one half of the
evaluation set, the best one is registered, and the other half reports how good it is.

The same rule as "base or trained, whichever evaluated better": nothing about retrieval (mode,
fusion, the text list's weight, candidate depth) is a guess that nobody measured. The halves are
fixed by a hash of each query, so a re-run selects on the same questions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from llmops_dagster.core.evaluation import EvalItem
from llmops_dagster.core.rag import RagConfig

if TYPE_CHECKING:
    from lancedb.table import Table
    from mlflow import MlflowClient

    from llmops_dagster.core.index import AnnParams
    from llmops_dagster.core.rag import QueryEncoder, RagPipeline
    from llmops_dagster.core.store import LanceStore

KS = (3, 5, 8)  # passages handed to the answer generator, chosen by answer F1 where gold answers exist
TEXT_WEIGHTS = (0.3, 0.5, 0.7)
DEPTHS = (20, 50)
RERANK_DEPTH = 20
SELECT, REPORT, ALL = "select", "report", "all"
# Selection needs a margin to leave the configured retrieval. One question moving between rank 1
# and 2 shifts the objective by 0.25/n; twice that is taken as noise.
MIN_GAIN = 0.005
# The selection, kept in the MLflow run that made it: the register step of the bundle's training
# job reads it there, since the evaluate step that made it ran in another process.
SELECTION_FILE = "retrieval_selection.json"
SELECTION_TAG = "llmops.retrieval_selected"  # the winner's label


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
    k_margin: float | None = None  # the answer F1 gain needed to leave the configured k

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
        if self.winner.k == self.configured.k:  # kept: no k beat it by more than noise, a tie included
            noise = f" ({self.k_margin:.3f})" if self.k_margin is not None else ""
            return text + f"; kept the configured k={self.winner.k}: no k beat it by more than noise{noise} in answer F1 ({scores})"
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
    needed = margin(len(answered))
    k = best if scores[best] > scores[selection.winner.k] + needed else selection.winner.k
    return replace(selection, winner=replace(selection.winner, k=k), answer_f1_by_k=scores, k_margin=needed)


def to_json(selection: Selection) -> str:
    return json.dumps(
        {
            "winner": asdict(selection.winner),
            "configured": asdict(selection.configured),
            "candidates": [{"config": asdict(c.config), "metrics": c.metrics} for c in selection.candidates],
            "margin": selection.margin,
            "answer_f1_by_k": selection.answer_f1_by_k,
            "k_margin": selection.k_margin,
        },
        sort_keys=True,
    )


def from_json(text: str) -> Selection:
    from llmops_dagster.core.model_spec import rag_config

    stored = json.loads(text)
    by_k = stored["answer_f1_by_k"]
    return Selection(
        winner=rag_config(stored["winner"]),
        configured=rag_config(stored["configured"]),
        candidates=[Candidate(rag_config(c["config"]), c["metrics"]) for c in stored["candidates"]],
        margin=stored["margin"],
        answer_f1_by_k={int(k): f1 for k, f1 in by_k.items()} if by_k is not None else None,
        k_margin=stored.get("k_margin"),  # not in selections stored before it was kept
    )


def answer_f1_over(pipeline: RagPipeline) -> Callable[[RagConfig, Sequence[EvalItem]], float]:
    """Answer F1 of a retrieval configuration on the items that carry a gold answer, over
    ``pipeline``'s index (and its cached queries, when it has them): how ``select_k`` scores a k."""
    from llmops_dagster.core.evaluation import evaluate, with_cached_queries

    def answer_f1(config: RagConfig, answered: Sequence[EvalItem]) -> float:
        return evaluate(with_cached_queries(pipeline, [], config), answered, config.mode, answers=True)["gold"]["answer_f1"]

    return answer_f1


def select_retrieval(
    configured: RagConfig,
    encoder: QueryEncoder,
    table: Table,
    params: AnnParams,
    items: Sequence[EvalItem],
    lance: LanceStore,
    run_id: str,
) -> Selection:
    """Every retrieval candidate on the select half of the evaluation set, the best one kept, then
    the best k. Each candidate's figures go to the ``evaluations`` table (split ``select``, keyed by
    ``run_id``) and the selection to the active MLflow run (``SELECTION_FILE``)."""
    import pyarrow as pa

    from llmops_dagster.core import store
    from llmops_dagster.core.comparison import evaluation_rows
    from llmops_dagster.core.evaluation import evaluate, with_cached_queries
    from llmops_dagster.core.rag import RagPipeline

    halves = split(items)
    pipeline = with_cached_queries(RagPipeline(encoder, table, params, configured), (item.query for item in items))
    reports: dict[RagConfig, dict[str, dict[str, float]]] = {}

    def score(config: RagConfig, chosen_items: Sequence[EvalItem]) -> dict[str, float]:
        reports[config] = evaluate(with_cached_queries(pipeline, [], config), chosen_items, config.mode)
        return reports[config]["all"]

    chosen = select_k(select(configured, halves[SELECT], score), halves[SELECT], answer_f1_over(pipeline))
    rows = [("candidate", "", c.mode, c.retrieval_label(), SELECT, report) for c, report in reports.items()]
    table_rows = pa.Table.from_pylist(evaluation_rows(run_id, "", rows), store.EVALUATIONS_SCHEMA)
    lance.apply(store.EVALUATIONS, store.EVALUATIONS_SCHEMA, "id", table_rows, [])
    log_selection(chosen)
    return chosen


def log_selection(selection: Selection) -> None:
    """Keep the selection in the active MLflow run."""
    import mlflow

    mlflow.log_text(to_json(selection), SELECTION_FILE)
    mlflow.set_tag(SELECTION_TAG, selection.winner.retrieval_label())


def recorded_selection(client: MlflowClient, experiment: str, run_id: str | None) -> Selection | None:
    """The selection kept in MLflow run ``run_id``, else the newest one of the experiment; None if none was kept."""
    from llmops_dagster.core.registry import tagged_run

    run = tagged_run(client, experiment, run_id, SELECTION_TAG)
    if run is None:
        return None
    return from_json(Path(client.download_artifacts(run.info.run_id, SELECTION_FILE)).read_text())


def selection_problem(selection: Selection, configured: RagConfig) -> str | None:
    """Why a kept selection cannot serve an environment's settings: it was made from other ones."""
    mine, theirs = (json.loads(json.dumps(asdict(config))) for config in (configured, selection.configured))  # as stored
    differing = sorted(key for key in mine if mine[key] != theirs.get(key))
    return f"the recorded selection was made from other rag settings ({', '.join(differing)})" if differing else None
