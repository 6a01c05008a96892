"""rag_model in an environment that does not train: the upstream environment's validated champion,
copied into this environment's registered model as its challenger."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from llmops_dagster.assets.index import VECTOR_INDEX
from llmops_dagster.assets.model_registry import RAG_MODEL, index_table
from llmops_dagster.core import registry as model_registry
from llmops_dagster.resources import LanceDBResource, RegistryResource, UpstreamRegistryResource
from llmops_dagster.tags import SOURCE_VERSION_TAG


@dg.asset(key=RAG_MODEL, deps=[VECTOR_INDEX], group_name="model", kinds={"mlflow"}, output_required=False)
def rag_model(
    context: dg.AssetExecutionContext,
    mlflow: dg.ResourceParam[Any],
    lancedb: LanceDBResource,
    registry: RegistryResource,
    upstream: UpstreamRegistryResource,
) -> Iterator[dg.MaterializeResult]:
    """The upstream environment's champion, copied here (as ``copy_model_version`` does) as the challenger.

    This environment does not train: it evaluates the copy on its own data, and the champion sensor
    promotes it once every blocking check has passed. With nothing new upstream, the current
    challenger stays and is evaluated again on the current data. With no upstream champion and no
    challenger yet, nothing is materialized and the model steps after it are skipped: documents
    landing here before the source environment has a champion are still ingested and indexed.
    """
    from llmops_dagster.core import promotion
    from llmops_dagster.core.rag import index_models

    client = registry.client()
    name = registry.registered_model
    wanted = context.run.tags.get(SOURCE_VERSION_TAG)
    if wanted is None:
        champion = model_registry.version_by_alias(client, upstream.registered_model, model_registry.CHAMPION)
        wanted = str(champion.version) if champion is not None else None
    if wanted is None:
        current = model_registry.version_by_alias(client, name, model_registry.CHALLENGER)
        if current is None:
            context.log.info(f"{upstream.registered_model} has no champion yet and {name} has no challenger: nothing to evaluate")
            return
        version = str(current.version)
        context.log.info(f"no upstream champion; evaluating the current challenger v{version} again")
    else:
        source = client.get_model_version(upstream.registered_model, wanted)
        if source.tags.get(model_registry.VALIDATION_STATUS) != model_registry.PASSED:
            raise dg.Failure(f"{upstream.registered_model} v{wanted} is not PASSED upstream; refusing to adopt it")
        version = promotion.copy_from(client, upstream.registered_model, wanted, name, context.run.run_id)
        context.log.info(f"{upstream.registered_model} v{wanted} is {name} v{version}, now the challenger")
    copied = client.get_model_version(name, version)
    needed = copied.tags.get("index_embedding_model")
    held = index_models(index_table(lancedb))
    if needed and held != {needed}:
        context.log.warning(f"v{version} needs an index of {needed}; this environment's index holds {sorted(held)}")
    run = mlflow.active_run()
    yield dg.MaterializeResult(
        metadata={
            "model_name": name,
            "model_version": version,
            "model_uri": f"models:/{name}/{version}",
            "alias": model_registry.CHALLENGER,
            "source_model": copied.tags.get(promotion.SOURCE_MODEL, ""),
            "source_version": copied.tags.get(promotion.SOURCE_VERSION, ""),
            "mlflow_run_id": run.info.run_id if run else "",
        }
    )
