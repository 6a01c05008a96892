"""The gate on the challenger: it loads and answers, its signature is valid, and its evaluation
reaches the environment's thresholds and the champion's level.

Every verdict is written to the challenger version as a tag, and ``validation_status`` sums them
up, so promotion reads the registry alone. The logic is in ``core`` (``rag_model.loads_and_answers``,
``rag_model.signature_verdict``, ``comparison.evaluate_challenger``), which the bundle's ``register``
Pipes step runs as well.
"""

from typing import Any

import dagster as dg

from llmops_dagster.assets._metadata import column_schema, markdown_table
from llmops_dagster.assets.model_registry import (
    ANSWERS_GROUNDED,
    BEATS_NAIVE_BASELINE,
    EVALUATION,
    MEETS_THRESHOLDS,
    MODEL_LOADS_AND_ANSWERS,
    NO_NAVIGATION_IN_TOP_RESULTS,
    NO_WORSE_THAN_CHAMPION,
    RAG_MODEL,
    SIGNATURE_VALID,
    challenger_version,
    index_table,
    record_verdict,
    training_done,
)
from llmops_dagster.core import store
from llmops_dagster.core.checks import Verdict
from llmops_dagster.core.comparison import ANSWER_METRICS, GateEvaluation
from llmops_dagster.core.metrics import RETRIEVAL_METRICS, metric_name
from llmops_dagster.pipes import MLFLOW_RUN_EXTRA
from llmops_dagster.resources import (
    EvaluationResource,
    LanceDBResource,
    LandingZoneResource,
    RegistryResource,
    TrainingResource,
)
from llmops_dagster.resources.compute import PipesComputeResource


@dg.asset_check(asset=RAG_MODEL, blocking=True, description="the challenger loads with mlflow.pyfunc.load_model and answers a smoke question")
def model_loads_and_answers(
    context: dg.AssetCheckExecutionContext, registry: RegistryResource, evaluation: EvaluationResource, lancedb: LanceDBResource
) -> dg.AssetCheckResult:
    from llmops_dagster.core.rag_model import loads_and_answers

    _, name, version = challenger_version(registry)
    verdict = loads_and_answers(name, version, lancedb.uri, evaluation.gate().smoke_question)
    return record_verdict(context, registry, MODEL_LOADS_AND_ANSWERS, verdict)


@dg.asset_check(
    asset=RAG_MODEL,
    blocking=True,
    description="the signature takes a question string and returns every output column, with k/mode params and an input example",
)
def signature_valid(context: dg.AssetCheckExecutionContext, registry: RegistryResource) -> dg.AssetCheckResult:
    from llmops_dagster.core.rag_model import signature_verdict

    _, name, version = challenger_version(registry)
    return record_verdict(context, registry, SIGNATURE_VALID, signature_verdict(name, version))


def trained_here(registry: RegistryResource, training: TrainingResource, mlflow: Any) -> dict[str, Any] | None:
    """This environment's trained embedding model, if it trains at all."""
    return training_done(registry, mlflow) if training.trains else None


def evaluation_items(
    context: dg.AssetExecutionContext,
    lancedb: LanceDBResource,
    landing: LandingZoneResource,
    training: TrainingResource,
    registry: RegistryResource,
    mlflow: Any,
    upstream: dict[str, Any] | None,
) -> tuple[list, int]:
    """The evaluation set of this run's MLflow run (``core.evaluation.run_evaluation_set``): the
    held-out pairs of this environment's training (``upstream``; or pairs mined from its own index,
    where it does not train) plus the landing zone's gold questions, built by whichever of
    ``rag_model`` and ``evaluation`` comes first; and how many gold questions were skipped, each
    logged with its reason."""
    from llmops_dagster.core.evaluation import landing_evaluation_set, run_evaluation_set
    from llmops_dagster.core.training import evaluation_pairs

    def build() -> tuple[list, list[str]]:
        return landing_evaluation_set(evaluation_pairs(upstream, index_table(lancedb), training.config()), landing.root, lancedb.store())

    run = mlflow.active_run()
    return run_evaluation_set(registry.client(), run.info.run_id if run else None, build, warn=context.log.warning)


