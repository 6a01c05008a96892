"""batch_predictions: answers to the landing zone's questions, by the champion (or the challenger)."""

import dagster as dg

from llmops_dagster.assets._metadata import table_metadata
from llmops_dagster.assets.model_registry import RAG_MODEL
from llmops_dagster.core import store
from llmops_dagster.resources import ComputeEngineResource, LanceDBResource, LandingZoneResource, RegistryResource
from llmops_dagster.resources.compute import PipesComputeResource

BATCH_PREDICTIONS = dg.AssetKey("batch_predictions")
ONE_ROW_PER_QUESTION = "one_row_per_question"


@dg.asset(key=BATCH_PREDICTIONS, deps=[RAG_MODEL], group_name="predictions", kinds={"mlflow", "lancedb"})
def batch_predictions(
    context: dg.AssetExecutionContext,
    landing: LandingZoneResource,
    lancedb: LanceDBResource,
    registry: RegistryResource,
    engine: ComputeEngineResource,
    compute: PipesComputeResource,
) -> dg.MaterializeResult:
    """Answers, passages and sources for every question in the landing zone's ``questions/*.jsonl``,
    produced by the ``champion`` (or by the ``challenger`` while there is no champion).

    With the Spark engine the model runs as ``mlflow.pyfunc.spark_udf``; otherwise in process. With
    ``compute: databricks`` the step runs as a Databricks job (the ``llmops-pipes-predict`` entry
    point, through Dagster Pipes). Rows are keyed by run and question, so re-running a run adds
    nothing twice.
    """
    if compute.on_databricks:
        return compute.run(context, "predict", extras={"landing": str(landing.root)}).get_materialize_result()
    from llmops_dagster.core.batch import NoServingModel, predict_batch

    lance = lancedb.store()
    try:
        result = predict_batch(
            context.run_id,
            landing.root,
            lance,
            registry.client(),
            registry.registered_model,
            engine=engine.engine,
            spark_master=engine.spark_master,
            spark_remote=engine.spark_remote,
            log=context.log.info,
            warn=context.log.warning,
        )
    except NoServingModel as error:
        raise dg.Failure(str(error)) from None
    metadata = result.metadata()
    return dg.MaterializeResult(
        metadata={
            **metadata,
            **table_metadata(store.PREDICTIONS_SCHEMA, result.total_rows, result.write.version, lance.uri, store.PREDICTIONS, result.summary()),
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
