"""embedding_model and rag_model in the training environment: train on the corpus, register a challenger."""

import json
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from llmops_dagster.assets._metadata import markdown_table
from llmops_dagster.assets.index import VECTOR_INDEX
from llmops_dagster.assets.model_registry import (
    ADAPTER_FILE,
    EMBEDDING_MODEL,
    HELD_OUT_FILE,
    RAG_MODEL,
    TRAIN_FILE,
    index_table,
    mlflow_metrics,
    training_done,
)
from llmops_dagster.core import registry as model_registry
from llmops_dagster.core import store
from llmops_dagster.core.metrics import RETRIEVAL_METRICS
from llmops_dagster.core.registry import TRAINING_ADAPTER_TAG, TRAINING_WINNER_TAG
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
) -> dg.MaterializeResult:
    """A model trained on (query, passage) pairs mined from the corpus: heading → section and
    sentence → chunk, with part of the queries held out.

    The default is a query-side adapter on the frozen, cached chunk vectors (the index stays as it
    is); ``training.mode: full`` fine-tunes the transformer (for GPUs). Parameters, per-epoch loss,
    held-out metrics and the weights go to the MLflow run of this Dagster run.
    """
    from llmops_dagster.core.training import CHUNK_COLUMNS, chunk_records, config_params, fit, pairs_digest

    config = training.config()
    model = embedder.load()
    table = index_table(lancedb)
    rows = table.search().select([*CHUNK_COLUMNS, "vector"]).limit(None).to_arrow()
    chunks = chunk_records(rows)
    vectors = np.asarray(rows.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False)).reshape(len(chunks), -1)
    with tempfile.TemporaryDirectory() as scratch:
        report = fit(chunks, vectors, model.encode, model.model_path, config, Path(scratch), log=context.log.info)
        run = mlflow.active_run()
        mlflow.log_params(
            {
                **config_params(config),
                "training.base_model": model.fingerprint,
                "training.index_version": table.version,
                "training.pairs_train": len(report.train),
                "training.pairs_held_out": len(report.held_out),
                "training.pairs_digest": pairs_digest(report.train + report.held_out),
            }
        )
        for step, loss in enumerate(report.result.losses):
            mlflow.log_metric("train_loss", loss, step=step)
        mlflow.log_metrics({**mlflow_metrics("held_out.base", report.base), **mlflow_metrics("held_out.trained", report.trained)})
        mlflow.log_metric("training_seconds", report.result.seconds)
        mlflow.log_text("\n".join(p.to_json() for p in report.held_out) + "\n", f"embedding_model/{HELD_OUT_FILE}")
        mlflow.log_text("\n".join(p.to_json() for p in report.train) + "\n", f"embedding_model/{TRAIN_FILE}")
        if report.result.weight is not None:
            path = Path(scratch) / ADAPTER_FILE
            np.save(path, report.result.weight)
            mlflow.log_artifact(str(path), "embedding_model")
        if report.result.model_dir is not None:
            mlflow.log_artifacts(str(report.result.model_dir), "embedding_model/model")
    mlflow.set_tags({TRAINING_WINNER_TAG: report.winner, TRAINING_ADAPTER_TAG: str(report.result.weight is not None).lower()})
    artifact_root = f"runs:/{run.info.run_id}/embedding_model"
    comparison = markdown_table(
        ["model", "recall@1", "recall@5", "recall@10", "MRR@10", "nDCG@10"],
        [[name, *(f"{metrics[m]:.3f}" for m in RETRIEVAL_METRICS)]
         for name, metrics in (("base", report.base), (f"trained ({config.mode})", report.trained))],
    )
    losses = report.result.losses
    summary = (
        f"{len(report.train)} training and {len(report.held_out)} held-out pairs from {len(chunks)} chunks; "
        f"{config.mode} training took {report.result.seconds:.1f}s on {report.result.device}, loss {losses[0]:.4f} → {losses[-1]:.4f}. "
        f"**{report.winner}** retrieves better on the held-out queries.\n\n{comparison}"
    )
    return dg.MaterializeResult(
        metadata={
            "summary": dg.MetadataValue.md(summary),
            "mode": config.mode,
            "winner": report.winner,
            "held_out_mrr_at_10_base": round(report.base["mrr@10"], 4),
            "held_out_mrr_at_10_trained": round(report.trained["mrr@10"], 4),
            "pairs_train": len(report.train),
            "pairs_held_out": len(report.held_out),
            "training_seconds": round(report.result.seconds, 2),
            "base_model": model.fingerprint,
            "mlflow_run_id": run.info.run_id,
            "artifacts": artifact_root,
            "has_adapter": report.result.weight is not None,
        }
    )


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
) -> dg.MaterializeResult:
    """The RAG model as an MLflow pyfunc (embedder + adapter + retrieval settings + answer
    generator), registered under the environment's model name with the alias ``challenger``.

    The retrieval it carries (mode, fusion, the text list's weight, candidate depth) is the
    candidate that evaluated best on the select half of the evaluation set, unless
    ``rag.select_by_evaluation`` is off. A version whose content equals an existing version's is
    not registered again; that version becomes the challenger.
    """
    from llmops_dagster.core.model_spec import ModelSpec
    from llmops_dagster.core.rag import QueryEncoder, index_models, index_problem
    from llmops_dagster.core.rag_model import register_challenger

    upstream = training_done(registry, mlflow)
    model = embedder.load()
    table = index_table(lancedb)
    index_fingerprint = chunker.index_fingerprint()
    problem = index_problem(index_models(table), index_fingerprint)
    if problem:
        raise dg.Failure(f"{problem}; materialize embeddings first")
    adapter = None
    variant = "base"
    if upstream["winner"] == "trained" and upstream["has_adapter"]:
        adapter = np.load(mlflow.artifacts.download_artifacts(f"{upstream['artifacts']}/{ADAPTER_FILE}"))
        variant = "trained"
    elif upstream["winner"] == "trained":
        context.log.warning(
            "the fully fine-tuned model evaluated better, but the index holds base-model vectors; "
            "deploying the base model. Point embedding.model at the logged model to re-embed with it."
        )
    config, chosen = rag.config(), None
    if config.select_by_evaluation:
        chosen = select_retrieval(
            context, config, QueryEncoder(model, adapter), table, vector_index.params(), lancedb, landing, registry, training, mlflow
        )
        context.log.info(chosen.summary())
        config = chosen.winner
    spec = ModelSpec(
        lancedb_uri=lancedb.uri,
        table=store.EMBEDDINGS,
        index_embedding_model=index_fingerprint,
        rag=config,
        ann=vector_index.params(),
        embedder_variant=variant,
        device=embedder.config().device,
        index_version=table.version,
        registered_index=lancedb.uri,
    )
    generator = local_generator_weights(config)
    identity = config.generator.identity()
    mlflow.log_params({f"generator.{key}": value for key, value in generator_params(identity).items()})
    name = registry.registered_model
    version, reused = register_challenger(
        registry.client(),
        name,
        spec,
        model.model_path,
        adapter,
        generator,
        tags={
            model_registry.DAGSTER_RUN_TAG: context.run_id,
            "embedder_variant": variant,
            "index_embedding_model": index_fingerprint,
            "retrieval": config.retrieval_label(),
            "training_run_id": str(upstream["mlflow_run_id"]),
            "generator": json.dumps(identity, sort_keys=True),
        },
    )
    if reused:
        context.log.info(f"{name} v{version} already holds this exact model; reusing it")
    run = mlflow.active_run()
    return dg.MaterializeResult(
        metadata={
            "model_name": name,
            "model_version": str(version),
            "model_uri": f"models:/{name}/{version}",
            "alias": model_registry.CHALLENGER,
            "embedder_variant": variant,
            "registered_new_version": not reused,
            "retrieval": f"k={config.k}, {config.retrieval_label()}",
            "retrieval_selection": chosen.summary() if chosen else "off (rag.select_by_evaluation is false)",
            **({"retrieval_candidates": dg.MetadataValue.md(candidates_table(chosen))} if chosen else {}),
            "generator": json.dumps(identity, sort_keys=True),
            "prompt_template_digest": identity["template"] or "none (extractive)",
            "mlflow_run_id": run.info.run_id if run else "",
        }
    )


