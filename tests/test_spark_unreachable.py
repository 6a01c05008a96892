"""A Spark Connect URL that nothing answers: one error naming the URL and ``spark_remote``, after a
bounded wait, instead of pyspark's ten minutes of gRPC retries.

The waits are short and these tests assert no timings: a refused port fails at once, a silent
listener after ``connect_timeout``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmops_dagster.core.spark import SparkConnectError, spark_session

from helpers import LLMOPS, short_landing
from processes import free_port


@pytest.fixture
def closed_url() -> str:
    return f"sc://127.0.0.1:{free_port()}"  # bound a moment ago and released: nothing listens there


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts TCP connections and never speaks gRPC."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"sc://127.0.0.1:{listener.getsockname()[1]}"


def test_a_closed_port_names_the_url_and_the_setting(closed_url: str) -> None:
    with pytest.raises(SparkConnectError) as raised:
        spark_session("local[2]", remote=closed_url, connect_timeout=2)
    message = str(raised.value)
    assert message.startswith(f"spark_remote {closed_url} is unreachable: connection refused")
    assert "\n" not in message


def test_a_listener_that_is_not_spark_connect_fails_after_the_wait(silent_url: str) -> None:
    with pytest.raises(SparkConnectError, match=f"spark_remote {silent_url} is unreachable: .* no gRPC handshake within 1 s"):
        spark_session("local[2]", remote=silent_url, connect_timeout=1)


def test_the_token_of_the_url_is_not_shown(closed_url: str) -> None:
    with pytest.raises(SparkConnectError) as raised:
        spark_session("local[2]", remote=f"{closed_url}/;token=dapi-secret-123;use_ssl=true", connect_timeout=2)
    assert "dapi-secret-123" not in str(raised.value)
    assert f"{closed_url}/;token=***;use_ssl=true" in str(raised.value)


def test_a_url_that_is_not_spark_connect_is_refused_by_name() -> None:
    with pytest.raises(SparkConnectError, match="spark_remote http://127.0.0.1:15002 is not a Spark Connect URL"):
        spark_session("local[2]", remote="http://127.0.0.1:15002")


def test_the_engine_resource_raises_it_before_any_embedding(closed_url: str) -> None:
    from llmops_dagster.core.embedding import EmbedderConfig
    from llmops_dagster.resources import ComputeEngineResource, EmbedderResource, SettingsSection

    engine = ComputeEngineResource(engine="spark", spark_remote=closed_url, embedder=EmbedderResource(embedding=SettingsSection.of(EmbedderConfig())))
    with pytest.raises(SparkConnectError, match=f"spark_remote {closed_url} is unreachable"):
        engine.encoder()


@pytest.mark.slow
def test_llmops_run_shows_one_line_for_the_failed_step(tmp_path: Path, closed_url: str) -> None:
    """The embeddings step fails; the run's progress names the URL and the setting on one line, no traceback."""
    import subprocess

    declaration = tmp_path / "environments.yaml"
    declaration.write_text(f"environments:\n  test:\n    engine: spark\n    spark_remote: {closed_url}\n")
    landing = short_landing(tmp_path / "landing")
    env = {**os.environ, "LLMOPS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "LLMOPS_ENVIRONMENTS": str(declaration)}
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run([LLMOPS, "run", "--env", "test", "--landing", str(landing)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    failed = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("✘ embeddings:")]
    assert len(failed) == 1, result.stderr[-3000:]
    assert failed[0].endswith(f"SparkConnectError: spark_remote {closed_url} is unreachable: connection refused by {closed_url[5:]}")
    assert "Traceback" not in result.stderr
