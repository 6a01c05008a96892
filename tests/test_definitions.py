"""Every environment's definitions load and hold the expected assets, checks and jobs."""

import dagster as dg
import pytest

from llmops_dagster.core.monitoring import MonitoringConfig, check_names
from llmops_dagster.definitions import INGEST_JOB, build_defs
from llmops_dagster.resources import build_resources
from llmops_dagster.sensors import CHAMPION_SENSOR, ENDPOINT_SENSOR, INFERENCE_LOG_SENSOR, NEW_DOCUMENTS, UPSTREAM_SENSOR
from llmops_dagster.sensors.monitoring import NEW_REQUESTS_SENSOR, RETRAIN_SENSOR
from llmops_dagster.settings import ENVIRONMENTS, load_settings

ASSETS = {
    "documents", "quarantine", "chunks", "embeddings", "vector_index",
    "embedding_model", "rag_model", "evaluation", "batch_predictions", "inference_log", "monitoring", "unanswered_questions",
    "serving_endpoint",
}
CHECKS = {
    ("documents", "no_files_lost"),
    ("quarantine", "quarantine_reasons_known"),
    ("chunks", "chunks_well_formed"),
    ("chunks", "every_document_chunked"),
    ("embeddings", "vectors_valid"),
    ("embeddings", "index_matches_chunks"),
    ("vector_index", "ann_recall"),
    ("vector_index", "full_text_index_ready"),
    ("rag_model", "model_loads_and_answers"),
    ("rag_model", "signature_valid"),
    ("evaluation", "meets_thresholds"),
    ("evaluation", "no_worse_than_champion"),
    ("evaluation", "beats_naive_baseline"),
    ("evaluation", "answers_grounded"),
    ("evaluation", "no_navigation_in_top_results"),
    ("batch_predictions", "one_row_per_question"),
    *(("monitoring", name) for name in check_names(MonitoringConfig())),  # one per threshold, WARN or ERROR by severity
}
BLOCKING = {
    "no_files_lost", "chunks_well_formed", "every_document_chunked", "vectors_valid", "index_matches_chunks", "ann_recall",
    "model_loads_and_answers", "signature_valid", "meets_thresholds", "no_worse_than_champion", "beats_naive_baseline",
    "answers_grounded",
}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_definitions_per_environment(env: str, llmops_home) -> None:
    defs = build_defs(env)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    trains = env == "test"  # staging and prod adopt their source's champion instead of training
    assert keys == {f"{env}/{name}" for name in ASSETS if trains or name != "embedding_model"}

    checks = {(key.asset_key.path[-1], key.name) for key in graph.asset_check_keys}
    assert checks == CHECKS
    assert all(key.asset_key.path[0] == env for key in graph.asset_check_keys)
    blocking = {key.name for key in graph.asset_check_keys if graph.get_check_spec(key).blocking}
    assert blocking == BLOCKING

    assert graph.get(dg.AssetKey([env, "chunks"])).parent_keys == {dg.AssetKey([env, "documents"])}
    ingest = defs.resolve_job_def(INGEST_JOB)  # raises if the job is missing
    assert {key.path[-1] for key in ingest.asset_layer.executable_asset_keys} >= {"documents", "chunks", "embeddings", "vector_index"}
    assert defs.resolve_sensor_def(NEW_DOCUMENTS).job_name == INGEST_JOB
    resources = defs.resources or {}
    jobs = {job.name for job in defs.jobs}
    sensors = {sensor.name for sensor in defs.sensors}
    assert jobs == {"ingest", "monitor", "update_endpoint", "rollback"} | ({"adopt"} if not trains else set()) | (
        {"approve"} if env == "prod" else set()
    )
    assert sensors == {NEW_DOCUMENTS, CHAMPION_SENSOR, INFERENCE_LOG_SENSOR, NEW_REQUESTS_SENSOR, ENDPOINT_SENSOR} | (
        {RETRAIN_SENSOR} if trains else {UPSTREAM_SENSOR}
    )
    assert "inference_log" not in {key.path[-1] for key in ingest.asset_layer.executable_asset_keys}, "the server writes it, Dagster observes it"
    # Monitoring is partitioned by window: its own job, never part of a run over the whole environment.
    monitor = defs.resolve_job_def("monitor")
    assert {key.path[-1] for key in monitor.asset_layer.executable_asset_keys} == {"monitoring", "unanswered_questions"}
    assert not {"monitoring", "unanswered_questions", "serving_endpoint"} & {key.path[-1] for key in ingest.asset_layer.executable_asset_keys}
    assert isinstance(graph.get(dg.AssetKey([env, "monitoring"])).partitions_def, dg.DailyPartitionsDefinition)
    assert graph.get(dg.AssetKey([env, "monitoring"])).parent_keys == {dg.AssetKey([env, "batch_predictions"]), dg.AssetKey([env, "inference_log"])}
    assert defs.resolve_sensor_def(NEW_REQUESTS_SENSOR).job_name == "monitor"
    assert defs.resolve_sensor_def(ENDPOINT_SENSOR).job_name == "update_endpoint"
    if trains:
        assert defs.resolve_sensor_def(RETRAIN_SENSOR).job_name == INGEST_JOB
        assert resources["drift_watch"].environments == {}, "no environment sets monitoring.retrain_on_drift by default"
    if not trains:
        assert defs.resolve_sensor_def(UPSTREAM_SENSOR).job_name == "adopt"
        adopt = defs.resolve_job_def("adopt")
        assert not {"monitoring", "unanswered_questions", "serving_endpoint"} & {key.path[-1] for key in adopt.asset_layer.executable_asset_keys}
        assert resources["upstream"].registered_model == {"staging": "test", "prod": "staging"}[env] + ".llmops.rag_model"
        assert graph.get(dg.AssetKey([env, "rag_model"])).parent_keys == {dg.AssetKey([env, "vector_index"])}
    assert str(llmops_home) in resources["lancedb"].uri and env in resources["lancedb"].uri
    assert resources["landing"].path.endswith(f"landing/{env}")
    assert resources["registry"].registered_model == f"{env}.llmops.rag_model"
    assert resources["registry"].settings().tracking_uri == f"sqlite:///{llmops_home}/mlflow.db"
    assert graph.get(dg.AssetKey([env, "evaluation"])).parent_keys == {dg.AssetKey([env, "rag_model"])}


