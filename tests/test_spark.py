"""The Spark engine on local[2]: the same embedding function through mapInArrow.

The whole graph on Spark (embeddings, evaluation, and batch predictions through
``mlflow.pyfunc.spark_udf``) runs in staging, whose engine is Spark, in ``test_e2e_dagster_dev.py``.
"""

from __future__ import annotations

import pytest

from llmops_dagster.core.embedding import EmbedderConfig, load_embedder
from llmops_dagster.core.spark import spark_encode, spark_session

pytestmark = pytest.mark.slow
CONFIG = EmbedderConfig(precision="fp32", device="cpu")
TEXTS = [f"passage {i}: the {['champion', 'landing zone', 'vector index'][i % 3]} of environment {i % 5}" for i in range(24)]


@pytest.fixture(scope="module")
def local_session():
    session = spark_session("local[2]")
    yield session
    session.stop()


def test_spark_local_embeds_exactly_like_the_local_engine(local_session) -> None:
    vectors = spark_encode(local_session, TEXTS, CONFIG, partitions=3)
    reference = load_embedder(CONFIG).encode(TEXTS)
    assert vectors.shape == reference.shape
    assert (vectors * reference).sum(1).min() > 0.9999  # same rows, in input order