@dg.asset(
    key=EVALUATION,
    deps=[RAG_MODEL],
    group_name="model",
    kinds={"mlflow", "lancedb"},
    check_specs=[
        dg.AssetCheckSpec(MEETS_THRESHOLDS, asset=EVALUATION, blocking=True, description="challenger metrics reach the environment's minimums"),
        dg.AssetCheckSpec(
            NO_WORSE_THAN_CHAMPION, asset=EVALUATION, blocking=True, description="challenger trails the champion by no more than the tolerance"
        ),
        dg.AssetCheckSpec(
            BEATS_NAIVE_BASELINE,
            asset=EVALUATION,
            blocking=True,
            description="challenger trails naive fixed windows searched by BM25 by no more than the tolerance",
        ),
        dg.AssetCheckSpec(
            ANSWERS_GROUNDED,
            asset=EVALUATION,
            blocking=True,
            description="the challenger's answers to the gold questions are grounded in their passages (evaluation.min_groundedness)",
        ),
        dg.AssetCheckSpec(
            NO_NAVIGATION_IN_TOP_RESULTS,
            asset=EVALUATION,
            description="no table of contents or index page among the top 5 results of the gold questions",
        ),
    ],
)
def evaluation(
    context: dg.AssetExecutionContext,
    lancedb: LanceDBResource,
    landing: LandingZoneResource,
    registry: RegistryResource,
    evaluation: EvaluationResource,
    training: TrainingResource,
    mlflow: dg.ResourceParam[Any],
    compute: PipesComputeResource,
):
    """Retrieval (recall@1/5/10, MRR@10, nDCG@10) and answer token-F1 of the challenger against the
    base model, the trained model, the current champion and a naive baseline (200-word windows of
    the page text, searched by BM25), over vector, text and hybrid search and every retrieval
    candidate.

    The evaluation set is the held-out mined pairs plus the gold questions in the landing zone's
    ``questions/*.jsonl``. In an environment that does not train (a promoted copy is evaluated
    there), the pairs are mined from its own index. ``rag_model`` chose the retrieval on the select
    half of the set; the gate reads the report half, which selection never saw. Rows are kept per
    run in ``evaluations``. With ``compute: databricks`` the same evaluation runs there, as the
    ``llmops-pipes-gate`` entry point, and reports its materialization and checks back through Pipes.
    """
    if compute.on_databricks:
        extras = {MLFLOW_RUN_EXTRA: mlflow.active_run().info.run_id, "landing": str(landing.root)}
        yield from compute.run(context, "gate", extras=extras).get_results()
        return
    from llmops_dagster.core.comparison import evaluate_challenger
    from llmops_dagster.core.training import trained_adapter

    upstream = trained_here(registry, training, mlflow)
    items, gold_skipped = evaluation_items(context, lancedb, landing, training, registry, mlflow, upstream)
    client, name, version = challenger_version(registry)
    lance = lancedb.store()
    adapter = trained_adapter(upstream)
    gate = evaluate_challenger(client, name, version, lance, items, adapter, evaluation.gate(), context.run_id, log=context.log.info)
    yield dg.MaterializeResult(metadata=evaluation_metadata(gate, lance.count(store.EVALUATIONS), gold_skipped))
    for check, verdict in gate_verdicts(gate).items():
        yield record_verdict(context, registry, check, verdict, gate.recorded if check == MEETS_THRESHOLDS else None)
    navigation = navigation_verdict(gate)
    yield dg.AssetCheckResult(
        check_name=NO_NAVIGATION_IN_TOP_RESULTS,
        passed=navigation.passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=navigation.description,
        metadata=navigation.metadata,
    )


def navigation_verdict(gate: GateEvaluation) -> Verdict:
    """Whether a table of contents or an index page is among the gold questions' top 5 passages (a warning, not blocking)."""
    hits, passages = gate.comparison.navigation_hits, gate.comparison.gold_passages
    return Verdict(
        passed=not hits,
        description=(f"{len(hits)} of {passages} top-5 passages of the gold questions read as a table of contents or index"
                     if hits else f"none of {passages} top-5 passages of the gold questions is navigation"),
        metadata={"passages": passages, "navigation": len(hits), "first": (hits or [""])[0][:300]},
    )


