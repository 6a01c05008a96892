"""batch_predictions: answers to the landing zone's questions, by the champion (or the challenger)."""

from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa

from llmops_dagster.assets._metadata import table_metadata
from llmops_dagster.assets.model_registry import RAG_MODEL
from llmops_dagster.core import registry as model_registry
from llmops_dagster.core import store
from llmops_dagster.resources import ComputeEngineResource, LanceDBResource, LandingZoneResource, RegistryResource

BATCH_PREDICTIONS = dg.AssetKey("batch_predictions")
ONE_ROW_PER_QUESTION = "one_row_per_question"


def serving_version(registry: RegistryResource) -> tuple[str, str, str]:
    """(alias, version, validation status) of the model that should answer: champion, else challenger."""
    serving = model_registry.serving_version(registry.client(), registry.registered_model)
    if serving is None:
        raise dg.Failure(f"{registry.registered_model} has neither a champion nor a challenger; materialize rag_model first")
    alias, version = serving
    return alias, str(version.version), version.tags.get(model_registry.VALIDATION_STATUS, model_registry.PENDING)


@dg.asset(key=BATCH_PREDICTIONS, deps=[RAG_MODEL], group_name="predictions", kinds={"mlflow", "lancedb"})
def batch_predictions(
    context: dg.AssetExecutionContext,
    landing: LandingZoneResource,
    lancedb: LanceDBResource,
    registry: RegistryResource,
    engine: ComputeEngineResource,
) -> dg.MaterializeResult:
    """Answers, passages and sources for every question in the landing zone's ``questions/*.jsonl``,
    produced by the ``champion`` (or by the ``challenger`` while there is no champion).

    With the Spark engine the model runs as ``mlflow.pyfunc.spark_udf``; otherwise in process.
    Rows are appended per run and keyed by run and question, so re-running a run adds nothing twice.
    """
    from llmops_dagster.core.questions import landing_questions
    from llmops_dagster.core.rag_model import predict_local, predict_spark

    questions, rejected = landing_questions(landing.root)
    for problem in rejected:
        context.log.warning(f"question skipped: {problem}")
    alias, version, status = serving_version(registry)
    name = registry.registered_model
    uri = f"models:/{name}/{version}"
    context.log.info(f"answering {len(questions)} question(s) with {alias} v{version} ({status}) on the {engine.engine} engine")
    texts = [q.question for q in questions]
    if not texts:
        answers = None
    elif engine.engine == "spark":
        from llmops_dagster.core.spark import spark_session

        answers = predict_spark(spark_session(engine.spark_master, engine.spark_remote), uri, texts, lancedb.uri)
    else:
        answers = predict_local(uri, texts, lancedb.uri)
    now = datetime.now(UTC)
    rows = []
    for position, question in enumerate(questions):
        answer = answers.iloc[position]
        rows.append(
            {
                "id": store.row_id(context.run_id, question.origin),
                "dagster_run_id": context.run_id,
                "origin": question.origin,
                "question": question.question,
                "answer": answer["answer"],
                "found": bool(answer["found"]),
                "passages": list(answer["passages"]),
                "sources": list(answer["sources"]),
                "scores": [float(s) for s in answer["scores"]],
                "model_name": name,
                "model_version": version,
                "model_alias": alias,
                "latency_ms": float(answer["latency_ms"]),
                "predicted_at": now,
                # Versions registered before generators were configurable return none of these.
                "cited": [int(n) for n in answer.get("cited", [])],
                "prompt_tokens": int(answer.get("prompt_tokens", 0)),
                "completion_tokens": int(answer.get("completion_tokens", 0)),
                "generator": answer.get("generator") or "",
                "error": answer.get("error") or "",
            }
        )
    lance = lancedb.store()
    write = lance.apply(store.PREDICTIONS, store.PREDICTIONS_SCHEMA, "id", pa.Table.from_pylist(rows, store.PREDICTIONS_SCHEMA), [])
    found = sum(1 for row in rows if row["found"])
    failed = [row for row in rows if row["error"]]
    for row in failed[:5]:
        context.log.warning(f"{row['origin']}: {row['error']}")
    summary = (
        f"**{len(rows)}** question(s) answered by **{alias} v{version}** ({status}) on the {engine.engine} engine; "
        f"{found} with an answer, {len(rows) - found} without ({len(failed)} of them because generation failed); "
        f"{len(rejected)} line(s) rejected."
    )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(store.PREDICTIONS_SCHEMA, lance.count(store.PREDICTIONS), write.version, lance.uri, store.PREDICTIONS, summary),
            "questions_this_run": len(rows),
            "rejected_lines": len(rejected),
            "model_alias": alias,
            "model_version": version,
            "validation_status": status,
            "engine": engine.engine,
            "generation_failures": len(failed),
            "prompt_tokens": sum(row["prompt_tokens"] for row in rows),
            "completion_tokens": sum(row["completion_tokens"] for row in rows),
        }
    )


@dg.asset_check(asset=BATCH_PREDICTIONS, description="this run wrote exactly one row per valid question")
def one_row_per_question(context: dg.AssetCheckExecutionContext, landing: LandingZoneResource, lancedb: LanceDBResource) -> dg.AssetCheckResult:
    from llmops_dagster.core.questions import landing_questions

    questions, rejected = landing_questions(landing.root)
    run = context.run.run_id
    written = lancedb.store().read(store.PREDICTIONS, store.PREDICTIONS_SCHEMA, ["origin"], where=f"dagster_run_id = '{run}'")
    origins = written.column("origin").to_pylist()
    duplicates = len(origins) - len(set(origins))
    passed = len(origins) == len(questions) and duplicates == 0
    return dg.AssetCheckResult(
        passed=passed,
        description=f"{len(origins)} row(s) for {len(questions)} valid question(s), {duplicates} duplicate(s), {len(rejected)} rejected line(s)",
        metadata={"rows": len(origins), "questions": len(questions), "duplicates": duplicates, "rejected_lines": len(rejected)},
    )
