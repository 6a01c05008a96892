"""Training, registration, the gate and batch predictions, through the real ingest job.

Real Dagster (the persistent sqlite instance the CLI writes to, or an ephemeral one), LanceDB (temp
folder), MLflow (sqlite store in a temp folder) and transformers. The tests read the state that one
``llmops run`` left (the session's ``trained_home``); a test that changes it works on a copy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import pytest

from llmops_dagster.core import registry, selection, store
from llmops_dagster.core.embedding import default_model_path
from llmops_dagster.core.evaluation import logged_evaluation_set
from llmops_dagster.core.questions import landing_questions
from llmops_dagster.core.rag import RagConfig
from llmops_dagster.definitions import INGEST_JOB, build_defs, environment_assets
from llmops_dagster.resources import build_resources
from llmops_dagster.settings import EnvSettings, load_settings

from helpers import SECRETS, SHORT_DOCUMENTS, UC_TAG_KEY, TrainedHome, gold_questions, short_landing

pytestmark = pytest.mark.slow

MODEL = "test.llmops.rag_model"
CHECKS = {"model_loads_and_answers", "signature_valid", "meets_thresholds", "no_worse_than_champion", "beats_naive_baseline"}


@dataclass
class Run:
    settings: EnvSettings
    instance: dg.DagsterInstance
    run_id: str
    home: Path


def execute(settings: EnvSettings, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return build_defs(settings).resolve_job_def(INGEST_JOB).execute_in_process(instance=instance, raise_on_error=False)


def checks(instance: dg.DagsterInstance, run_id: str) -> dict[str, bool]:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return {r.dagster_event.event_specific_data.check_name: r.dagster_event.event_specific_data.passed for r in records}


def client(settings: EnvSettings) -> mlflow.MlflowClient:
    return registry.configure(settings.mlflow.tracking_uri, settings.mlflow.registry_uri)


@pytest.fixture
def first(trained_home: TrainedHome, monkeypatch: pytest.MonkeyPatch) -> Run:
    """The session's trained environment, read in place, with the instance the CLI wrote to."""
    home = trained_home.home
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    yield Run(load_settings("test").with_landing(trained_home.landing), instance, trained_home.run_id, home)
    instance.dispose()


@pytest.fixture
def small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """An environment of its own (the three short documents) with champion v1, for a test that changes
    it. Not a copy of the session's: a model serves old table versions only of the index it was built on."""
    home = tmp_path / "home"
    landing = short_landing(tmp_path / "landing")
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    settings = load_settings("test").with_landing(landing)
    instance = dg.DagsterInstance.ephemeral()
    result = execute(settings, instance)
    assert result.success
    client(settings).set_registered_model_alias(MODEL, registry.CHAMPION, "1")
    return Run(settings, instance, result.run_id, home)


def test_a_run_trains_registers_and_validates_a_challenger(first: Run) -> None:
    assert first.instance.get_run_by_id(first.run_id).status == dg.DagsterRunStatus.SUCCESS
    verdicts = checks(first.instance, first.run_id)
    assert CHECKS <= set(verdicts) and all(verdicts.values()), verdicts
    mlflow_client = client(first.settings)
    version = registry.version_by_alias(mlflow_client, MODEL, registry.CHALLENGER)
    assert version is not None and str(version.version) == "1"
    assert version.tags[registry.VALIDATION_STATUS] == registry.PASSED
    assert {name for name in CHECKS if version.tags.get(f"check_{name}") == registry.PASSED} == CHECKS
    assert version.tags[registry.DAGSTER_RUN_TAG] == first.run_id
    assert version.tags["embedder_variant"] == "trained"
    assert float(version.tags["metric_mrr_at_10"]) >= first.settings.evaluation.min_mrr_at_10
    # What the whole graph wrote is what the databricks-uc registry accepts (tests/test_promotion.py)
    assert all(UC_TAG_KEY.fullmatch(key) for key in version.tags) and len(version.tags) <= registry.UC_TAG_LIMIT, sorted(version.tags)
    assert all(len(value) <= registry.UC_TAG_VALUE_CHARS for value in version.tags.values())

    # One MLflow run per Dagster run, linked by dagster-mlflow's tag, finished, with the training record.
    runs = mlflow.search_runs(
        experiment_names=[first.settings.mlflow.experiment], filter_string=f"tags.dagster_run_id = '{first.run_id}'", output_format="list"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["training.mode"] == "adapter" and run.data.tags["llmops/env"] == "test"
    assert run.data.metrics["held_out.trained.mrr_at_10"] > run.data.metrics["held_out.base.mrr_at_10"]
    assert version.run_id == run.info.run_id
    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id, "embedding_model")}
    assert {"embedding_model/adapter.npy", "embedding_model/held_out.jsonl", "embedding_model/train.jsonl"} <= artifacts
    assert str(first.home / "mlartifacts" / "test") in run.info.artifact_uri
    # rag_model's selection and the gate scored one evaluation set, the one this run kept.
    kept, skipped = logged_evaluation_set(mlflow_client, run.info.run_id)
    gate = first.instance.get_latest_materialization_event(dg.AssetKey([first.settings.name, "evaluation"])).asset_materialization.metadata
    assert gate["gold_questions_skipped"].value == len(skipped) and f"of {len(kept)} (" in gate["summary"].value


