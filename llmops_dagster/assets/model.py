"""embedding_model, rag_model and evaluation: train, register a challenger, and gate it.

The MLflow registry is the contract: every blocking check writes its verdict to the challenger
version as a tag, and ``validation_status`` sums them up, so promotion can read the registry alone.
"""

import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pyarrow as pa

from llmops_dagster.assets._metadata import column_schema, markdown_table
from llmops_dagster.assets.index import VECTOR_INDEX
from llmops_dagster.core import registry as model_registry
from llmops_dagster.core import store
from llmops_dagster.core.checks import Verdict
from llmops_dagster.resources import (
    EmbedderResource,
    EvaluationResource,
    LanceDBResource,
    LandingZoneResource,
    RagResource,
    RegistryResource,
    TrainingResource,
    VectorIndexResource,
)

EMBEDDING_MODEL = dg.AssetKey("embedding_model")
RAG_MODEL = dg.AssetKey("rag_model")
EVALUATION = dg.AssetKey("evaluation")

MODEL_LOADS_AND_ANSWERS = "model_loads_and_answers"
SIGNATURE_VALID = "signature_valid"
MEETS_THRESHOLDS = "meets_thresholds"
NO_WORSE_THAN_CHAMPION = "no_worse_than_champion"
REQUIRED_CHECKS = (MODEL_LOADS_AND_ANSWERS, SIGNATURE_VALID, MEETS_THRESHOLDS, NO_WORSE_THAN_CHAMPION)

ADAPTER_FILE = "adapter.npy"
HELD_OUT_FILE = "held_out.jsonl"
TRAIN_FILE = "train.jsonl"


def _sibling(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, key: dg.AssetKey) -> dg.AssetKey:
    """``key`` in the same environment (asset keys are prefixed with the environment name)."""
    own = context.asset_key if isinstance(context, dg.AssetExecutionContext) else context.check_specs[0].asset_key
    return dg.AssetKey([*own.path[:-1], *key.path])


def _latest_metadata(context: Any, key: dg.AssetKey) -> dict[str, Any]:
    event = context.instance.get_latest_materialization_event(_sibling(context, key))
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"{key.to_user_string()} has not been materialized in this environment yet")
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def _metric_name(name: str) -> str:
    return name.replace("@", "_at_")


def _mlflow_metrics(prefix: str, report: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}.{_metric_name(name)}": float(value) for name, value in report.items()}