def local_generator_weights(config: Any) -> Path | None:
    """The weights of a local generator (a GGUF file or a model folder), which the registered
    version carries; None for the extractive generator and for an endpoint."""
    generator = config.generator
    if generator.kind != "local":
        return None
    path = Path(generator.path).expanduser()
    if not path.exists():
        raise dg.Failure(f"rag.generator.path '{generator.path}' does not exist (a transformers model folder or a .gguf file)")
    return path


def generator_params(identity: dict[str, Any]) -> dict[str, str]:
    """The generator's identity as flat MLflow params: kind, model, template digest, parameters."""
    flat = {"kind": identity["kind"], "model": identity["model"] or "", "template": identity["template"] or ""}
    flat.update({key: str(value) for key, value in identity["parameters"].items()})
    return flat


def select_retrieval(
    context: dg.AssetExecutionContext,
    configured: Any,
    encoder: Any,
    table: Any,
    params: Any,
    lancedb: LanceDBResource,
    landing: LandingZoneResource,
    registry: RegistryResource,
    training: TrainingResource,
    mlflow: Any,
) -> Any:
    """Every retrieval candidate on the select half of the evaluation set, the best one kept; each
    candidate's figures go to the ``evaluations`` table (split ``select``)."""
    from llmops_dagster.assets.gate import evaluation_items
    from llmops_dagster.core import selection
    from llmops_dagster.core.comparison import evaluation_rows
    from llmops_dagster.core.evaluation import evaluate, with_cached_queries
    from llmops_dagster.core.rag import RagPipeline

    items, _ = evaluation_items(context, lancedb, landing, registry, training, mlflow)
    halves = selection.split(items)
    pipeline = with_cached_queries(RagPipeline(encoder, table, params, configured), (item.query for item in items))
    reports: dict[Any, dict[str, dict[str, float]]] = {}

    def score(config: Any, chosen_items: Any) -> dict[str, float]:
        reports[config] = evaluate(with_cached_queries(pipeline, [], config), chosen_items, config.mode)
        return reports[config]["all"]

    chosen = selection.select(configured, halves[selection.SELECT], score)

    def answer_f1(config: Any, answered: Any) -> float:
        return evaluate(with_cached_queries(pipeline, [], config), answered, config.mode, answers=True)["gold"]["answer_f1"]

    chosen = selection.select_k(chosen, halves[selection.SELECT], answer_f1)
    rows = [("candidate", "", c.mode, c.retrieval_label(), selection.SELECT, report) for c, report in reports.items()]
    lancedb.store().apply(
        store.EVALUATIONS,
        store.EVALUATIONS_SCHEMA,
        "id",
        pa.Table.from_pylist(evaluation_rows(context.run_id, "", rows), store.EVALUATIONS_SCHEMA),
        [],
    )
    return chosen


def candidates_table(chosen: Any) -> str:
    rows = [
        [("**" + c.config.retrieval_label() + "** (selected)") if c.config == chosen.winner else c.config.retrieval_label(),
         f"{c.metrics['recall@5']:.3f}", f"{c.metrics['mrr@10']:.3f}", int(c.metrics["queries"])]
        for c in chosen.candidates
    ]
    return chosen.summary() + "\n\n" + markdown_table(["retrieval (select half)", "recall@5", "MRR@10", "queries"], rows)