def gate_verdicts(gate: GateEvaluation) -> dict[str, Verdict]:
    """The blocking checks ``evaluation`` records on the challenger, by check name."""
    return {
        MEETS_THRESHOLDS: gate.meets_thresholds,
        NO_WORSE_THAN_CHAMPION: gate.no_worse_than_champion,
        BEATS_NAIVE_BASELINE: gate.beats_naive_baseline,
        ANSWERS_GROUNDED: gate.answers_grounded,
    }


def evaluation_metadata(gate: GateEvaluation, rows: int, gold_skipped: int) -> dict[str, Any]:
    """What ``evaluation`` reports, in process or from the ``gate`` and ``register`` Pipes steps."""
    from llmops_dagster.core import selection

    result, items, version = gate.comparison, gate.items, gate.version
    gate_metrics = gate.gate_metrics

    def answer_cells(report: dict) -> list[str]:
        gold = report.get("gold", {})
        return [f"{gold[m]:.3f}" if m in gold else "–" for m in ANSWER_METRICS]

    table_rows = [
        [system, search_mode, *(f"{r['all'][m]:.3f}" if "all" in r else "–" for m in RETRIEVAL_METRICS), *answer_cells(r)]
        for (system, search_mode), r in result.systems.items()
    ]
    candidate_rows = [
        [("**" + c.retrieval_label() + "** (challenger)") if c == gate.config else c.retrieval_label(),
         *(f"{r['all'][m]:.3f}" for m in ("recall@5", "mrr@10"))]
        for c, r in sorted(result.candidates.items(), key=lambda item: -selection.objective(item[1]["all"]))
    ]
    label = gate.config.retrieval_label()
    judged = ", ".join(f"{m} {gate_metrics[m]:.3f}" for m in RETRIEVAL_METRICS if m in gate_metrics)
    summary = (
        f"Challenger **v{version}** ({label}) on {int(gate_metrics['queries'])} report-half queries of {len(items)} "
        f"({sum(1 for i in items if i.query_set == 'held_out')} held-out pairs, {sum(1 for i in items if i.query_set == 'gold')} gold questions)"
        + (f", against {gate.champion_label}" if gate.champion_label else ", no champion yet")
        + f": {judged}. These report-half figures are what the gate judges."
        + f"\n\n**Every question, both halves** ({len(items)} queries)\n\n"
        + markdown_table(["system", "mode", "recall@1", "recall@5", "recall@10", "MRR@10", "nDCG@10", "answer F1", "grounded",
                          "citations valid", "no answer"], table_rows)
        + f"\n\nAnswers by **{gate.generator}** (template {gate.template or 'none'})."
        + "\n\n**Retrieval candidates, report half** (selection used the other half)\n\n"
        + markdown_table(["retrieval", "recall@5", "MRR@10"], candidate_rows)
        + f"\n\n**Naive baseline** (report half, by page or section): BM25 over 200-word windows recall@5 "
        f"{result.baseline['recall@5']:.3f}, MRR@10 {result.baseline['mrr@10']:.3f}; challenger "
        f"{result.challenger_located['recall@5']:.3f}, {result.challenger_located['mrr@10']:.3f}."
    )
    return {
        "summary": dg.MetadataValue.md(summary),
        "dagster/row_count": rows,
        "dagster/column_schema": column_schema(store.EVALUATIONS_SCHEMA),
        "table_version": gate.table_version,
        "model_version": version,
        "retrieval": label,
        "queries": int(gate_metrics["queries"]),
        "gold_questions_skipped": gold_skipped,
        **{f"challenger_{metric_name(k)}": round(v, 4) for k, v in gate_metrics.items() if k != "queries"},
        **{f"naive_bm25_{metric_name(k)}": round(result.baseline[k], 4) for k in ("recall@5", "mrr@10")},
    }
