"""``compute: databricks`` up to the HTTP wire: the real batch_predictions asset, the real
dagster-databricks Pipes clients and databricks-sdk, against a stand-in workspace on 127.0.0.1
(tests/databricks_workspace.py). No live workspace is involved."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import uuid
from pathlib import Path

import dagster as dg
import pytest
from databricks_workspace import FAIL, FAILURE_MESSAGE, HANG, REMOTE_ERROR, Run, WorkspaceServer

from llmops_dagster.assets.predictions import batch_predictions
from llmops_dagster.core import store
from llmops_dagster.resources import settings_resources
from llmops_dagster.resources.compute import PipesComputeResource
from llmops_dagster.settings import load_settings

TOKEN = "dapi-wire-test-token-7c6b5a4d"
VOLUME = "/Volumes/test/llmops/pipes"


@pytest.fixture
def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    scenario = getattr(request, "param", "succeed")
    with WorkspaceServer(TOKEN, scenario) as running:
        monkeypatch.setenv("DATABRICKS_HOST", running.host)
        monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
        yield running


def databricks_compute(**overrides) -> PipesComputeResource:
    values = {"env": "test", "compute": "databricks", "volume_path": VOLUME, "poll_interval_seconds": 0.05, "message_interval_seconds": 0.05}
    return PipesComputeResource(**{**values, **overrides})


def materialize(llmops_home: Path, compute: PipesComputeResource, instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    resources = {**settings_resources(load_settings("test")), "compute": compute}
    return dg.materialize([batch_predictions], resources=resources, instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=False)


def nothing_written(llmops_home: Path) -> None:
    settings = load_settings("test")
    assert store.LanceStore(settings.lancedb_uri).count(store.PREDICTIONS) == 0
    from llmops_dagster.core import registry

    client = registry.configure(settings.mlflow.tracking_uri, settings.mlflow.registry_uri)
    assert client.search_registered_models() == []


def test_serverless_run_submits_the_wheel_task_and_receives_the_materialization(llmops_home: Path, server: WorkspaceServer) -> None:
    result = materialize(llmops_home, databricks_compute())
    assert result.success
    metadata = result.asset_materializations_for_node("batch_predictions")[0].metadata
    assert metadata["dagster/row_count"].value == 11 and metadata["table_version"].value == 4

    [submission] = server.workspace.submissions
    assert submission["run_name"] == f"llmops test predict (try {result.run_id}:0)"
    [task] = submission["tasks"]
    wheel = task["python_wheel_task"]
    assert wheel["package_name"] == "llmops_dagster" and wheel["entry_point"] == "llmops-pipes-predict"
    assert wheel["parameters"][:2] == ["--env", "test"]
    assert {"--dagster-pipes-context", "--dagster-pipes-messages"} <= set(wheel["parameters"])
    assert task["environment_key"] == "default" and "new_cluster" not in task
    [environment] = submission["environments"]
    assert environment["environment_key"] == "default" and environment["spec"]["environment_version"] == "2"
    assert environment["spec"]["dependencies"][0].startswith(f"{VOLUME}/wheels/llmops_dagster-")
    assert len(submission["idempotency_token"]) == 64 and submission["timeout_seconds"] == 6 * 3600
    # The context went through the volume (not DBFS), with the landing zone as an extra; temp folders are cleaned up.
    [context] = server.workspace.contexts
    assert context["extras"]["landing"] == str(load_settings("test").landing)
    assert context["asset_keys"] == ["batch_predictions"]
    assert not any(path.startswith("/api/2.0/dbfs") for _, path in server.workspace.requests)
    assert not server.workspace.files and not server.workspace.directories
    assert TOKEN not in json.dumps(submission)


def test_a_classic_cluster_gets_a_new_cluster_with_the_wheel_and_env_var_bootstrap(llmops_home: Path, server: WorkspaceServer) -> None:
    compute = databricks_compute(spark_version="15.4.x-scala2.12", node_type_id="Standard_DS3_v2", num_workers=2)
    assert materialize(llmops_home, compute).success
    [submission] = server.workspace.submissions
    [task] = submission["tasks"]
    cluster = task["new_cluster"]
    assert (cluster["spark_version"], cluster["node_type_id"], cluster["num_workers"]) == ("15.4.x-scala2.12", "Standard_DS3_v2", 2)
    assert cluster["data_security_mode"] == "SINGLE_USER"  # an access mode, or the cluster has no Unity Catalog (the volume, the model)
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(cluster["spark_env_vars"])
    assert task["libraries"][0]["whl"].startswith(f"{VOLUME}/wheels/")
    assert task["python_wheel_task"]["parameters"] == ["--env", "test"]
    assert "environments" not in submission and "run_as" not in submission  # as the token's owner, as test's bundle jobs run


def test_prods_runs_are_submitted_as_the_service_principal_its_bundle_jobs_run_as(
    tmp_path: Path, llmops_home: Path, server: WorkspaceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmops_dagster.resources.compute import compute_resource

    principal = "9f0621ee-b2e1-4a0b-8f2e-6d1c2b3a4f5e"
    declaration = tmp_path / "environments.yaml"
    declaration.write_text(
        "defaults:\n  compute: databricks\n  lancedb_uri: 's3://llmops/{env}/lancedb'\n  landing: '/Volumes/main/llmops/landing_{env}'\n"
        "  mlflow:\n    registered_model: 'main.llmops.rag_{env}'\n    registry_uri: databricks-uc\n    tracking_uri: databricks\n"
        f"  databricks:\n    service_principal: {principal}\n"
        "environments:\n  staging: {}\n  prod: {}\n"
    )
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(declaration))
    assert compute_resource(load_settings("staging")).run_as_service_principal is None, "only production targets run as it"
    assert compute_resource(load_settings("prod")).run_as_service_principal == principal
    monkeypatch.delenv("LLMOPS_ENVIRONMENTS")  # the step below runs in the repository's test environment
    assert materialize(llmops_home, databricks_compute(run_as_service_principal=principal)).success
    [submission] = server.workspace.submissions
    assert submission["run_as"] == {"service_principal_name": principal}


def test_a_submission_whose_reply_is_lost_and_retried_starts_one_run(llmops_home: Path, server: WorkspaceServer) -> None:
    """The SDK retries a 503; the idempotency token makes the retry return the run the first try
    started, so one Databricks run writes, not two. Another Dagster run is another attempt."""
    server.workspace.lose_submit_replies = 1
    assert materialize(llmops_home, databricks_compute()).success
    assert len(server.workspace.runs) == 1 and [path for _, path in server.workspace.requests].count("/api/2.2/jobs/runs/submit") == 2
    assert materialize(llmops_home, databricks_compute()).success
    tokens = [submission["idempotency_token"] for submission in server.workspace.submissions]
    assert len(tokens) == 2 and len(set(tokens)) == 2


def test_a_run_an_ended_try_left_running_is_cancelled_before_the_step_submits_again(llmops_home: Path, server: WorkspaceServer) -> None:
    """A Dagster worker killed while it followed a Databricks run leaves that run writing. The next
    try of the step cancels it when this instance holds its Dagster run as ended (every page of
    active one-off runs is read). It leaves alone, with a warning, a run whose Dagster run is still
    going or unknown here (another Dagster home), and one it may not cancel; and, without a word,
    another step's, another environment's, a finished run and a job's run."""
    ws, instance = server.workspace, dg.DagsterInstance.ephemeral()
    ended, going, unknown = (str(uuid.uuid4()) for _ in range(3))
    instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=ended, status=dg.DagsterRunStatus.FAILURE))
    instance.add_run(dg.DagsterRun(job_name="__ASSET_JOB", run_id=going, status=dg.DagsterRunStatus.STARTED))

    def left(run_id: int, name: str, state: str = "RUNNING", run_type: str = "SUBMIT_RUN") -> None:
        ws.runs[run_id] = Run(run_id, {"run_name": name}, HANG, state=state, run_type=run_type)

    left(1, f"llmops test predict (try {ended}:0)")
    left(2, f"llmops test predict (try {ended}:1)", state="QUEUED")
    left(3, f"llmops test predict (try {going}:0)")
    left(4, f"llmops test predict (try {unknown}:0)")
    left(5, f"llmops test predict (try {ended}:2)")
    ws.uncancellable.add(5)
    left(6, f"llmops test embed (try {ended}:0)")
    left(7, f"llmops staging predict (try {ended}:0)")
    left(8, f"llmops test predict (try {ended}:3)", state="TERMINATED")
    left(9, f"llmops test predict (try {ended}:4)", run_type="JOB_RUN")
    result = materialize(llmops_home, databricks_compute(), instance)
    assert result.success
    assert sorted(ws.cancelled) == [1, 2]
    assert all(ws.runs[number].state == "RUNNING" for number in (3, 4, 5, 6, 7, 9))
    warnings = [record.user_message for record in instance.all_logs(result.run_id) if record.level == logging.WARNING]
    assert sorted(int(re.search(r"Databricks run (\d+)", message)[1]) for message in warnings) == [1, 2, 3, 4, 5]
    assert sum("left running" in message for message in warnings) == 2 and sum("could not cancel" in message for message in warnings) == 1


