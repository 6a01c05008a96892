"""The gate on the challenger: it loads and answers, its signature is valid, and its evaluation
reaches the environment's thresholds and the champion's level.

Every verdict is written to the challenger version as a tag, and ``validation_status`` sums them
up, so promotion reads the registry alone.
"""

import time
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from llmops_dagster.assets._metadata import column_schema, markdown_table
from llmops_dagster.assets.model_registry import (
    ADAPTER_FILE,
    ANSWERS_GROUNDED,
    BEATS_NAIVE_BASELINE,
    EVALUATION,
    HELD_OUT_FILE,
    MEETS_THRESHOLDS,
    MODEL_LOADS_AND_ANSWERS,
    NO_NAVIGATION_IN_TOP_RESULTS,
    NO_WORSE_THAN_CHAMPION,
    RAG_MODEL,
    SIGNATURE_VALID,
    challenger_version,
    index_table,
    metric_name,
    mlflow_metrics,
    record_verdict,
    training_done,
)
from llmops_dagster.core import registry as model_registry
from llmops_dagster.core import store
from llmops_dagster.core.checks import Verdict
from llmops_dagster.core.comparison import ANSWER_METRICS
from llmops_dagster.core.metrics import RETRIEVAL_METRICS
from llmops_dagster.resources import (
    EvaluationResource,
    LanceDBResource,
    LandingZoneResource,
    RegistryResource,
    TrainingResource,
)


@dg.asset_check(asset=RAG_MODEL, blocking=True, description="the challenger loads with mlflow.pyfunc.load_model and answers a smoke question")
def model_loads_and_answers(
    context: dg.AssetCheckExecutionContext, registry: RegistryResource, evaluation: EvaluationResource, lancedb: LanceDBResource
) -> dg.AssetCheckResult:
    from llmops_dagster.core.generation import GeneratorUnavailableError
    from llmops_dagster.core.rag_model import load_version

    _, name, version = challenger_version(registry)
    question = evaluation.gate().smoke_question
    try:
        started = time.perf_counter()
        model = load_version(name, version, lancedb.uri)
        model.unwrap_python_model().pipeline.generator.check()  # an endpoint that cannot be reached fails here, by URL
        answer = model.predict(_frame(question)).iloc[0]
        seconds = time.perf_counter() - started
    except GeneratorUnavailableError as error:
        verdict = Verdict(False, f"v{version}'s generator cannot answer: {error}")
    except Exception as error:  # the verdict is the point: any failure to load or answer fails the gate
        verdict = Verdict(False, f"v{version} did not load or answer: {type(error).__name__}: {error}")
    else:
        problem = answer.get("error") or ("" if len(answer["passages"]) else "returned no passages")
        verdict = Verdict(
            not problem and bool(answer["answer"]),
            f"v{version}: {problem}" if problem else f"v{version} answered '{question}' with {len(answer['passages'])} passage(s)",
            {"load_and_answer_seconds": round(seconds, 2), "smoke_answer": str(answer["answer"])[:300],
             "generator": str(answer.get("generator") or "")},
        )
    return record_verdict(context, registry, MODEL_LOADS_AND_ANSWERS, verdict)


ANSWER_REPORT = (*ANSWER_METRICS, "answered", "generation_errors", "answer_latency_ms", "prompt_tokens", "completion_tokens")


def _frame(question: str):
    import pandas as pd

    from llmops_dagster.core.rag import QUESTION_COLUMN

    return pd.DataFrame({QUESTION_COLUMN: [question]})


@dg.asset_check(
    asset=RAG_MODEL,
    blocking=True,
    description="the signature takes a question string and returns every output column, with k/mode params and an input example",
)
def signature_valid(context: dg.AssetCheckExecutionContext, registry: RegistryResource) -> dg.AssetCheckResult:
    from mlflow.models import get_model_info

    from llmops_dagster.core.model_spec import signature_problems

    _, name, version = challenger_version(registry)
    info = get_model_info(f"models:/{name}/{version}")
    problems = signature_problems(info.signature.to_dict() if info.signature else None, info.saved_input_example_info is not None)
    verdict = Verdict(not problems, "; ".join(problems) or f"v{version}: signature and input example are valid", {"model_version": version})
    return record_verdict(context, registry, SIGNATURE_VALID, verdict)


def trained_here(registry: RegistryResource, training: TrainingResource, mlflow: Any) -> dict[str, Any] | None:
    """This environment's trained embedding model, if it trains at all."""
    return training_done(registry, mlflow) if training.trains else None


