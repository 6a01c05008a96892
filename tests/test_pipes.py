"""The Pipes entry points, for real, under ``dg.PipesSubprocessClient`` (``compute: local``), on a
copy of the session's trained environment: they call the same core functions as the assets,
report their materialization back to the Dagster run, and a re-run duplicates nothing."""

import importlib
import shutil
import tomllib
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from databricks_workspace import WorkspaceServer

from llmops_dagster.core import registry, selection, store
from llmops_dagster.core.bundle import PIPES_ENTRY_POINTS
from llmops_dagster.core.evaluation import logged_evaluation_set
from llmops_dagster.core.questions import landing_questions
from llmops_dagster.pipes import MLFLOW_RUN_EXTRA
from llmops_dagster.resources import build_resources
from llmops_dagster.resources.compute import PipesComputeResource, compute_resource
from llmops_dagster.settings import load_settings

from helpers import REPO, SHORT_DOCUMENTS, TrainedHome, core_only_environment, short_landing

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def core_only(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return core_only_environment(tmp_path_factory.mktemp("core-install"))


@pytest.fixture(autouse=True)
def core_install_only(core_only: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step's subprocess sees only the wheel's core dependencies, as a job on Databricks
    compute does: nothing of the platform extra (pyspark, dagster-databricks, the webserver…)."""
    for name, value in core_only.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def home(trained_home: TrainedHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy, since these tests write to the tables (the registry's artifacts stay where they are, read-only)."""
    copy = tmp_path / "home"
    shutil.copytree(trained_home.home, copy, ignore=shutil.ignore_patterns("dagster"))
    monkeypatch.setenv("LLMOPS_HOME", str(copy))
    monkeypatch.setenv("DAGSTER_HOME", str(copy / "dagster"))
    return copy


def test_every_entry_point_the_bundle_runs_is_declared_and_importable() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    bundle = yaml.safe_load((REPO / "databricks.yml").read_text())
    referenced = {
        task["python_wheel_task"]["entry_point"]
        for target in bundle["targets"].values()
        for job in target["resources"]["jobs"].values()
        for task in job["tasks"]
    }
    assert referenced == set(PIPES_ENTRY_POINTS)
    # and each step an asset sends to Databricks, the bundle's or not, is a script of the wheel
    steps = {path.stem for path in (REPO / "llmops_dagster" / "pipes").glob("*.py") if not path.stem.startswith("_")}
    assert {f"llmops-pipes-{step}": f"llmops_dagster.pipes.{step}:main" for step in steps}.items() <= scripts.items()
    for name in referenced:
        assert scripts.get(name) == PIPES_ENTRY_POINTS[name], name
        module, function = scripts[name].split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


@pytest.mark.parametrize("step", ["train", "evaluate", "register"])
@pytest.mark.filterwarnings("ignore:This process was not launched by a Dagster")
def test_model_steps_refuse_an_environment_that_adopts_its_model(step: str, llmops_home: Path) -> None:
    from llmops_dagster.pipes._model import StepRefused

    # In process and without Dagster, as `databricks bundle run` would start it in staging.
    with pytest.raises(StepRefused, match="'staging' does not train"):
        importlib.import_module(f"llmops_dagster.pipes.{step}").main(["--env", "staging"])


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
    # The asset's own metadata, typed as the in-process asset types it.
    assert [c.name for c in metadata["dagster/column_schema"].schema.columns][:2] == ["id", "doc_id"]
    assert isinstance(metadata["summary"], dg.MarkdownMetadataValue) and metadata["compute"].value == "pipes"
    assert lance.count(store.EMBEDDINGS) == total


def test_train_under_pipes_logs_into_the_dagster_runs_mlflow_run(home: Path) -> None:
    settings = load_settings("test")
    client = registry.configure(settings.mlflow.tracking_uri, settings.mlflow.registry_uri)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment).experiment_id
    before = {run.info.run_id for run in client.search_runs([experiment])}

    @dg.asset(name="embedding_model")
    def embedding_model_via_pipes(context: dg.AssetExecutionContext, compute: PipesComputeResource, mlflow: dg.ResourceParam[Any]):
        extras = {MLFLOW_RUN_EXTRA: mlflow.active_run().info.run_id}  # what the real asset passes on compute: databricks
        return compute.run(context, "train", extras=extras).get_materialize_result()

    resources = {"compute": PipesComputeResource(env="test"), "mlflow": build_resources(settings)["mlflow"]}
    result = dg.materialize([embedding_model_via_pipes], resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node("embedding_model")[0].metadata
    # One MLflow run, the Dagster run's: the step logged into it, left it running, and the Dagster run ended it.
    [run] = [run for run in client.search_runs([experiment]) if run.info.run_id not in before]
    assert run.data.tags["dagster_run_id"] == result.run_id and run.info.status == "FINISHED"
    assert metadata["mlflow_run_id"].value == run.info.run_id and metadata["compute"].value == "pipes"
    assert run.data.params["training.mode"] == metadata["mode"].value == "adapter"
    assert run.data.metrics["held_out.trained.mrr_at_10"] == pytest.approx(metadata["held_out_mrr_at_10_trained"].value, abs=1e-4)
    assert metadata["winner"].value == run.data.tags[registry.TRAINING_WINNER_TAG]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == settings.training.epochs
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "embedding_model")}
    assert {"embedding_model/adapter.npy", "embedding_model/held_out.jsonl", "embedding_model/train.jsonl"} <= artifacts
    assert isinstance(metadata["summary"], dg.MarkdownMetadataValue) and "held-out pairs" in metadata["summary"].value
    # rag_model finds this training by the run, as it does after the in-process asset.
    assert registry.training_record(client, settings.mlflow.experiment, run.info.run_id)["artifacts"] == metadata["artifacts"].value


