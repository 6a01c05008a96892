"""What the evaluation compares, and the rows it keeps: the challenger against the base and trained
encoders, its own three search modes, every retrieval candidate, the champion and the naive
baseline, on the questions and halves each comparison is fair on.

Plain Python over ``RagPipeline``s: ``evaluate_challenger`` loads the versions and the documents,
calls ``compare_systems``, keeps the rows and gives the gate's verdicts, for the ``evaluation``
asset and the ``register`` Pipes step alike; they present and record the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from llmops_dagster.core import navigation, selection
from llmops_dagster.core.baseline import Bm25Baseline, windows
from llmops_dagster.core.checks import Verdict
from llmops_dagster.core.evaluation import EvalItem, GateSettings, as_locations, evaluate, evaluate_retriever, with_cached_queries
from llmops_dagster.core.generation import GeneratorConfig
from llmops_dagster.core.index import SEARCH_MODES, Passage
from llmops_dagster.core.metrics import RETRIEVAL_METRICS, metric_name
from llmops_dagster.core.rag import QueryEncoder, RagConfig, RagPipeline
from llmops_dagster.core.store import row_id

if TYPE_CHECKING:
    from llmops_dagster.core.store import LanceStore

Report = dict[str, dict[str, float]]
BASELINE_LABEL = "200-word windows, BM25"
ANSWER_METRICS = ("answer_f1", "groundedness", "citation_validity", "no_answer_rate")
ANSWER_REPORT = (*ANSWER_METRICS, "answered", "generation_errors", "answer_latency_ms", "prompt_tokens", "completion_tokens")


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



@dataclass
class GateEvaluation:
    """One evaluation of a challenger version: what was compared, and the gate's verdicts."""

    version: str
    config: RagConfig  # the challenger's
    generator: str  # its generator's name
    template: str | None  # ... and prompt template digest
    items: list[EvalItem]
    comparison: Comparison
    champion_label: str | None  # "champion vN", None without a champion
    champion_version: str  # "" without one
    answers: dict[str, float]  # the challenger's answers to the gold questions
    recorded: dict[str, float]  # the figures written to the version with the thresholds verdict
    meets_thresholds: Verdict
    no_worse_than_champion: Verdict
    beats_naive_baseline: Verdict
    answers_grounded: Verdict
    table_version: int

    @property
    def gate_metrics(self) -> dict[str, float]:
        return self.comparison.gate["all"]


def evaluate_challenger(
    client: Any,
    name: str,
    version: str,
    lance: LanceStore,
    items: list[EvalItem],
    trained_adapter: np.ndarray | None,
    thresholds: GateSettings,
    run_id: str,
    log: Callable[[str], None] = lambda _: None,
) -> GateEvaluation:
    """Evaluate version ``version`` of ``name`` against the base and trained encoders, the champion
    and the naive baseline (``compare_systems``); keep the rows in ``evaluations`` (keyed by
    ``run_id``), log the gate's figures to the active MLflow run, and give the verdicts.

    ``trained_adapter`` is this environment's trained query adapter, where it trains one; else the
    challenger's own adapter (a promoted copy's) is the trained system.
    """
    import mlflow
    import pyarrow as pa

    from llmops_dagster.core import registry, store
    from llmops_dagster.core.evaluation import answers_grounded, beats_baseline, meets_thresholds, no_worse_than_champion
    from llmops_dagster.core.rag import IndexMismatchError
    from llmops_dagster.core.rag_model import load_version
    from llmops_dagster.core.training import mlflow_metrics

    challenger = load_version(name, version, lance.uri).unwrap_python_model().pipeline
    adapter = trained_adapter if trained_adapter is not None else challenger.encoder.adapter
    champion_version = registry.version_by_alias(client, name, registry.CHAMPION)
    champion, champion_label, not_comparable = None, None, None
    if champion_version is not None:
        champion_label = f"champion v{champion_version.version}"
        try:
            champion = load_version(name, str(champion_version.version), lance.uri).unwrap_python_model().pipeline
        except IndexMismatchError as error:
            not_comparable = f"{champion_label} cannot be evaluated on this index: {error}"
    log(f"evaluating {name} v{version} on {len(items)} questions" + (f" against {champion_label}" if champion_label else ""))
    documents = lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path", "blocks"]).to_pylist()
    result = compare_systems(challenger, adapter, items, champion, documents)

    mode = challenger.config.mode
    champion_number = str(champion_version.version) if champion_version else ""
    rows = comparison_rows(result, challenger.config, version, champion_number)
    write = lance.apply(
        store.EVALUATIONS, store.EVALUATIONS_SCHEMA, "id", pa.Table.from_pylist(evaluation_rows(run_id, name, rows), store.EVALUATIONS_SCHEMA), []
    )
    gate_metrics = result.gate["all"]
    answers = {k: v for k, v in result.systems[("challenger", mode)].get("gold", {}).items() if k in ANSWER_REPORT}
    mlflow.log_metrics(mlflow_metrics(f"evaluation.challenger_v{version}", gate_metrics))
    mlflow.log_metrics(mlflow_metrics("evaluation.naive_bm25", result.baseline))
    mlflow.log_metrics({f"evaluation.challenger_v{version}.{k}": v for k, v in answers.items()})
    recorded = {metric_name(k): v for k, v in gate_metrics.items() if k != "queries"}
    recorded.update({k: answers[k] for k in ANSWER_METRICS if k in answers})
    return GateEvaluation(
        version=version,
        config=challenger.config,
        generator=challenger.generator.name,
        template=challenger.generator.identity.get("template"),
        items=list(items),
        comparison=result,
        champion_label=champion_label,
        champion_version=champion_number,
        answers=answers,
        recorded=recorded,
        meets_thresholds=meets_thresholds(gate_metrics, thresholds),
        no_worse_than_champion=no_worse_than_champion(
            gate_metrics, result.champion, thresholds.champion_tolerance, champion_label, not_comparable
        ),
        beats_naive_baseline=beats_baseline(result.challenger_located, result.baseline, thresholds.baseline_tolerance, "naive BM25 baseline"),
        answers_grounded=answers_grounded(answers, thresholds.min_groundedness, challenger.generator.name),
        table_version=write.version or 0,
    )