def test_a_500_while_the_run_is_followed_tries_the_step_again_and_cancels_the_run_it_left(llmops_home: Path, server: WorkspaceServer) -> None:
    """The SDK retries 429, 503 and lost connections, not a 500: one bad reply among thousands of
    polls failed the Dagster run and left the remote run going. The step's next try cancels it and
    submits again."""
    server.workspace.fail_run_gets = 1
    result = materialize(llmops_home, databricks_compute(transient_wait_seconds=0.05))
    assert result.success
    first, second = sorted(server.workspace.runs)
    assert server.workspace.cancelled == [first] and server.workspace.runs[second].result == "SUCCESS"
    assert server.workspace.submissions[1]["run_name"].endswith(":1)"), "the second try"


def test_a_submission_the_jobs_api_refuses_fails_the_run_with_its_reason(llmops_home: Path, server: WorkspaceServer) -> None:
    result = materialize(llmops_home, databricks_compute(environment_version=""))
    assert not result.success and not server.workspace.runs
    assert "the environment spec needs environment_version" in str(result.failure_data_for_node("batch_predictions").error)
    nothing_written(llmops_home)


@pytest.mark.parametrize("server", [FAIL], indirect=True)
def test_a_remote_failure_fails_the_run_with_its_error_and_writes_nothing(llmops_home: Path, server: WorkspaceServer) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(llmops_home, databricks_compute(), instance)
    assert not result.success
    failure = result.failure_data_for_node("batch_predictions")
    assert FAILURE_MESSAGE in str(failure.error)
    records = instance.all_logs(result.run_id)
    assert "Traceback (most recent call last)" in "\n".join(r.user_message for r in records)  # the remote log, via Pipes log messages
    assert REMOTE_ERROR in "\n".join(str(r.dagster_event) for r in records)  # its exception, from the Pipes "closed" message
    assert not result.asset_materializations_for_node("batch_predictions")
    nothing_written(llmops_home)


