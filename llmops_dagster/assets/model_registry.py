"""What the model-stage asset modules share, no assets: their keys and check names, the challenger
lookup, and ``record_verdict``, which writes a check's verdict to the challenger version in the registry."""

from typing import Any

import dagster as dg

from llmops_dagster.core import registry as model_registry
from llmops_dagster.core import store
from llmops_dagster.core.checks import Verdict
from llmops_dagster.resources import LanceDBResource, RegistryResource

EMBEDDING_MODEL = dg.AssetKey("embedding_model")
RAG_MODEL = dg.AssetKey("rag_model")
EVALUATION = dg.AssetKey("evaluation")

MODEL_LOADS_AND_ANSWERS = "model_loads_and_answers"
SIGNATURE_VALID = "signature_valid"
MEETS_THRESHOLDS = "meets_thresholds"
NO_WORSE_THAN_CHAMPION = "no_worse_than_champion"
BEATS_NAIVE_BASELINE = "beats_naive_baseline"
ANSWERS_GROUNDED = "answers_grounded"
NO_NAVIGATION_IN_TOP_RESULTS = "no_navigation_in_top_results"
REQUIRED_CHECKS = (
    MODEL_LOADS_AND_ANSWERS, SIGNATURE_VALID, MEETS_THRESHOLDS, NO_WORSE_THAN_CHAMPION, BEATS_NAIVE_BASELINE, ANSWERS_GROUNDED,
)


def training_done(registry: RegistryResource, mlflow: Any) -> dict[str, Any]:
    """The embedding model this environment trained (winner, adapter, artifacts), read from MLflow:
    this run's own training when it trained, else the newest. Not the latest materialization event,
    which may belong to another run."""
    active = mlflow.active_run()
    record = model_registry.training_record(registry.client(), registry.experiment, active.info.run_id if active else None)
    if record is None:
        raise dg.Failure(f"nothing was trained in {registry.experiment} yet; materialize embedding_model first")
    return record


def index_table(lancedb: LanceDBResource):
    table = lancedb.store().open(store.EMBEDDINGS)
    if table is None or table.count_rows() == 0:
        raise dg.Failure("the embeddings table is empty; materialize embeddings and vector_index first")
    return table



def challenger_version(registry: RegistryResource) -> tuple[Any, str, str]:
    client = registry.client()
    version = model_registry.version_by_alias(client, registry.registered_model, model_registry.CHALLENGER)
    if version is None:
        raise dg.Failure(f"{registry.registered_model} has no '{model_registry.CHALLENGER}' version; materialize rag_model first")
    return client, registry.registered_model, str(version.version)


def record_verdict(
    context: Any, registry: RegistryResource, check: str, verdict: Verdict, metrics: dict[str, float] | None = None
) -> dg.AssetCheckResult:
    """Write the verdict to the challenger version and return it as the check result."""
    client, name, version = challenger_version(registry)
    status = model_registry.record_check(client, name, version, check, verdict.passed, REQUIRED_CHECKS, context.run.run_id, metrics)
    metadata = {**verdict.metadata, "model_version": version, model_registry.VALIDATION_STATUS: status}
    return dg.AssetCheckResult(check_name=check, passed=verdict.passed, description=verdict.description, metadata=metadata)


