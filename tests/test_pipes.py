"""The Pipes entry points, for real, under ``dg.PipesSubprocessClient`` (``compute: local``), on a
copy of the session's trained environment: they call the same core functions as the assets,
report their materialization back to the Dagster run, and a re-run duplicates nothing."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from llmops_dagster.core import store
from llmops_dagster.core.questions import landing_questions
from llmops_dagster.resources.compute import PipesComputeResource, compute_resource
from llmops_dagster.settings import load_settings

from helpers import TrainedHome

pytestmark = pytest.mark.slow


@pytest.fixture
def home(trained_home: TrainedHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy, since these tests write to the tables (the registry's artifacts stay where they are, read-only)."""
    copy = tmp_path / "home"
    shutil.copytree(trained_home.home, copy, ignore=shutil.ignore_patterns("dagster"))
    monkeypatch.setenv("LLMOPS_HOME", str(copy))
    monkeypatch.setenv("DAGSTER_HOME", str(copy / "dagster"))
    return copy


def test_local_compute_runs_the_entry_point_as_python_m_with_the_environment() -> None:
    compute = compute_resource(load_settings("test"))
    assert not compute.on_databricks and compute.volume_path is None
    assert compute.command("predict")[1:] == ["-m", "llmops_dagster.pipes.predict", "--env", "test"]


def test_predict_under_pipes_writes_one_row_per_question_and_a_rerun_adds_none(home: Path, trained_home: TrainedHome, tmp_path: Path) -> None:
    # Three questions and one bad line: the cost is the subprocess's start (imports, model load), not the answers.
    questions_file = tmp_path / "landing" / "questions" / "few.jsonl"
    questions_file.parent.mkdir(parents=True)
    lines = (trained_home.landing / "questions" / "sample.jsonl").read_text().splitlines()[:3]
    questions_file.write_text("\n".join([*lines, "not json"]) + "\n")
    landing = str(tmp_path / "landing")

    @dg.asset(name="batch_predictions")
    def predictions_via_pipes(context: dg.AssetExecutionContext, compute: PipesComputeResource) -> dg.MaterializeResult:
        compute.run(context, "predict", extras={"landing": landing})  # a retry of the step in the same run...
        return compute.run(context, "predict", extras={"landing": landing}).get_materialize_result()  # ...replaces its rows

    result = dg.materialize([predictions_via_pipes], resources={"compute": PipesComputeResource(env="test")})
    assert result.success
    metadata = result.asset_materializations_for_node("batch_predictions")[0].metadata
    questions, rejected = landing_questions(Path(landing))
    assert len(questions) == 3 and len(rejected) == 1
    assert metadata["questions_this_run"].value == len(questions) and metadata["rejected_lines"].value == len(rejected)
    assert metadata["model_alias"].value in {"champion", "challenger"} and metadata["compute"].value == "pipes"
    lance = store.LanceStore(load_settings("test").lancedb_uri)
    rows = lance.read(store.PREDICTIONS, store.PREDICTIONS_SCHEMA, ["origin"], where=f"dagster_run_id = '{result.run_id}'")
    assert rows.num_rows == len(questions) == len(set(rows.column("origin").to_pylist()))
    assert metadata["dagster/row_count"].value == lance.count(store.PREDICTIONS)


def test_embed_under_pipes_embeds_only_what_the_index_lacks(home: Path) -> None:
    lance = store.LanceStore(load_settings("test").lancedb_uri)
    table = lance.open(store.EMBEDDINGS)
    ids = table.search().select(["id"]).limit(3).to_arrow().column("id").to_pylist()
    table.delete("id IN (" + ", ".join(f"'{i}'" for i in ids) + ")")
    total = lance.count(store.CHUNKS)

    @dg.asset(name="embeddings")
    def embeddings_via_pipes(context: dg.AssetExecutionContext, compute: PipesComputeResource) -> dg.MaterializeResult:
        return compute.run(context, "embed").get_materialize_result()

    result = dg.materialize([embeddings_via_pipes], resources={"compute": PipesComputeResource(env="test")})
    assert result.success
    metadata = result.asset_materializations_for_node("embeddings")[0].metadata
    assert metadata["embedded_this_run"].value == 3 and metadata["dagster/row_count"].value == total
    assert lance.count(store.EMBEDDINGS) == total