def test_evaluation_compares_systems_and_modes(first: Run) -> None:
    table = store.LanceStore(first.settings.lancedb_uri).read(store.EVALUATIONS, store.EVALUATIONS_SCHEMA)
    rows = [r for r in table.to_pylist() if r["dagster_run_id"] == first.run_id and r["query_set"] == "all" and r["split"] == "all"]
    # Base and trained are compared in the mode that selection gave the challenger.
    mode = client(first.settings).get_model_version(MODEL, "1").tags["retrieval"].split()[0]
    assert {(r["system"], r["mode"]) for r in rows} == {
        ("base", mode), ("trained", mode), ("challenger", "vector"), ("challenger", "text"), ("challenger", "hybrid")
    }
    # Every retrieval candidate is in the table: scored on the select half by rag_model, on the report half by evaluation.
    candidates = [r for r in table.to_pylist() if r["dagster_run_id"] == first.run_id and r["system"] == "candidate" and r["query_set"] == "all"]
    by_split = {split: {r["retrieval"] for r in candidates if r["split"] == split} for split in ("select", "report")}
    assert len(by_split["select"]) == len(selection.candidates(RagConfig())) and by_split["select"] == by_split["report"]
    baseline = [r for r in table.to_pylist() if r["dagster_run_id"] == first.run_id and r["system"] == "naive_bm25"]
    assert baseline and baseline[0]["split"] == "report" and baseline[0]["mrr_at_10"] is not None
    gold = [r for r in table.to_pylist() if r["query_set"] == "gold" and r["system"] == "challenger" and r["mode"] == mode and r["split"] == "all"]
    assert gold and gold[0]["queries"] == 24 and gold[0]["answer_f1"] is not None


def test_batch_predictions_has_one_row_per_valid_question(first: Run) -> None:
    questions, rejected = landing_questions(first.settings.landing)
    assert len(questions) == 24 and len(rejected) == 2
    lance = store.LanceStore(first.settings.lancedb_uri)
    rows = lance.read(store.PREDICTIONS, store.PREDICTIONS_SCHEMA, where=f"dagster_run_id = '{first.run_id}'")
    assert rows.num_rows == len(questions)
    row = rows.to_pylist()[0]
    assert row["model_alias"] == "challenger" and row["model_version"] == "1" and row["model_name"] == MODEL
    assert row["passages"] and len(row["sources"]) == len(row["passages"]) == len(row["scores"])
    # Writing a run's rows again adds nothing: rows are keyed by run and question.
    before = lance.count(store.PREDICTIONS)
    lance.apply(store.PREDICTIONS, store.PREDICTIONS_SCHEMA, "id", rows, [])
    assert lance.count(store.PREDICTIONS) == before


def test_the_registered_model_loads_and_answers_in_a_fresh_process(first: Run) -> None:
    script = (
        "import json, mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model('models:/{MODEL}/1')\n"
        "out = model.predict(pd.DataFrame({'question': ['How is a release rolled back?', 'What is BM25?']}), params={'k': 3})\n"
        "print(json.dumps(out.to_dict(orient='records')))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": first.settings.mlflow.tracking_uri, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=first.home)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(answers) == 2
    assert all(a["answer"] and len(a["passages"]) == 3 for a in answers)
    assert any("rollback" in p.lower() or "roll back" in p.lower() for p in answers[0]["passages"])