def _index_table(lancedb: LanceDBResource):
    table = lancedb.store().open(store.EMBEDDINGS)
    if table is None or table.count_rows() == 0:
        raise dg.Failure("the embeddings table is empty; materialize embeddings and vector_index first")
    return table


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
    from llmops_dagster.core.training import ChunkRecord, config_params, fit, pairs_digest

    config = training.config()
    model = embedder.load()
    table = _index_table(lancedb)
    rows = table.search().select(["id", "source", "heading", "text", "vector"]).limit(None).to_arrow()
    chunks = [ChunkRecord(r["id"], r["source"], r["heading"] or "", r["text"]) for r in rows.select(["id", "source", "heading", "text"]).to_pylist()]
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
        mlflow.log_metrics({**_mlflow_metrics("held_out.base", report.base), **_mlflow_metrics("held_out.trained", report.trained)})
        mlflow.log_metric("training_seconds", report.result.seconds)
        mlflow.log_text("\n".join(p.to_json() for p in report.held_out) + "\n", f"embedding_model/{HELD_OUT_FILE}")
        mlflow.log_text("\n".join(p.to_json() for p in report.train) + "\n", f"embedding_model/{TRAIN_FILE}")
        if report.result.weight is not None:
            path = Path(scratch) / ADAPTER_FILE
            np.save(path, report.result.weight)
            mlflow.log_artifact(str(path), "embedding_model")
        if report.result.model_dir is not None:
            mlflow.log_artifacts(str(report.result.model_dir), "embedding_model/model")
    mlflow.set_tag("llmops.embedding_model.winner", report.winner)
    artifact_root = f"runs:/{run.info.run_id}/embedding_model"
    comparison = markdown_table(
        ["model", "recall@1", "recall@5", "recall@10", "MRR@10", "nDCG@10"],
        [[name, *(f"{metrics[m]:.3f}" for m in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"))]
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
    embedder: EmbedderResource,
    vector_index: VectorIndexResource,
    rag: RagResource,
    registry: RegistryResource,
) -> dg.MaterializeResult:
    """The RAG model as an MLflow pyfunc (embedder + adapter + retrieval settings + answer
    generator), registered under the environment's model name with the alias ``challenger``.

    A version whose content equals an existing version's is not registered again; that version
    becomes the challenger.
    """
    from llmops_dagster.core.rag import ModelSpec, index_models
    from llmops_dagster.core.rag_model import CONTENT_TAG, content_digest, log_rag_model

    upstream = _latest_metadata(context, EMBEDDING_MODEL)
    model = embedder.load()
    table = _index_table(lancedb)
    index_fingerprints = index_models(table)
    if index_fingerprints != {model.fingerprint}:
        raise dg.Failure(f"the index holds {sorted(index_fingerprints)}, not {model.fingerprint}; materialize embeddings first")
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
    config = rag.config()
    spec = ModelSpec(
        lancedb_uri=lancedb.uri,
        table=store.EMBEDDINGS,
        index_embedding_model=model.fingerprint,
        rag=config,
        ann=vector_index.params(),
        embedder_variant=variant,
        device=embedder.device,
        index_version=table.version,
        registered_index=lancedb.uri,
    )
    generator = Path(config.generator_model).expanduser() if config.generator_model else None
    digest = content_digest(spec, model.fingerprint, adapter, str(generator) if generator else None)
    client = registry.client()
    name = registry.registered_model
    existing = model_registry.find_version(client, name, CONTENT_TAG, digest)
    if existing is not None:
        version = str(existing.version)
        context.log.info(f"{name} v{version} already holds this exact model; reusing it")
    else:
        version = log_rag_model(spec, model.model_path, adapter, generator, name, tags={"llmops.variant": variant})
        for key, value in {
            CONTENT_TAG: digest,
            model_registry.DAGSTER_RUN_TAG: context.run_id,
            "embedder_variant": variant,
            "index_embedding_model": model.fingerprint,
            "training_run_id": str(upstream["mlflow_run_id"]),
            model_registry.VALIDATION_STATUS: model_registry.PENDING,
        }.items():
            client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, model_registry.CHALLENGER, version)
    run = mlflow.active_run()
    return dg.MaterializeResult(
        metadata={
            "model_name": name,
            "model_version": str(version),
            "model_uri": f"models:/{name}/{version}",
            "alias": model_registry.CHALLENGER,
            "embedder_variant": variant,
            "registered_new_version": existing is None,
            "content_digest": digest,
            "retrieval": f"k={config.k}, {config.mode}",
            "generator": f"transformers: {generator}" if generator else "extractive",
            "mlflow_run_id": run.info.run_id if run else "",
        }
    )


def _challenger(registry: RegistryResource) -> tuple[Any, str, str]:
    client = registry.client()
    version = model_registry.version_by_alias(client, registry.registered_model, model_registry.CHALLENGER)
    if version is None:
        raise dg.Failure(f"{registry.registered_model} has no '{model_registry.CHALLENGER}' version; materialize rag_model first")
    return client, registry.registered_model, str(version.version)


def _gate(
    context: Any, registry: RegistryResource, check: str, verdict: Verdict, metrics: dict[str, float] | None = None
) -> dg.AssetCheckResult:
    """Write the verdict to the challenger version and return it as the check result."""
    client, name, version = _challenger(registry)
    status = model_registry.record_check(client, name, version, check, verdict.passed, REQUIRED_CHECKS, context.run.run_id, metrics)
    metadata = {**verdict.metadata, "model_version": version, model_registry.VALIDATION_STATUS: status}
    return dg.AssetCheckResult(check_name=check, passed=verdict.passed, description=verdict.description, metadata=metadata)


@dg.asset_check(asset=RAG_MODEL, blocking=True, description="the challenger loads with mlflow.pyfunc.load_model and answers a smoke question")
def model_loads_and_answers(
    context: dg.AssetCheckExecutionContext, registry: RegistryResource, evaluation: EvaluationResource, lancedb: LanceDBResource
) -> dg.AssetCheckResult:
    from llmops_dagster.core.rag_model import load_version

    _, name, version = _challenger(registry)
    question = evaluation.smoke_question
    try:
        started = time.perf_counter()
        model = load_version(name, version, lancedb.uri)
        answer = model.predict(_frame(question)).iloc[0]
        seconds = time.perf_counter() - started
    except Exception as error:  # the verdict is the point: any failure to load or answer fails the gate
        verdict = Verdict(False, f"v{version} did not load or answer: {type(error).__name__}: {error}")
    else:
        passed = bool(answer["answer"]) and len(answer["passages"]) > 0
        verdict = Verdict(
            passed,
            f"v{version} answered '{question}' with {len(answer['passages'])} passage(s)" if passed else f"v{version} returned no passages",
            {"load_and_answer_seconds": round(seconds, 2), "smoke_answer": str(answer["answer"])[:300]},
        )
    return _gate(context, registry, MODEL_LOADS_AND_ANSWERS, verdict)


def _frame(question: str):
    import pandas as pd

    from llmops_dagster.core.rag import QUESTION_COLUMN

    return pd.DataFrame({QUESTION_COLUMN: [question]})


@dg.asset_check(asset=RAG_MODEL, blocking=True, description="the signature takes a question string and returns every output column, with k/mode params and an input example")
def signature_valid(context: dg.AssetCheckExecutionContext, registry: RegistryResource) -> dg.AssetCheckResult:
    from mlflow.models import get_model_info

    from llmops_dagster.core.rag import signature_problems

    _, name, version = _challenger(registry)
    info = get_model_info(f"models:/{name}/{version}")
    problems = signature_problems(info.signature.to_dict() if info.signature else None, info.saved_input_example_info is not None)
    verdict = Verdict(not problems, "; ".join(problems) or f"v{version}: signature and input example are valid", {"model_version": version})
    return _gate(context, registry, SIGNATURE_VALID, verdict)


def _row_id(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@dg.asset(
    key=EVALUATION,
    deps=[RAG_MODEL],
    group_name="model",
    kinds={"mlflow", "lancedb"},
    check_specs=[
        dg.AssetCheckSpec(MEETS_THRESHOLDS, asset=EVALUATION, blocking=True, description="challenger metrics reach the environment's minimums"),
        dg.AssetCheckSpec(NO_WORSE_THAN_CHAMPION, asset=EVALUATION, blocking=True, description="challenger trails the champion by no more than the tolerance"),
    ],
)
def evaluation(
    context: dg.AssetExecutionContext,
    lancedb: LanceDBResource,
    landing: LandingZoneResource,
    registry: RegistryResource,
    evaluation: EvaluationResource,
    mlflow: dg.ResourceParam[Any],
):
    """Retrieval (recall@1/5/10, MRR@10, nDCG@10) and answer token-F1 of the challenger against the
    base model, the trained model and the current champion, over vector, text and hybrid search.

    The evaluation set is the held-out mined pairs plus the gold questions in the landing zone's
    ``questions/*.jsonl``. Rows are kept per run in the ``evaluations`` table.
    """
    from llmops_dagster.core.evaluation import evaluate, evaluation_set, meets_thresholds, no_worse_than_champion
    from llmops_dagster.core.index import SEARCH_MODES
    from llmops_dagster.core.questions import landing_questions
    from llmops_dagster.core.rag import IndexMismatchError, QueryEncoder, RagPipeline
    from llmops_dagster.core.rag_model import load_version
    from llmops_dagster.core.training import Pair

    thresholds = evaluation.thresholds()
    upstream = _latest_metadata(context, EMBEDDING_MODEL)
    held_out_text = Path(mlflow.artifacts.download_artifacts(f"{upstream['artifacts']}/{HELD_OUT_FILE}")).read_text()
    held_out = [Pair.from_json(line) for line in held_out_text.splitlines() if line.strip()]
    gold, rejected = landing_questions(landing.root)
    for problem in rejected:
        context.log.warning(f"gold question skipped: {problem}")
    sources = set(lancedb.store().read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path"]).column("path").to_pylist())
    items, skipped = evaluation_set(held_out, gold, sources)
    for problem in skipped:
        context.log.warning(f"gold question skipped: {problem}")

    client, name, version = _challenger(registry)
    challenger = load_version(name, version, lancedb.uri).unwrap_python_model().pipeline
    mode = challenger.config.mode
    adapter = None
    if upstream["has_adapter"]:
        adapter = np.load(mlflow.artifacts.download_artifacts(f"{upstream['artifacts']}/{ADAPTER_FILE}"))
    systems: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    embedder = challenger.encoder.embedder
    base = RagPipeline(QueryEncoder(embedder, None), challenger.table, challenger.params, challenger.config)
    systems[("base", mode)] = evaluate(base, items, mode)
    if adapter is not None:
        trained = RagPipeline(QueryEncoder(embedder, adapter), challenger.table, challenger.params, challenger.config)
        systems[("trained", mode)] = evaluate(trained, items, mode)
    for search_mode in SEARCH_MODES:
        systems[("challenger", search_mode)] = evaluate(challenger, items, search_mode, answers=search_mode == mode)

    champion_version = model_registry.version_by_alias(client, name, model_registry.CHAMPION)
    champion_label, not_comparable, champion_metrics = None, None, None
    if champion_version is not None:
        champion_label = f"champion v{champion_version.version}"
        try:
            champion = load_version(name, str(champion_version.version), lancedb.uri).unwrap_python_model().pipeline
        except IndexMismatchError as error:
            not_comparable = f"{champion_label} cannot be evaluated on this index: {error}"
        else:
            systems[("champion", champion.config.mode)] = evaluate(champion, items, champion.config.mode, answers=True)
            champion_metrics = systems[("champion", champion.config.mode)]["all"]

    now = datetime.now(UTC)
    rows = []
    for (system, search_mode), report in systems.items():
        system_version = {"challenger": version, "champion": str(champion_version.version) if champion_version else ""}.get(system, "")
        for query_set, metrics in report.items():
            rows.append(
                {
                    "id": _row_id(context.run_id, system, search_mode, query_set),
                    "dagster_run_id": context.run_id,
                    "evaluated_at": now,
                    "model_name": name,
                    "model_version": system_version,
                    "system": system,
                    "mode": search_mode,
                    "query_set": query_set,
                    "queries": int(metrics.get("queries", 0)),
                    **{_metric_name(m): metrics.get(m) for m in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")},
                    "answer_f1": metrics.get("answer_f1"),
                }
            )
    lance = lancedb.store()
    write = lance.apply(store.EVALUATIONS, store.EVALUATIONS_SCHEMA, "id", pa.Table.from_pylist(rows, store.EVALUATIONS_SCHEMA), [])

    gate_metrics = systems[("challenger", mode)]["all"]
    mlflow.log_metrics(_mlflow_metrics(f"evaluation.challenger_v{version}", gate_metrics))
    threshold_verdict = meets_thresholds(gate_metrics, thresholds)
    champion_verdict = no_worse_than_champion(gate_metrics, champion_metrics, thresholds.champion_tolerance, champion_label, not_comparable)
    recorded = {_metric_name(k): v for k, v in gate_metrics.items() if k != "queries"}
    if "answer_f1" in systems[("challenger", mode)].get("gold", {}):
        recorded["answer_f1"] = systems[("challenger", mode)]["gold"]["answer_f1"]
    table_rows = [
        [system, search_mode, *(f"{r['all'][m]:.3f}" for m in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")),
         f"{r['gold']['answer_f1']:.3f}" if "answer_f1" in r.get("gold", {}) else "–"]
        for (system, search_mode), r in systems.items()
    ]
    summary = (
        f"Challenger **v{version}** ({mode}) on {int(gate_metrics['queries'])} queries "
        f"({len(held_out)} held-out pairs, {sum(1 for i in items if i.query_set == 'gold')} gold questions)"
        + (f", against {champion_label}" if champion_label else ", no champion yet")
        + ".\n\n"
        + markdown_table(["system", "mode", "recall@1", "recall@5", "recall@10", "MRR@10", "nDCG@10", "answer F1"], table_rows)
    )
    yield dg.MaterializeResult(
        metadata={
            "summary": dg.MetadataValue.md(summary),
            "dagster/row_count": lance.count(store.EVALUATIONS),
            "dagster/column_schema": column_schema(store.EVALUATIONS_SCHEMA),
            "table_version": write.version or 0,
            "model_version": version,
            "queries": int(gate_metrics["queries"]),
            "gold_questions_skipped": len(rejected) + len(skipped),
            **{f"challenger_{_metric_name(k)}": round(v, 4) for k, v in gate_metrics.items() if k != "queries"},
        }
    )
    yield _gate(context, registry, MEETS_THRESHOLDS, threshold_verdict, recorded)
    yield _gate(context, registry, NO_WORSE_THAN_CHAMPION, champion_verdict)
