"""Typed Dagster resources, split by what they hold: ``storage`` (landing zone, LanceDB),
``indexing`` (embedder, chunker, compute engine, ANN settings), ``model_settings`` (training, RAG,
evaluation) and ``registry`` (MLflow registry, upstream environment, MLflow run). ``build_resources``
derives one environment's set from its settings."""

from __future__ import annotations

from typing import Any

from llmops_dagster.resources.indexing import ChunkerResource, ComputeEngineResource, EmbedderResource, VectorIndexResource
from llmops_dagster.resources.model_settings import EvaluationResource, RagResource, TrainingResource
from llmops_dagster.resources.registry import RegistryResource, UpstreamRegistryResource, mlflow_run_resource
from llmops_dagster.resources.storage import LanceDBResource, LandingZoneResource
from llmops_dagster.settings import EnvSettings

__all__ = [
    "ChunkerResource",
    "ComputeEngineResource",
    "EmbedderResource",
    "EvaluationResource",
    "LanceDBResource",
    "LandingZoneResource",
    "RagResource",
    "RegistryResource",
    "TrainingResource",
    "UpstreamRegistryResource",
    "VectorIndexResource",
    "build_resources",
    "mlflow_run_resource",
]


def build_resources(settings: EnvSettings) -> dict[str, Any]:
    """One environment's resources, all derived from its settings (no per-environment copies)."""
    registry = RegistryResource(**vars(settings.mlflow))
    resources: dict[str, Any] = {
        "landing": LandingZoneResource(path=str(settings.landing), max_file_mb=settings.ingestion.max_file_mb),
        "lancedb": LanceDBResource(uri=settings.lancedb_uri),
        "embedder": EmbedderResource(
            model=settings.embedding.model,
            device=settings.embedding.device,
            precision=settings.embedding.precision,
            batch_size=settings.embedding.batch_size,
        ),
        "engine": ComputeEngineResource(
            engine=settings.engine, spark_master=settings.spark_master, spark_remote=settings.spark_remote
        ),
        "chunker": ChunkerResource(
            model=settings.embedding.model,
            chunk_tokens=settings.chunking.chunk_tokens,
            overlap_tokens=settings.chunking.overlap_tokens,
            context_template=settings.chunking.context_template,
            context_tokens=settings.chunking.context_tokens,
        ),
        "vector_index": VectorIndexResource(
            ann_min_rows=settings.index.ann_min_rows,
            ann_min_recall=settings.index.ann_min_recall,
            recall_sample=settings.index.recall_sample,
            nprobes=settings.index.nprobes,
            refine_factor=settings.index.refine_factor,
            ann_index_type=settings.index.ann_index_type,
        ),
        "training": TrainingResource(trains=settings.promotion.source is None, **vars(settings.training)),
        "rag": RagResource(**vars(settings.rag)),
        "evaluation": EvaluationResource(**vars(settings.evaluation)),
        "registry": registry,
        "mlflow": mlflow_run_resource(registry, settings.name),
    }
    if settings.promotion.source and settings.upstream_model:
        resources["upstream"] = UpstreamRegistryResource(env=settings.promotion.source, registered_model=settings.upstream_model)
    return resources