def test_no_secret_reaches_mlflow_or_dagster_metadata(first: Run, trained_home: TrainedHome) -> None:
    mlflow_client = client(first.settings)
    seen: list[str] = [trained_home.run.stdout, trained_home.run.stderr]
    for experiment in mlflow_client.search_experiments():
        for run in mlflow_client.search_runs([experiment.experiment_id]):
            seen += [*run.data.params.values(), *run.data.tags.values(), *map(str, run.data.metrics.values())]
    for model in mlflow_client.search_registered_models():
        seen += list(model.tags.values())
        for version in mlflow_client.search_model_versions(f"name = '{model.name}'"):
            seen += list(version.tags.values())
    config = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1")) / "MLmodel"
    seen.append(config.read_text())
    for record in first.instance.all_logs(first.run_id):
        seen.append(dg.serialize_value(record))
    text = "\n".join(seen)
    assert len(text) > 10_000  # the scan really covered the logs
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked"


def test_an_unchanged_model_is_not_registered_again(first: Run) -> None:
    result = dg.materialize(
        environment_assets("test"), selection=["test/rag_model"], resources=build_resources(first.settings), instance=first.instance
    )
    materialization = result.get_asset_materialization_events()[0].step_materialization_data.materialization
    assert materialization.metadata["registered_new_version"].value is False
    assert materialization.metadata["model_version"].value == "1"
    # A subset run (no end_mlflow_on_run_finished hook here) still finishes its MLflow run when it
    # ends, so the next run in this process does not log into it.
    assert mlflow.active_run() is None
    runs = mlflow.search_runs(
        experiment_names=[first.settings.mlflow.experiment], filter_string=f"tags.dagster_run_id = '{result.run_id}'", output_format="list"
    )
    assert [run.info.status for run in runs] == ["FINISHED"]


@pytest.fixture
def random_model(tmp_path: Path) -> Path:
    """MiniLM's architecture and tokenizer with random weights: a deliberately useless embedder."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    base = default_model_path()
    torch.manual_seed(0)
    target = tmp_path / "random-minilm"
    AutoModel.from_config(AutoConfig.from_pretrained(str(base))).save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(target))
    shutil.copy(base / "sentence_bert_config.json", target)
    return target


def test_a_degraded_model_fails_the_gate_and_is_tagged_failed(small: Run, random_model: Path) -> None:
    mlflow_client = client(small.settings)
    degraded = dataclasses.replace(
        small.settings,
        embedding=dataclasses.replace(small.settings.embedding, model=str(random_model)),
        rag=dataclasses.replace(small.settings.rag, mode="vector", select_by_evaluation=False),
    )
    result = execute(degraded, small.instance)
    verdicts = checks(small.instance, result.run_id)
    assert verdicts["model_loads_and_answers"] and verdicts["signature_valid"]
    # Random weights still match words (mean-pooled random token vectors act like a bag of words), so
    # the loose default minimums can pass; the comparison with the champion is what catches it.
    assert verdicts["no_worse_than_champion"] is False

    challenger = registry.version_by_alias(mlflow_client, MODEL, registry.CHALLENGER)
    assert str(challenger.version) == "2"
    assert challenger.tags[registry.VALIDATION_STATUS] == registry.FAILED
    assert challenger.tags["check_no_worse_than_champion"] == registry.FAILED
    assert str(registry.version_by_alias(mlflow_client, MODEL, registry.CHAMPION).version) == "1"  # a failed check moves nothing

    # The champion still answers: it serves from the table version it was registered against.
    lance = store.LanceStore(small.settings.lancedb_uri)
    rows = lance.read(store.PREDICTIONS, store.PREDICTIONS_SCHEMA, where=f"dagster_run_id = '{result.run_id}'").to_pylist()
    assert (
        len(rows) == len(gold_questions(SHORT_DOCUMENTS))
        and {r["model_alias"] for r in rows} == {"champion"}
        and {r["model_version"] for r in rows} == {"1"}
    )