def test_missing_credentials_are_one_clear_error_before_anything_is_submitted(
    llmops_home: Path, server: WorkspaceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABRICKS_TOKEN")
    result = materialize(llmops_home, databricks_compute())
    assert not result.success
    message = str(result.failure_data_for_node("batch_predictions").error.message)
    assert "DATABRICKS_TOKEN is not set" in message and "Nothing was submitted" in message
    assert server.workspace.requests == []


def test_invalid_credentials_are_refused_before_submission_without_showing_the_token(
    llmops_home: Path, server: WorkspaceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "dapi-wrong-token-1a2b3c4d5e"
    monkeypatch.setenv("DATABRICKS_TOKEN", wrong)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(llmops_home, databricks_compute(), instance)
    assert not result.success
    message = str(result.failure_data_for_node("batch_predictions").error.message)
    assert "refused the credentials from DATABRICKS_HOST and DATABRICKS_TOKEN" in message
    assert server.workspace.submissions == [] and [p for _, p in server.workspace.requests] == ["/api/2.0/preview/scim/v2/Me"]
    everything = "\n".join(str(record) for record in instance.all_logs(result.run_id))
    assert wrong not in everything and TOKEN not in everything


def test_a_workspace_that_is_down_is_not_blamed_on_the_credentials(llmops_home: Path, server: WorkspaceServer) -> None:
    server.workspace.down = True
    result = materialize(llmops_home, databricks_compute())
    message = str(result.failure_data_for_node("batch_predictions").error.message)
    assert "did not answer who we are" in message and "check that it is up and reachable" in message, message
    assert "refused the credentials" not in message and TOKEN not in message and server.workspace.submissions == []


@pytest.mark.slow  # ~20 s: after a cancel, the Pipes reader waits 10 s for messages that never come
@pytest.mark.skipif(os.name != "posix", reason="SIGINT to the own process")
@pytest.mark.parametrize("server", [HANG], indirect=True)
def test_an_interrupted_dagster_run_cancels_the_databricks_run(llmops_home: Path, server: WorkspaceServer) -> None:
    """Dagster turns SIGINT into DagsterExecutionInterruptedError inside the step; the client must
    then cancel the remote run and wait until it terminates."""
    workspace = server.workspace

    def interrupt_when_running() -> None:
        while not any(run.state == "RUNNING" and run.polls >= 2 for run in list(workspace.runs.values())):
            threading.Event().wait(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    result = materialize(llmops_home, databricks_compute())
    # The step ends interrupted, not as a success that reported nothing (which a caller would follow
    # with its next step: rag_model registered after a cancelled evaluation).
    [failure] = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "DagsterExecutionInterruptedError" in str(failure.step_failure_data.error), failure.step_failure_data.error
    [run_id] = list(workspace.runs)
    assert workspace.cancelled == [run_id]
    assert workspace.runs[run_id].state == "TERMINATED" and workspace.runs[run_id].result == "CANCELED"
    nothing_written(llmops_home)


def test_a_step_on_databricks_reads_its_storage_credentials_from_secret_scopes(
    tmp_path: Path, llmops_home: Path, server: WorkspaceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serverless task has no environment variables of its own: the object-store credentials the
    index needs are read by the step itself, from the secret scopes databricks.job_environment_vars
    names, when it starts on Databricks. A variable already set is left as it is."""
    import argparse

    from llmops_dagster.core.bundle import DatabricksConfig
    from llmops_dagster.pipes import _session

    monkeypatch.setattr(os, "environ", os.environ.copy())  # what the steps set stays in this test
    os.environ.pop("AWS_ACCESS_KEY_ID", None)
    os.environ["AWS_SESSION_TOKEN"] = "set by the cluster"
    server.workspace.secrets[("llmops", "aws-id")] = b"AKIA-wire-7"
    declaration = tmp_path / "environments.yaml"
    declaration.write_text(
        "environments:\n  test:\n    databricks:\n      job_environment_vars:\n"
        "        AWS_ACCESS_KEY_ID: '{{secrets/llmops/aws-id}}'\n        AWS_SESSION_TOKEN: '{{secrets/llmops/aws-session}}'\n"
    )
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(declaration))
    args = argparse.Namespace(env="test", landing=None)
    _session.environment(args, None)
    assert "AWS_ACCESS_KEY_ID" not in os.environ, "off Databricks nothing is read"
    os.environ[_session.DATABRICKS_RUNTIME] = "16.4"
    _session.environment(args, None)
    assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIA-wire-7" and os.environ["AWS_SESSION_TOKEN"] == "set by the cluster"
    assert [path for _, path in server.workspace.requests].count("/api/2.0/secrets/get") == 1

    del os.environ["AWS_SESSION_TOKEN"]
    with pytest.raises(SystemExit) as missing:
        _session.environment(args, None)
    assert str(missing.value).startswith("databricks.job_environment_vars.AWS_SESSION_TOKEN: cannot read {{secrets/llmops/aws-session}}")
    with pytest.raises(ValueError, match=r"job_environment_vars.AWS_SECRET_ACCESS_KEY must be a secret reference"):
        DatabricksConfig.from_mapping({"job_environment_vars": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}})