def test_settings_are_read_when_definitions_load_not_at_import(tmp_path, monkeypatch) -> None:
    import llmops_dagster.definitions as module

    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "a"))
    first = module.build_defs("test").resources["lancedb"].uri
    monkeypatch.setenv("LLMOPS_HOME", str(tmp_path / "b"))
    second = module.build_defs("test").resources["lancedb"].uri
    assert first != second and str(tmp_path / "b") in second


def test_resources_carry_every_setting_of_a_custom_declaration(tmp_path, llmops_home) -> None:
    """Each setting is named once, by its dataclass; the resources hand back exactly what was declared."""
    declaration = tmp_path / "environments.yaml"
    declaration.write_text(
        "environments:\n  test:\n"
        "    ingestion: {max_file_mb: 3}\n"
        "    embedding: {batch_size: 8, precision: fp32}\n"
        "    chunking: {chunk_tokens: 120, context_template: '{title}'}\n"
        "    index: {ann_min_rows: 10, nprobes: 4}\n"
        "    training: {epochs: 2, seed: 7}\n"
        "    rag: {k: 3, mode: text, generator: {kind: extractive}}\n"
        "    evaluation: {min_recall_at_5: 0.7}\n"
        "    mlflow: {experiment: 'custom-{env}'}\n"
    )
    settings = load_settings("test", declaration)
    resources = build_resources(settings)
    assert resources["landing"].max_file_bytes == 3 * 1024 * 1024
    assert resources["embedder"].config() == settings.embedding and settings.embedding.batch_size == 8
    assert resources["engine"].embedder.config() == settings.embedding, "the engine nests the same embedder"
    assert resources["chunker"].config() == settings.chunking and settings.chunking.chunk_tokens == 120
    assert resources["chunker"].embedder.config() == settings.embedding, "the chunker nests the same embedder"
    assert resources["vector_index"].settings() == settings.index and settings.index.nprobes == 4
    assert resources["training"].config() == settings.training and settings.training.seed == 7
    assert resources["rag"].config() == settings.rag and settings.rag.mode == "text"
    assert resources["evaluation"].gate() == settings.evaluation and settings.evaluation.min_recall_at_5 == 0.7
    assert resources["registry"].settings() == settings.mlflow and resources["registry"].experiment == "custom-test"
