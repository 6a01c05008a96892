"""The Spark engine: the same embedding function, run over Arrow record batches with mapInArrow.

Works on ``local[*]``, on a Spark Connect server (``sc://host:port``) and on Databricks Connect.
The model is loaded once per Python worker (``load_embedder`` is cached per process, and Spark
reuses its Python workers across tasks).

A Spark Connect session is only made once the server has answered a gRPC handshake within a
bounded wait: pyspark's own client retries an unreachable server for about ten minutes.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from llmops_dagster.core.embedding import EmbedderConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

OUTPUT_SCHEMA = "row long, vector array<float>"
REMOTE_SETTING = "spark_remote"  # the environments.yaml key that holds the sc:// URL
CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_CONNECT_PORT = 15002  # pyspark's, when the URL names none


class SparkConnectError(RuntimeError):
    """``spark_remote`` is not a Spark Connect URL, or no Spark Connect server answered there in time."""


def spark_session(master: str, remote: str | None = None, connect_timeout: float = CONNECT_TIMEOUT_SECONDS) -> SparkSession:
    """A classic session on ``master``, or a Spark Connect session when ``remote`` is given.

    ``remote`` must answer within ``connect_timeout`` seconds, else ``SparkConnectError``.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("llmops-dagster")
    if remote:
        return _connect_session(builder, remote, connect_timeout)
    # Local workers must run the interpreter that has this package and its model installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = builder.master(master).config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
    with warnings.catch_warnings():
        # Starting the JVM forks this process; the child execs java at once and never touches LanceDB.
        warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
        return builder.getOrCreate()


def _connect_session(builder: SparkSession.Builder, remote: str, timeout: float) -> SparkSession:
    from pyspark.errors.exceptions.connect import SparkConnectGrpcException

    check_reachable(remote, timeout)
    try:
        return builder.remote(remote).getOrCreate()
    except SparkConnectGrpcException as error:  # something answered, but refused the session
        details = re.search(r'details = "([^"]*)"', error.getMessage())
        reason = details.group(1) if details else (error.getMessage().splitlines() or [""])[0]
        code = error.getGrpcStatusCode().name
        raise SparkConnectError(f"{REMOTE_SETTING} {shown_url(remote)} did not open a Spark Connect session: {code}: {reason}") from None


def shown_url(url: str) -> str:
    """The URL as it may appear in a log: a ``token`` parameter's value is hidden."""
    return re.sub(r"(?i)(;token=)[^;]*", r"\1***", url)


def check_reachable(url: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Raise ``SparkConnectError`` unless the Spark Connect server at ``url`` completes a gRPC
    handshake within ``timeout`` seconds: a TCP connect first (it says why it failed), then the
    channel's readiness (a listener that is not Spark Connect never gets there)."""
    import grpc
    from pyspark.errors import PySparkValueError
    from pyspark.sql.connect.client import DefaultChannelBuilder

    shown = shown_url(url)
    try:
        channel_builder = DefaultChannelBuilder(url)
    except PySparkValueError as error:
        detail = shown_url(error.getMessage())  # it may quote the URL, token included
        raise SparkConnectError(f"{REMOTE_SETTING} {shown} is not a Spark Connect URL (sc://host:port): {detail}") from None
    # Parsed as pyspark parses it, for the bare host and port a socket needs.
    parsed = urllib.parse.urlparse("http" + url[2:])
    host, port = parsed.hostname or "", parsed.port or DEFAULT_CONNECT_PORT

    def unreachable(reason: str) -> SparkConnectError:
        return SparkConnectError(f"{REMOTE_SETTING} {shown} is unreachable: {reason}")

    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.gaierror:
        raise unreachable(f"host name {host} does not resolve") from None
    except TimeoutError:
        raise unreachable(f"no answer from {host}:{port} within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise unreachable(f"connection refused by {host}:{port}") from None
    except OSError as error:
        raise unreachable(f"{host}:{port}: {error.strerror or error}") from None
    channel = channel_builder.toChannel()
    try:
        grpc.channel_ready_future(channel).result(timeout=max(deadline - time.monotonic(), 0.1))
    except grpc.FutureTimeoutError:
        raise unreachable(f"{host}:{port} accepts connections but completed no gRPC handshake within {timeout:g} s") from None
    finally:
        channel.close()


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