INGEST_ASSETS = ("documents", "quarantine", "chunks", "embeddings", "vector_index")


def test_ingest_under_pipes_fills_every_table_once_and_a_rerun_writes_nothing(llmops_home: Path, tmp_path: Path) -> None:
    landing = short_landing(tmp_path / "landing")
    (landing / "broken.pdf").write_bytes(b"%PDF-1.4 the rest is missing")

    @dg.multi_asset(specs=[dg.AssetSpec(name) for name in INGEST_ASSETS])
    def ingest_via_pipes(context: dg.AssetExecutionContext, compute: PipesComputeResource):
        compute.run(context, "ingest", extras={"landing": str(landing)})  # a retry of the step in the same run...
        yield from compute.run(context, "ingest", extras={"landing": str(landing)}).get_results()  # ...finds nothing to do

    result = dg.materialize([ingest_via_pipes], resources={"compute": PipesComputeResource(env="test")})
    assert result.success
    metadata = {name: result.asset_materializations_for_node("ingest_via_pipes")[i].metadata for i, name in enumerate(INGEST_ASSETS)}
    assert [m.asset_key.path[-1] for m in result.asset_materializations_for_node("ingest_via_pipes")] == list(INGEST_ASSETS)
    lance = store.LanceStore(load_settings("test").lancedb_uri)
    chunk_ids = lance.read(store.CHUNKS, store.CHUNKS_SCHEMA, ["id"]).column("id").to_pylist()
    # Every landing file in exactly one table, once; the retry parsed, chunked and embedded nothing.
    assert metadata["documents"]["dagster/row_count"].value == lance.count(store.DOCUMENTS) == len(SHORT_DOCUMENTS)
    assert metadata["documents"]["landing_files"].value == len(SHORT_DOCUMENTS) + 1
    assert metadata["documents"]["parsed_this_run"].value == 0 and metadata["documents"]["unchanged_skipped"].value == len(SHORT_DOCUMENTS) + 1
    assert metadata["quarantine"]["dagster/row_count"].value == lance.count(store.QUARANTINE) == 1
    assert metadata["chunks"]["chunks_written"].value == 0 and metadata["chunks"]["dagster/row_count"].value == len(chunk_ids) == len(set(chunk_ids))
    assert metadata["embeddings"]["embedded_this_run"].value == 0 and metadata["embeddings"]["dagster/row_count"].value == len(chunk_ids)
    assert lance.count(store.EMBEDDINGS) == len(chunk_ids)
    assert metadata["vector_index"]["full_text_index"].value is True and metadata["vector_index"]["dagster/row_count"].value == len(chunk_ids)
    assert all(m["compute"].value == "pipes" for m in metadata.values())
    assert isinstance(metadata["chunks"]["dagster/column_schema"], dg.TableSchemaMetadataValue)


