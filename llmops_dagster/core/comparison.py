"""What the evaluation compares, and the rows it keeps: the challenger against the base and trained
encoders, its own three search modes, every retrieval candidate, the champion and the naive
baseline, on the questions and halves each comparison is fair on.

Plain Python over ``RagPipeline``s: the ``evaluation`` asset loads the versions and the documents,
calls ``compare_systems``, and presents the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np

from llmops_dagster.core import navigation, selection
from llmops_dagster.core.baseline import Bm25Baseline, windows
from llmops_dagster.core.evaluation import EvalItem, as_locations, evaluate, evaluate_retriever, with_cached_queries
from llmops_dagster.core.generation import GeneratorConfig
from llmops_dagster.core.index import SEARCH_MODES, Passage
from llmops_dagster.core.metrics import RETRIEVAL_METRICS, metric_name
from llmops_dagster.core.rag import QueryEncoder, RagConfig, RagPipeline
from llmops_dagster.core.store import row_id

Report = dict[str, dict[str, float]]
BASELINE_LABEL = "200-word windows, BM25"
ANSWER_METRICS = ("answer_f1", "groundedness", "citation_validity", "no_answer_rate")


@dataclass
class Comparison:
    systems: dict[tuple[str, str], Report]  # (system, mode) over every question
    gate: Report  # the challenger on the report half: what the gate reads
    candidates: dict[RagConfig, Report]  # every retrieval candidate on the report half
    champion: dict[str, float] | None  # the champion on the report half
    baseline: dict[str, float]  # the naive baseline on the report half, by location
    challenger_located: dict[str, float]  # the challenger on the same located questions
    navigation_hits: list[str] = field(default_factory=list)  # top-5 gold passages that read as navigation
    gold_passages: int = 0


def compare_systems(
    challenger: RagPipeline,
    adapter: np.ndarray | None,
    items: Sequence[EvalItem],
    champion: RagPipeline | None,
    documents: list[dict],
) -> Comparison:
    """Every comparison of one evaluation. ``adapter`` is the trained query adapter when this
    environment trained one; ``documents`` are rows with ``path`` and ``blocks`` for the baseline."""
    report_items = selection.split(items)[selection.REPORT]
    challenger = with_cached_queries(challenger, (item.query for item in items))
    mode = challenger.config.mode
    embedder = challenger.encoder.embedder
    systems: dict[tuple[str, str], Report] = {}
    base = RagPipeline(QueryEncoder(embedder, None), challenger.table, challenger.params, challenger.config)
    systems[("base", mode)] = evaluate(base, items, mode)
    if adapter is not None:
        trained = RagPipeline(QueryEncoder(embedder, adapter), challenger.table, challenger.params, challenger.config)
        systems[("trained", mode)] = evaluate(trained, items, mode)
    for search_mode in SEARCH_MODES:
        systems[("challenger", search_mode)] = evaluate(challenger, items, search_mode, answers=search_mode == mode)
    if challenger.config.generator.kind != "extractive":  # the configured generator against the weight-free one
        extractive = challenger.variant(config=replace(challenger.config, generator=GeneratorConfig()))
        systems[("extractive answers", mode)] = evaluate(extractive, items, mode, answers=True)
    candidates = {
        candidate: evaluate(with_cached_queries(challenger, [], candidate), report_items, candidate.mode)
        for candidate in selection.candidates(challenger.config)
    }
    champion_metrics = None
    if champion is not None:
        systems[("champion", champion.config.mode)] = evaluate(champion, items, champion.config.mode, answers=True)
        champion_metrics = evaluate(champion, report_items, champion.config.mode)["all"]
    # The naive baseline has its own passage boundaries, so both sides are scored on locations.
    located = as_locations(report_items, located_chunks(challenger))
    with Bm25Baseline(windows(documents)) as bm25:
        baseline = evaluate_retriever(bm25.retrieve, located)["all"]
    gold_top = [p.text for item in items if item.query_set == "gold" for p in challenger.retrieve(item.query, 5)]
    return Comparison(
        systems=systems,
        gate=candidates[challenger.config],  # the challenger's own retrieval is the first candidate
        candidates=candidates,
        champion=champion_metrics,
        baseline=baseline,
        challenger_located=evaluate(challenger, located, mode)["all"],
        navigation_hits=[text for text in gold_top if navigation.looks_like_navigation(text)],
        gold_passages=len(gold_top),
    )


def located_chunks(pipeline: RagPipeline) -> dict[str, Passage]:
    """Every chunk of the pipeline's index with where it stands (source, pages, heading)."""
    rows = pipeline.table.search().select(["id", "source", "page", "page_end", "heading"]).limit(None).to_arrow().to_pylist()
    return {r["id"]: Passage(r["id"], "", r["source"], r["page"], r["heading"] or "", 0.0, r["page_end"]) for r in rows}


def comparison_rows(comparison: Comparison, challenger: RagConfig, version: str, champion_version: str) -> list[tuple]:
    """(system, version, mode, retrieval, split, report) for each figure of a comparison."""
    label = challenger.retrieval_label()
    rows = [
        (system, {"challenger": version, "champion": champion_version}.get(system, ""), mode,
         label if system == "challenger" and mode == challenger.mode else mode, selection.ALL, report)
        for (system, mode), report in comparison.systems.items()
    ]
    rows.append(("challenger", version, challenger.mode, label, selection.REPORT, comparison.gate))
    rows += [("candidate", version, c.mode, c.retrieval_label(), selection.REPORT, r) for c, r in comparison.candidates.items()]
    rows.append(("naive_bm25", "", "text", BASELINE_LABEL, selection.REPORT, {"all": comparison.baseline}))
    return rows


def evaluation_rows(run_id: str, model_name: str, rows: Sequence[tuple]) -> list[dict]:
    """Rows of the ``evaluations`` table from (system, version, mode, retrieval, split, report) tuples."""
    now = datetime.now(UTC)
    table = []
    for system, version, mode, retrieval, split, report in rows:
        for query_set, metrics in report.items():
            table.append(
                {
                    "id": row_id(run_id, system, retrieval, split, query_set),
                    "dagster_run_id": run_id,
                    "evaluated_at": now,
                    "model_name": model_name,
                    "model_version": version,
                    "system": system,
                    "mode": mode,
                    "query_set": query_set,
                    "split": split,
                    "retrieval": retrieval,
                    "queries": int(metrics.get("queries", 0)),
                    **{metric_name(name): metrics.get(name) for name in RETRIEVAL_METRICS},
                    **{name: metrics.get(name) for name in ANSWER_METRICS},
                }
            )
    return table

