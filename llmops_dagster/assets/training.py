"""embedding_model and rag_model in the training environment: train on the corpus, register a challenger."""

import json
from typing import TYPE_CHECKING, Any

import dagster as dg

from llmops_dagster.assets._metadata import markdown_table
from llmops_dagster.assets.index import VECTOR_INDEX
from llmops_dagster.assets.model_registry import EMBEDDING_MODEL, RAG_MODEL, index_table, training_done
from llmops_dagster.core import registry as model_registry
from llmops_dagster.core.metrics import RETRIEVAL_METRICS
from llmops_dagster.pipes import MLFLOW_RUN_EXTRA
from llmops_dagster.resources import (
    ChunkerResource,
    EmbedderResource,
    LanceDBResource,
    LandingZoneResource,
    RagResource,
    RegistryResource,
    TrainingResource,
    VectorIndexResource,
)
from llmops_dagster.resources.compute import PipesComputeResource

if TYPE_CHECKING:
    from llmops_dagster.core.rag_model import Registration
    from llmops_dagster.core.selection import Selection
    from llmops_dagster.core.training import TrainedEmbeddingModel


@dg.asset(
    key=EMBEDDING_MODEL,
    deps=[VECTOR_INDEX],
    group_name="model",
    kinds={"pytorch", "mlflow"},
)
def embedding_model(
    context: dg.AssetExecutionContext,
    lancedb: LanceDBResource,
    embedder: EmbedderResource,
    training: TrainingResource,
    mlflow: dg.ResourceParam[Any],
    compute: PipesComputeResource,
) -> dg.MaterializeResult:
    """A model trained on (query, passage) pairs mined from the corpus: heading → section and
    sentence → chunk, with part of the queries held out.

    The default is a query-side adapter on the frozen, cached chunk vectors (the index stays as it
    is); ``training.mode: full`` fine-tunes the transformer (for GPUs). Parameters, per-epoch loss,
    held-out metrics and the weights go to the MLflow run of this Dagster run, also when
    ``compute: databricks`` runs the training as a Databricks job (the ``llmops-pipes-train``
    entry point, through Dagster Pipes).
    """
    if compute.on_databricks:
        extras = {MLFLOW_RUN_EXTRA: mlflow.active_run().info.run_id}
        return compute.run(context, "train", extras=extras).get_materialize_result()
    from llmops_dagster.core.training import train_embedding_model

    trained = train_embedding_model(index_table(lancedb), embedder.load(), training.config(), log=context.log.info)
    return dg.MaterializeResult(metadata=embedding_model_metadata(trained))


def embedding_model_metadata(trained: "TrainedEmbeddingModel") -> dict[str, Any]:
    """What ``embedding_model`` reports, in process or from the ``train`` Pipes step."""
    report = trained.report
    mode = report.config.mode
    comparison = markdown_table(
        ["model", "recall@1", "recall@5", "recall@10", "MRR@10", "nDCG@10"],
        [[name, *(f"{metrics[m]:.3f}" for m in RETRIEVAL_METRICS)]
         for name, metrics in (("base", report.base), (f"trained ({mode})", report.trained))],
    )
    losses = report.result.losses
    summary = (
        f"{len(report.train)} training and {len(report.held_out)} held-out pairs from {trained.chunks} chunks; "
        f"{mode} training took {report.result.seconds:.1f}s on {report.result.device}, loss {losses[0]:.4f} → {losses[-1]:.4f}. "
        f"**{report.winner}** retrieves better on the held-out queries.\n\n{comparison}"
    )
    return {
        "summary": dg.MetadataValue.md(summary),
        "mode": mode,
        "winner": report.winner,
        "held_out_mrr_at_10_base": round(report.base["mrr@10"], 4),
        "held_out_mrr_at_10_trained": round(report.trained["mrr@10"], 4),
        "pairs_train": len(report.train),
        "pairs_held_out": len(report.held_out),
        "training_seconds": round(report.result.seconds, 2),
        "base_model": trained.base_model,
        "mlflow_run_id": trained.mlflow_run_id,
        "artifacts": trained.artifacts,
        "has_adapter": trained.has_adapter,
    }


