"""Typed Dagster resources, split by what they hold: ``storage`` (landing zone, LanceDB),
``indexing`` (embedder, chunker, compute engine, ANN settings), ``model_settings`` (training, RAG,
evaluation) and ``registry`` (MLflow registry, upstream environment, MLflow run). Each carries its
section of the settings (``section``). ``build_resources`` derives one environment's set from its
settings; the CLI uses the same resources."""

from __future__ import annotations

from typing import Any

from llmops_dagster.resources.compute import PipesComputeResource, compute_resource
from llmops_dagster.resources.indexing import ChunkerResource, ComputeEngineResource, EmbedderResource, VectorIndexResource
from llmops_dagster.resources.model_settings import EvaluationResource, RagResource, TrainingResource
from llmops_dagster.resources.registry import RegistryResource, UpstreamRegistryResource, mlflow_run_resource
from llmops_dagster.resources.section import SettingsSection
from llmops_dagster.resources.storage import LanceDBResource, LandingZoneResource
from llmops_dagster.settings import EnvSettings

__all__ = [
    "ChunkerResource",
    "ComputeEngineResource",
    "EmbedderResource",
    "EvaluationResource",
    "LanceDBResource",
    "LandingZoneResource",
    "PipesComputeResource",
    "RagResource",
    "RegistryResource",
    "SettingsSection",
    "TrainingResource",
    "UpstreamRegistryResource",
    "VectorIndexResource",
    "build_resources",
    "mlflow_run_resource",
    "settings_resources",
]


def build_resources(settings: EnvSettings) -> dict[str, Any]:
    """One environment's resources, all derived from its settings, with the MLflow run of each Dagster run."""
    resources = settings_resources(settings)
    return {**resources, "mlflow": mlflow_run_resource(resources["registry"], settings.name)}


def settings_resources(settings: EnvSettings) -> dict[str, Any]:
    """The one path from settings to core objects: the Dagster definitions and the CLI both take it.

    Each resource carries its section of the settings and builds the core objects from it; the
    chunker and the compute engine nest the embedder.
    """
    section = SettingsSection.of
    embedder = EmbedderResource(embedding=section(settings.embedding))
    resources: dict[str, Any] = {
        "landing": LandingZoneResource(path=str(settings.landing), ingestion=section(settings.ingestion)),
        "lancedb": LanceDBResource(uri=settings.lancedb_uri),
        "embedder": embedder,
        "engine": ComputeEngineResource(
            engine=settings.engine, spark_master=settings.spark_master, spark_remote=settings.spark_remote, embedder=embedder
        ),
        "chunker": ChunkerResource(chunking=section(settings.chunking), embedder=embedder),
        "vector_index": VectorIndexResource(index=section(settings.index)),
        "training": TrainingResource(trains=settings.promotion.source is None, training=section(settings.training)),
        "rag": RagResource(rag=section(settings.rag)),
        "evaluation": EvaluationResource(evaluation=section(settings.evaluation)),
        "registry": RegistryResource(mlflow=section(settings.mlflow)),
        "compute": compute_resource(settings),
    }
    if settings.promotion.source and settings.upstream_model:
        resources["upstream"] = UpstreamRegistryResource(env=settings.promotion.source, registered_model=settings.upstream_model)
    return resources
