"""The Spark engine: the same embedding function, run over Arrow record batches with mapInArrow.

Works on ``local[*]``, on a Spark Connect server (``sc://host:port``) and on Databricks Connect.
The model is loaded once per Python worker (``load_embedder`` is cached per process, and Spark
reuses its Python workers across tasks).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from llmops_dagster.core.embedding import EmbedderConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

OUTPUT_SCHEMA = "row long, vector array<float>"


def spark_session(master: str, remote: str | None = None) -> SparkSession:
    """A classic session on ``master``, or a Spark Connect session when ``remote`` is given."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("llmops-dagster")
    if remote:
        return builder.remote(remote).getOrCreate()
    # Local workers must run the interpreter that has this package and its model installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return builder.master(master).config("spark.ui.enabled", "false").getOrCreate()


def embed_partitions(config: EmbedderConfig) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function: (row, text) batches in, (row, vector) batches out."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from llmops_dagster.core.embedding import load_embedder
        from llmops_dagster.core.runtime import offline

        offline()  # a Python worker is a process of its own

        embedder = load_embedder(config)
        for batch in batches:
            embedded = embedder.embed_record_batch(batch)
            # Spark's array<float> is Arrow's variable-size list.
            vectors = embedded.column("vector").cast(pa.list_(pa.float32()))
            yield pa.RecordBatch.from_arrays([embedded.column("row"), vectors], names=["row", "vector"])

    return run


def spark_encode(session: SparkSession, texts: list[str], config: EmbedderConfig, partitions: int | None = None) -> np.ndarray:
    """Embed ``texts`` on the cluster; rows come back in input order."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    frame = session.createDataFrame(pa.table({"row": pa.array(range(len(texts)), pa.int64()), "text": texts}).to_pandas())
    if partitions:
        frame = frame.repartition(partitions)
    result = frame.mapInArrow(embed_partitions(config), OUTPUT_SCHEMA).toArrow()
    order = np.argsort(result.column("row").to_numpy())
    vectors = np.asarray(result.column("vector").to_pylist(), dtype=np.float32)
    return vectors[order]