@dg.asset(key=RAG_MODEL, deps=[EMBEDDING_MODEL], group_name="model", kinds={"mlflow"})
def rag_model(
    context: dg.AssetExecutionContext,
    mlflow: dg.ResourceParam[Any],
    lancedb: LanceDBResource,
    landing: LandingZoneResource,
    embedder: EmbedderResource,
    chunker: ChunkerResource,
    vector_index: VectorIndexResource,
    rag: RagResource,
    training: TrainingResource,
    registry: RegistryResource,
    compute: PipesComputeResource,
) -> dg.MaterializeResult:
    """The RAG model as an MLflow pyfunc (embedder + adapter + retrieval settings + answer
    generator), registered under the environment's model name with the alias ``challenger``.

    The retrieval it carries (mode, fusion, the text list's weight, candidate depth) is the
    candidate that evaluated best on the select half of the evaluation set, unless
    ``rag.select_by_evaluation`` is off. A version whose content equals an existing version's is
    not registered again; that version becomes the challenger. With ``compute: databricks`` the
    selection and the registration run there, as the bundle's ``llmops-pipes-evaluate`` and
    ``llmops-pipes-register`` steps (through Pipes), logging into this run's MLflow run.
    """
    if compute.on_databricks:
        extras = {MLFLOW_RUN_EXTRA: mlflow.active_run().info.run_id, "landing": str(landing.root)}
        if rag.config().select_by_evaluation:
            compute.run(context, "evaluate", extras=extras)  # the selection, kept in the MLflow run for register
        return compute.run(context, "register", extras=extras).get_materialize_result()
    from llmops_dagster.assets.gate import evaluation_items
    from llmops_dagster.core.rag import QueryEncoder, index_models, index_problem
    from llmops_dagster.core.rag_model import challenger_spec, register_rag_model
    from llmops_dagster.core.selection import select_retrieval
    from llmops_dagster.core.training import deployable_adapter

    upstream = training_done(registry, mlflow)
    model = embedder.load()
    table = index_table(lancedb)
    index_fingerprint = chunker.index_fingerprint()
    problem = index_problem(index_models(table), index_fingerprint)
    if problem:
        raise dg.Failure(f"{problem}; materialize embeddings first")
    adapter, variant, warning = deployable_adapter(upstream)
    if warning:
        context.log.warning(warning)
    config, chosen = rag.config(), None
    if config.select_by_evaluation:
        items, _ = evaluation_items(context, lancedb, landing, training, registry, mlflow, upstream)
        chosen = select_retrieval(config, QueryEncoder(model, adapter), table, vector_index.params(), items, lancedb.store(), context.run_id)
        context.log.info(chosen.summary())
        config = chosen.winner
    spec = challenger_spec(lancedb.uri, table, index_fingerprint, config, vector_index.params(), variant, embedder.config().device)
    try:
        registered = register_rag_model(
            registry.client(), registry.registered_model, spec, model.model_path, adapter, context.run_id, str(upstream["mlflow_run_id"])
        )
    except FileNotFoundError as error:  # a local generator's weights are missing
        raise dg.Failure(str(error)) from None
    if registered.reused:
        context.log.info(f"{registered.name} v{registered.version} already holds this exact model; reusing it")
    run = mlflow.active_run()
    return dg.MaterializeResult(metadata=rag_model_metadata(registered, chosen, run.info.run_id if run else ""))


def rag_model_metadata(registered: "Registration", chosen: "Selection | None", mlflow_run_id: str) -> dict[str, Any]:
    """What ``rag_model`` reports, in process or from the ``register`` Pipes step."""
    config, identity = registered.spec.rag, registered.generator
    return {
        "model_name": registered.name,
        "model_version": str(registered.version),
        "model_uri": registered.uri,
        "alias": model_registry.CHALLENGER,
        "embedder_variant": registered.spec.embedder_variant,
        "registered_new_version": not registered.reused,
        "retrieval": f"k={config.k}, {config.retrieval_label()}",
        "retrieval_selection": chosen.summary() if chosen else "off (rag.select_by_evaluation is false)",
        **({"retrieval_candidates": dg.MetadataValue.md(candidates_table(chosen))} if chosen else {}),
        "generator": json.dumps(identity, sort_keys=True),
        "prompt_template_digest": identity["template"] or "none (extractive)",
        "mlflow_run_id": mlflow_run_id,
    }


def candidates_table(chosen: "Selection") -> str:
    rows = [
        [("**" + c.config.retrieval_label() + "** (selected)") if c.config == chosen.winner else c.config.retrieval_label(),
         f"{c.metrics['recall@5']:.3f}", f"{c.metrics['mrr@10']:.3f}", int(c.metrics["queries"])]
        for c in chosen.candidates
    ]
    return chosen.summary() + "\n\n" + markdown_table(["retrieval (select half)", "recall@5", "MRR@10", "queries"], rows)
