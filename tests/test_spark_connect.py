"""The Spark engine against a real Spark Connect server that the test starts on loopback.

Kept apart from test_spark.py: one process cannot hold a classic and a remote session at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops_dagster.core.embedding import EmbedderConfig, load_embedder
from llmops_dagster.core.spark import spark_encode, spark_session

from processes import free_port

pytestmark = pytest.mark.slow
CONFIG = EmbedderConfig(precision="fp32", device="cpu")
TEXTS = [f"question {i}: how does the {['sensor', 'registry', 'index'][i % 3]} behave in {['test', 'prod'][i % 2]}?" for i in range(16)]


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    port = free_port()
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOG_DIR": str(tmp_path_factory.mktemp("spark-logs")),
        "SPARK_PID_DIR": str(tmp_path_factory.mktemp("spark-pids")),
    }
    command = [
        str(spark_home / "sbin" / "start-connect-server.sh"),
        "--master", "local[2]",
        "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf", f"spark.connect.grpc.binding.port={port}",
    ]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        else:
            pytest.fail(f"Spark Connect server did not listen on {port}; logs in {env['SPARK_LOG_DIR']}")
        yield f"sc://127.0.0.1:{port}"
    finally:
        subprocess.run([str(spark_home / "sbin" / "stop-connect-server.sh")], env=env, capture_output=True, timeout=120)


def test_spark_connect_runs_the_same_function(connect_url: str) -> None:
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    session = spark_session("local[2]", remote=connect_url)
    try:
        assert isinstance(session, ConnectSession)
        vectors = spark_encode(session, TEXTS, CONFIG, partitions=2)
    finally:
        session.stop()
    reference = load_embedder(CONFIG).encode(TEXTS)
    assert (vectors * reference).sum(1).min() > 0.9999