def mined_here(lancedb: LanceDBResource, training: TrainingResource) -> list:
    """Query/passage pairs mined from this environment's own index (none of them were trained on here)."""
    from llmops_dagster.core.training import CHUNK_COLUMNS, chunk_records, mine_pairs, split_pairs

    chunks = chunk_records(index_table(lancedb).search().select(CHUNK_COLUMNS).limit(None).to_arrow())
    config = training.config()
    _, held_out = split_pairs(mine_pairs(chunks), config.held_out, config.seed, config.max_pairs, config.max_held_out)
    return held_out


def evaluation_items(
    context: dg.AssetExecutionContext,
    lancedb: LanceDBResource,
    landing: LandingZoneResource,
    registry: RegistryResource,
    training: TrainingResource,
    mlflow: Any,
) -> tuple[list, int]:
    """The evaluation set: the held-out pairs of this environment's training (or pairs mined from its
    own index, where it does not train) plus the landing zone's gold questions; and how many gold
    questions were skipped, each logged with its reason."""
    from llmops_dagster.core.evaluation import evaluation_set
    from llmops_dagster.core.questions import landing_questions
    from llmops_dagster.core.training import Pair

    upstream = trained_here(registry, training, mlflow)
    if upstream is not None:
        held_out_text = Path(mlflow.artifacts.download_artifacts(f"{upstream['artifacts']}/{HELD_OUT_FILE}")).read_text()
        held_out = [Pair.from_json(line) for line in held_out_text.splitlines() if line.strip()]
    else:
        held_out = mined_here(lancedb, training)
    gold, rejected = landing_questions(landing.root)
    sources = set(lancedb.store().read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path"]).column("path").to_pylist())
    items, skipped = evaluation_set(held_out, gold, sources)
    for problem in [*map(str, rejected), *skipped]:
        context.log.warning(f"gold question skipped: {problem}")
    return items, len(rejected) + len(skipped)


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
):
    """Retrieval (recall@1/5/10, MRR@10, nDCG@10) and answer token-F1 of the challenger against the
    base model, the trained model, the current champion and a naive baseline (200-word windows of
    the page text, searched by BM25), over vector, text and hybrid search and every retrieval
    candidate.

    The evaluation set is the held-out mined pairs plus the gold questions in the landing zone's
    ``questions/*.jsonl``. In an environment that does not train (a promoted copy is evaluated
    there), the pairs are mined from its own index. ``rag_model`` chose the retrieval on the select
    half of the set; the gate reads the report half, which selection never saw. Rows are kept per
    run in ``evaluations``.
    """
    from llmops_dagster.core import selection
    from llmops_dagster.core.comparison import compare_systems, comparison_rows, evaluation_rows
    from llmops_dagster.core.evaluation import answers_grounded, beats_baseline, meets_thresholds, no_worse_than_champion
    from llmops_dagster.core.rag import IndexMismatchError
    from llmops_dagster.core.rag_model import load_version

    thresholds = evaluation.gate()
    upstream = trained_here(registry, training, mlflow)
    items, gold_skipped = evaluation_items(context, lancedb, landing, registry, training, mlflow)
    client, name, version = challenger_version(registry)
    challenger = load_version(name, version, lancedb.uri).unwrap_python_model().pipeline
    adapter = challenger.encoder.adapter
    if upstream is not None and upstream["has_adapter"]:
        adapter = np.load(mlflow.artifacts.download_artifacts(f"{upstream['artifacts']}/{ADAPTER_FILE}"))
    champion_version = model_registry.version_by_alias(client, name, model_registry.CHAMPION)
    champion, champion_label, not_comparable = None, None, None
    if champion_version is not None:
        champion_label = f"champion v{champion_version.version}"
        try:
            champion = load_version(name, str(champion_version.version), lancedb.uri).unwrap_python_model().pipeline
        except IndexMismatchError as error:
            not_comparable = f"{champion_label} cannot be evaluated on this index: {error}"
    documents = lancedb.store().read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path", "blocks"]).to_pylist()
    result = compare_systems(challenger, adapter, items, champion, documents)

    mode, label = challenger.config.mode, challenger.config.retrieval_label()
    rows = comparison_rows(result, challenger.config, version, str(champion_version.version) if champion_version else "")
    lance = lancedb.store()
    write = lance.apply(
        store.EVALUATIONS,
        store.EVALUATIONS_SCHEMA,
        "id",
        pa.Table.from_pylist(evaluation_rows(context.run_id, name, rows), store.EVALUATIONS_SCHEMA),
        [],
    )
    gate_metrics = result.gate["all"]
    mlflow.log_metrics(mlflow_metrics(f"evaluation.challenger_v{version}", gate_metrics))
    mlflow.log_metrics(mlflow_metrics("evaluation.naive_bm25", result.baseline))
    threshold_verdict = meets_thresholds(gate_metrics, thresholds)
    champion_verdict = no_worse_than_champion(gate_metrics, result.champion, thresholds.champion_tolerance, champion_label, not_comparable)
    baseline_verdict = beats_baseline(result.challenger_located, result.baseline, thresholds.baseline_tolerance, "naive BM25 baseline")
    answers = {k: v for k, v in result.systems[("challenger", mode)].get("gold", {}).items() if k in ANSWER_REPORT}
    recorded = {metric_name(k): v for k, v in gate_metrics.items() if k != "queries"}
    recorded.update({k: answers[k] for k in ANSWER_METRICS if k in answers})
    mlflow.log_metrics({f"evaluation.challenger_v{version}.{k}": v for k, v in answers.items()})
    grounded_verdict = answers_grounded(answers, thresholds.min_groundedness, challenger.generator.name)

    def answer_cells(report: dict) -> list[str]:
        gold = report.get("gold", {})
        return [f"{gold[m]:.3f}" if m in gold else "–" for m in ANSWER_METRICS]

    table_rows = [
        [system, search_mode, *(f"{r['all'][m]:.3f}" if "all" in r else "–" for m in RETRIEVAL_METRICS), *answer_cells(r)]
        for (system, search_mode), r in result.systems.items()
    ]
    candidate_rows = [
        [("**" + c.retrieval_label() + "** (challenger)") if c == challenger.config else c.retrieval_label(),
         *(f"{r['all'][m]:.3f}" for m in ("recall@5", "mrr@10"))]
        for c, r in sorted(result.candidates.items(), key=lambda item: -selection.objective(item[1]["all"]))
    ]
    summary = (
        f"Challenger **v{version}** ({label}) on {int(gate_metrics['queries'])} report-half queries of {len(items)} "
        f"({sum(1 for i in items if i.query_set == 'held_out')} held-out pairs, {sum(1 for i in items if i.query_set == 'gold')} gold questions)"
        + (f", against {champion_label}" if champion_label else ", no champion yet")
        + ".\n\n**Every question**\n\n"
        + markdown_table(["system", "mode", "recall@1", "recall@5", "recall@10", "MRR@10", "nDCG@10", "answer F1", "grounded",
                          "citations valid", "no answer"], table_rows)
        + f"\n\nAnswers by **{challenger.generator.name}** (template {challenger.generator.identity.get('template') or 'none'})."
        + "\n\n**Retrieval candidates, report half** (selection used the other half)\n\n"
        + markdown_table(["retrieval", "recall@5", "MRR@10"], candidate_rows)
        + f"\n\n**Naive baseline** (report half, by page or section): BM25 over 200-word windows recall@5 "
        f"{result.baseline['recall@5']:.3f}, MRR@10 {result.baseline['mrr@10']:.3f}; challenger "
        f"{result.challenger_located['recall@5']:.3f}, {result.challenger_located['mrr@10']:.3f}."
    )
    yield dg.MaterializeResult(
        metadata={
            "summary": dg.MetadataValue.md(summary),
            "dagster/row_count": lance.count(store.EVALUATIONS),
            "dagster/column_schema": column_schema(store.EVALUATIONS_SCHEMA),
            "table_version": write.version or 0,
            "model_version": version,
            "retrieval": label,
            "queries": int(gate_metrics["queries"]),
            "gold_questions_skipped": gold_skipped,
            **{f"challenger_{metric_name(k)}": round(v, 4) for k, v in gate_metrics.items() if k != "queries"},
            **{f"naive_bm25_{metric_name(k)}": round(result.baseline[k], 4) for k in ("recall@5", "mrr@10")},
        }
    )
    yield record_verdict(context, registry, MEETS_THRESHOLDS, threshold_verdict, recorded)
    yield record_verdict(context, registry, NO_WORSE_THAN_CHAMPION, champion_verdict)
    yield record_verdict(context, registry, BEATS_NAIVE_BASELINE, baseline_verdict)
    yield record_verdict(context, registry, ANSWERS_GROUNDED, grounded_verdict)
    hits, passages = result.navigation_hits, result.gold_passages
    yield dg.AssetCheckResult(
        check_name=NO_NAVIGATION_IN_TOP_RESULTS,
        passed=not hits,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"{len(hits)} of {passages} top-5 passages of the gold questions read as a table of contents or index"
                     if hits else f"none of {passages} top-5 passages of the gold questions is navigation"),
        metadata={"passages": passages, "navigation": len(hits), "first": (hits or [""])[0][:300]},
    )