def test_evaluate_then_register_under_pipes_select_register_and_record_the_gate(home: Path, trained_home: TrainedHome) -> None:
    """The training job's last two steps, one after the other as the bundle runs them. The copy's
    index has another URI than the original's, so the model registered is a new version."""
    settings = load_settings("test")
    client = registry.configure(settings.mlflow.tracking_uri, settings.mlflow.registry_uri)
    name = settings.mlflow.registered_model
    before = {v.version for v in client.search_model_versions(f"name = '{name}'")}

    @dg.multi_asset(specs=[dg.AssetSpec("rag_model"), dg.AssetSpec("evaluation")], check_specs=evaluation_checks())
    def register_via_pipes(context: dg.AssetExecutionContext, compute: PipesComputeResource, mlflow: dg.ResourceParam[Any]):
        extras = {MLFLOW_RUN_EXTRA: mlflow.active_run().info.run_id, "landing": str(trained_home.landing)}
        assert not compute.run(context, "evaluate", extras=extras).get_results(implicit_materializations=False)  # it reports nothing
        yield from compute.run(context, "register", extras=extras).get_results()

    resources = {"compute": PipesComputeResource(env="test"), "mlflow": build_resources(settings)["mlflow"]}
    result = dg.materialize([register_via_pipes], resources=resources)
    assert result.success
    [model, evaluation] = [m.metadata for m in result.asset_materializations_for_node("register_via_pipes")]
    [new] = [v for v in client.search_model_versions(f"name = '{name}'") if v.version not in before]
    assert model["model_version"].value == str(new.version) and model["registered_new_version"].value is True
    assert registry.version_by_alias(client, name, registry.CHALLENGER).version == new.version
    assert new.tags[registry.DAGSTER_RUN_TAG] == result.run_id and model["compute"].value == "pipes"
    # The selection the evaluate step kept in the Dagster run's MLflow run is the one registered.
    run_id = model["mlflow_run_id"].value
    kept = selection.recorded_selection(client, settings.mlflow.experiment, run_id)
    assert kept is not None and client.get_run(run_id).data.tags[selection.SELECTION_TAG] == kept.winner.retrieval_label()
    assert model["retrieval_selection"].value == kept.summary() and new.tags["retrieval"] == kept.winner.retrieval_label()
    # The gate ran on it: every required check recorded by this run, its rows under this run.
    from llmops_dagster.assets.model_registry import REQUIRED_CHECKS

    new = client.get_model_version(name, new.version)
    assert new.tags[registry.VALIDATION_STATUS] == registry.PASSED == evaluation[registry.VALIDATION_STATUS].value
    assert all(new.tags[f"check_{check}_dagster_run_id"] == result.run_id for check in REQUIRED_CHECKS)
    rows = store.LanceStore(settings.lancedb_uri).read(store.EVALUATIONS, store.EVALUATIONS_SCHEMA, where=f"dagster_run_id = '{result.run_id}'")
    assert {"select", "report", "all"} <= set(rows.column("split").to_pylist())
    assert evaluation["model_version"].value == str(new.version) and evaluation["gold_questions_skipped"].value == 2
    # Each of the evaluation asset's checks came back through Pipes; the smoke checks are rag_model's, recorded only.
    reported = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(reported) == {spec.name for spec in evaluation_checks()}
    assert all(reported[check].passed for check in REQUIRED_CHECKS if check in reported)
    assert reported["meets_thresholds"].metadata["model_version"].value == str(new.version)
    # each check is attached to this run's materialization, which therefore came first
    assert all(e.target_materialization_data and e.target_materialization_data.run_id == result.run_id for e in reported.values())
    # The evaluate step kept the evaluation set in the run; register's gate read that one back.
    kept_items, kept_skipped = logged_evaluation_set(client, run_id)
    assert len(kept_skipped) == 2 and f"of {len(kept_items)} (" in evaluation["summary"].value
    assert evaluation["challenger_mrr_at_10"].value >= settings.evaluation.min_mrr_at_10

