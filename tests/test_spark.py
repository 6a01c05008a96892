"""The Spark engine on local[2]: the same embedding function through mapInArrow."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from llmops_dagster.core import store
from llmops_dagster.core.embedding import EmbedderConfig, load_embedder
from llmops_dagster.core.spark import spark_encode, spark_session
from llmops_dagster.definitions import environment_assets
from llmops_dagster.resources import build_resources
from llmops_dagster.settings import load_settings

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


def test_the_whole_graph_on_the_spark_engine(local_session, llmops_home: Path, sample_landing: Path) -> None:
    settings = load_settings("test").with_landing(sample_landing).with_engine("spark", spark_master="local[2]")
    result = dg.materialize(environment_assets("test"), resources=build_resources(settings), instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    table = store.LanceStore(settings.lancedb_uri).read(store.EMBEDDINGS, store.embeddings_schema(384), ["text", "vector"])
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    reference = load_embedder(settings.embedding).encode(table.column("text").to_pylist())
    assert (vectors * reference).sum(1).min() > 0.999
    # batch_predictions ran the registered model as mlflow.pyfunc.spark_udf, one row per question.
    predictions = next(
        e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.step_materialization_data.materialization.asset_key.path[-1] == "batch_predictions"
    )
    assert predictions["engine"].value == "spark" and predictions["questions_this_run"].value == 24
    rows = store.LanceStore(settings.lancedb_uri).read(store.PREDICTIONS, store.PREDICTIONS_SCHEMA).to_pylist()
    assert len(rows) == 24 and all(row["passages"] and row["answer"] for row in rows)