def evaluation_checks() -> list[dg.AssetCheckSpec]:
    """The evaluation asset's checks, on the unprefixed key the test assets here use."""
    from llmops_dagster.assets.gate import evaluation

    return [dg.AssetCheckSpec(spec.name, asset="evaluation", blocking=spec.blocking) for spec in evaluation.check_specs]


@pytest.mark.filterwarnings("ignore:This process was not launched by a Dagster")
def test_the_gate_step_refuses_an_environment_without_a_challenger(llmops_home: Path) -> None:
    """``gate`` alone, as the evaluation asset sends it: in staging, which adopts its model, nothing
    was adopted yet. (Its evaluation, shared with ``register``, runs for real in the test above.)"""
    from llmops_dagster.pipes import gate
    from llmops_dagster.pipes._model import StepRefused

    with pytest.raises(StepRefused, match="staging.llmops.rag_model has no 'challenger' version; run the register step"):
        gate.main(["--env", "staging"])


TOKEN = "dapi-pipes-test-token-1a2b3c"


def test_embeddings_and_embedding_model_run_on_databricks_when_compute_says_so(llmops_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmops_dagster.assets.index import embeddings
    from llmops_dagster.assets.training import embedding_model

    settings = load_settings("test")
    compute = PipesComputeResource(
        env="test", compute="databricks", volume_path="/Volumes/test/llmops/pipes", poll_interval_seconds=0.05, message_interval_seconds=0.05
    )
    with WorkspaceServer(TOKEN) as server:
        monkeypatch.setenv("DATABRICKS_HOST", server.host)
        monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
        result = dg.materialize([embeddings, embedding_model], resources={**build_resources(settings), "compute": compute})
    assert result.success
    submitted = {submission["tasks"][0]["python_wheel_task"]["entry_point"] for submission in server.workspace.submissions}
    assert submitted == {"llmops-pipes-embed", "llmops-pipes-train"}
    assert result.asset_materializations_for_node("embeddings")[0].metadata["dagster/row_count"].value == 11  # what the stand-in reported
    # The training logs into this Dagster run's MLflow run, wherever it runs.
    [train] = [context for context in server.workspace.contexts if context["asset_keys"] == ["embedding_model"]]
    client = registry.configure(settings.mlflow.tracking_uri, settings.mlflow.registry_uri)
    run = client.get_run(train["extras"][MLFLOW_RUN_EXTRA])
    assert run.data.tags["dagster_run_id"] == result.run_id



def test_rag_model_and_evaluation_run_on_databricks_when_compute_says_so(llmops_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The selection and registration, then the gate, as three wheel tasks; the checks come back through Pipes."""
    from llmops_dagster.assets.gate import evaluation
    from llmops_dagster.assets.training import rag_model

    settings = load_settings("test")
    compute = PipesComputeResource(
        env="test", compute="databricks", volume_path="/Volumes/test/llmops/pipes", poll_interval_seconds=0.05, message_interval_seconds=0.05
    )
    with WorkspaceServer(TOKEN) as server:
        server.workspace.checks = {"evaluation": [spec.name for spec in evaluation.check_specs]}
        monkeypatch.setenv("DATABRICKS_HOST", server.host)
        monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
        result = dg.materialize([rag_model, evaluation], resources={**build_resources(settings), "compute": compute})
    assert result.success
    submitted = [submission["tasks"][0]["python_wheel_task"]["entry_point"] for submission in server.workspace.submissions]
    assert submitted == ["llmops-pipes-evaluate", "llmops-pipes-register", "llmops-pipes-gate"]
    by_step = {tuple(context["asset_keys"]) for context in server.workspace.contexts}
    assert by_step == {("rag_model",), ("evaluation",)}
    # Both steps of rag_model and the gate log into this Dagster run's MLflow run, and read this landing zone.
    assert len({context["extras"][MLFLOW_RUN_EXTRA] for context in server.workspace.contexts}) == 1
    assert {context["extras"]["landing"] for context in server.workspace.contexts} == {str(settings.landing)}
    assert {e.check_name for e in result.get_asset_check_evaluations()} == {spec.name for spec in evaluation.check_specs}
