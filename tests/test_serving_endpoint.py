"""serving_endpoint: the champion's version on a Databricks Model Serving endpoint (through the real
databricks-sdk, against the stand-in workspace of tests/databricks_workspace.py) or followed by
``llmops serve``; and the champion_endpoint sensor that starts it when the champion moves.

Model versions are registered directly in a sqlite MLflow store under the test's LLMOPS_HOME and
moved with the real promotion functions: nothing is trained."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from databricks.sdk.service.serving import (
    AiGatewayConfig,
    AiGatewayRateLimit,
    AiGatewayRateLimitKey,
    AiGatewayRateLimitRenewalPeriod,
    AiGatewayUsageTrackingConfig,
)
from databricks_workspace import ENDPOINTS, WorkspaceServer

from llmops_dagster.assets.endpoint import ENDPOINT_JOB, build_serving_endpoint
from llmops_dagster.core import endpoint, promotion, registry
from llmops_dagster.core.bundle import BundleEnvironment, DatabricksConfig
from llmops_dagster.resources import settings_resources
from llmops_dagster.sensors import build_endpoint_sensor
from llmops_dagster.settings import EnvSettings, load_settings

TOKEN = "dapi-endpoint-test-token-3e9f1a"
MODEL = "test.llmops.rag_model"
ENDPOINT = "llmops-test"
INFERENCE_TABLE = "test.llmops.llmops_test_payload"
FAST = {"ops": {"test__serving_endpoint": {"config": {"poll_seconds": 0.01, "timeout_seconds": 5}}}}


@pytest.fixture
def server(llmops_home: Path, monkeypatch: pytest.MonkeyPatch):
    with WorkspaceServer(TOKEN) as running:
        monkeypatch.setenv("DATABRICKS_HOST", running.host)
        monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
        yield running


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow sqlite store, made once: migrating one takes seconds."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    registry.configure(f"sqlite:///{path}", None).search_registered_models()
    return path


@pytest.fixture
def client(llmops_home: Path, empty_store: Path):
    """The registry of the test environment (sqlite under LLMOPS_HOME) with its registered model."""
    llmops_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store, llmops_home / "mlflow.db")
    settings = load_settings("test")
    assert settings.mlflow.tracking_uri == f"sqlite:///{llmops_home}/mlflow.db"
    mlflow = registry.configure(settings.mlflow.tracking_uri, settings.mlflow.registry_uri)
    mlflow.create_registered_model(MODEL)
    return mlflow


def databricks_settings() -> EnvSettings:
    return replace(load_settings("test"), compute="databricks")


def register(client, tmp_path: Path) -> str:
    """A new version of the model, as the gate leaves a passed one (its artifacts are not read here)."""
    source = tmp_path / "artifacts"
    source.mkdir(exist_ok=True)
    version = str(client.create_model_version(MODEL, source=str(source)).version)
    client.set_model_version_tag(MODEL, version, registry.VALIDATION_STATUS, registry.PASSED)
    return version


def materialize(settings: EnvSettings, instance: dg.DagsterInstance, run_config: dict | None = None) -> dg.ExecuteInProcessResult:
    resources = settings_resources(settings)
    asset = build_serving_endpoint(settings)
    return dg.materialize(
        [asset],
        resources={"registry": resources["registry"], "compute": resources["compute"]},
        instance=instance,
        run_config=run_config or FAST,
        raise_on_error=False,
    )


def metadata_of(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [materialization] = result.asset_materializations_for_node("test__serving_endpoint")
    return {key: value.value for key, value in materialization.metadata.items()}


def endpoint_writes(server: WorkspaceServer) -> list[tuple[str, str, dict | None]]:
    return [call for call in server.workspace.endpoint_calls if call[0] != "GET"]


def everything_recorded(instance: dg.DagsterInstance, client) -> str:
    """Every event of every run (logs, metadata, failures) and every tag on the registered model."""
    events = [str(record) for run in instance.get_runs() for record in instance.all_logs(run.run_id)]
    return "\n".join(events) + json.dumps(client.get_registered_model(MODEL).tags)


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None) -> Any:
    resources = {"registry": settings_resources(load_settings("test"))["registry"]}
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))


def test_the_first_materialization_creates_the_endpoint_serving_the_champion_with_its_inference_table(
    server: WorkspaceServer, client, tmp_path: Path
) -> None:
    version = register(client, tmp_path)
    promotion.promote(client, MODEL, version, "test", "passed")
    instance = dg.DagsterInstance.ephemeral()

    result = materialize(databricks_settings(), instance)
    assert result.success
    metadata = metadata_of(result)
    assert metadata["where"] == "databricks" and metadata["endpoint"] == ENDPOINT and metadata["action"] == "created"
    assert (metadata["served_version"], metadata["previous_version"]) == ("1", "none")
    assert metadata["inference_table"] == INFERENCE_TABLE and metadata["inference_table_enabled"] is True
    assert metadata["state"] == "READY / NOT_UPDATING"

    [(method, path, body)] = endpoint_writes(server)
    assert (method, path) == ("POST", ENDPOINTS) and body["name"] == ENDPOINT
    [entity] = body["config"]["served_entities"]
    assert (entity["entity_name"], entity["entity_version"]) == (MODEL, "1")
    assert entity["workload_size"] == "Small" and entity["scale_to_zero_enabled"] is True
    assert body["config"]["traffic_config"]["routes"] == [{"served_model_name": entity["name"], "traffic_percentage": 100}]
    inference = body["ai_gateway"]["inference_table_config"]
    assert inference == {"enabled": True, "catalog_name": "test", "schema_name": "llmops", "table_name_prefix": "llmops_test"}
    assert "auto_capture_config" not in body["config"], "legacy inference tables cannot be enabled any more"
    assert {"key": "llmops_env", "value": "test"} in body["tags"]
    # It waited until the update was live: the stand-in keeps it IN_PROGRESS for one read.
    assert server.workspace.endpoints[ENDPOINT].config["served_entities"][0]["entity_version"] == "1"
    recorded = endpoint.recorded(client, MODEL, "databricks")
    assert (recorded.endpoint, recorded.version, recorded.previous, recorded.run_id) == (ENDPOINT, "1", None, result.run_id)

    # Already serving the champion: nothing is sent.
    again = materialize(databricks_settings(), instance)
    assert again.success and metadata_of(again)["action"] == "unchanged"
    assert len(endpoint_writes(server)) == 1


def test_a_new_champion_updates_the_endpoint_recording_the_previous_version_and_a_rollback_points_it_back(
    server: WorkspaceServer, client, tmp_path: Path
) -> None:
    """The whole loop as the daemon runs it: the sensor asks for a run when the champion moves, the
    run points the endpoint at it, and the sensor is quiet until the next move."""
    instance = dg.DagsterInstance.ephemeral()
    sensor = build_endpoint_sensor("test", ENDPOINT_JOB, "databricks")
    first = register(client, tmp_path)
    assert tick(sensor, instance, None).skip_message == f"{MODEL} has no champion yet"
    promotion.promote(client, MODEL, first, "test", "passed")

    cursor = None
    requested: list[str] = []
    served: list[dict[str, Any]] = []

    def follow() -> None:
        nonlocal cursor
        result = tick(sensor, instance, cursor)
        [request] = result.run_requests
        requested.append(request.run_key)
        cursor = result.cursor
        run = materialize(databricks_settings(), instance)
        assert run.success
        served.append(metadata_of(run))
        assert "was pointed at the champion" in tick(sensor, instance, cursor).skip_message

    follow()
    second = register(client, tmp_path)
    promotion.promote(client, MODEL, second, "test", "better")
    follow()
    assert (served[1]["action"], served[1]["served_version"], served[1]["previous_version"]) == ("updated", "2", "1")
    [(method, path, body)] = endpoint_writes(server)[1:]
    assert (method, path) == ("PUT", f"{ENDPOINTS}/{ENDPOINT}/config")
    assert [e["entity_version"] for e in body["served_entities"]] == ["2"]
    recorded = endpoint.recorded(client, MODEL, "databricks")
    assert (recorded.version, recorded.previous) == ("2", "1")

    promotion.rollback(client, MODEL, "cli:operator")
    follow()
    assert (served[2]["action"], served[2]["served_version"], served[2]["previous_version"]) == ("updated", "1", "2")
    assert server.workspace.endpoints[ENDPOINT].config["served_entities"][0]["entity_version"] == "1"
    assert len(set(requested)) == 3, "going back to v1 after the rollback is a new request, not the first one's run key"

    assert TOKEN not in everything_recorded(instance, client)
    assert all(TOKEN not in json.dumps(body) for _, _, body in server.workspace.endpoint_calls)


def test_bad_credentials_are_one_clear_error_and_nothing_is_sent(
    server: WorkspaceServer, client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    promotion.promote(client, MODEL, register(client, tmp_path), "test", "passed")
    wrong = "dapi-wrong-token-0f9e8d7c"
    monkeypatch.setenv("DATABRICKS_TOKEN", wrong)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(databricks_settings(), instance)
    assert not result.success
    message = result.failure_data_for_node("test__serving_endpoint").error.message
    assert "refused the credentials from DATABRICKS_HOST and DATABRICKS_TOKEN" in message and "Nothing was submitted" in message
    assert [path for _, path in server.workspace.requests] == ["/api/2.0/preview/scim/v2/Me"]
    assert server.workspace.endpoint_calls == [] and endpoint.recorded(client, MODEL, "databricks") is None
    recorded = everything_recorded(instance, client)
    assert wrong not in recorded and TOKEN not in recorded

    monkeypatch.delenv("DATABRICKS_TOKEN")
    result = materialize(databricks_settings(), instance)
    assert "DATABRICKS_TOKEN is not set" in result.failure_data_for_node("test__serving_endpoint").error.message
    assert server.workspace.endpoint_calls == []


def test_without_a_champion_the_result_says_so_and_nothing_is_deployed(server: WorkspaceServer, client, tmp_path: Path) -> None:
    register(client, tmp_path)  # a challenger, never promoted
    result = materialize(databricks_settings(), dg.DagsterInstance.ephemeral())
    assert result.success
    metadata = metadata_of(result)
    assert metadata["state"] == f"{MODEL} has no champion yet: nothing to serve" and metadata["served_version"] == "none"
    assert server.workspace.requests == []


def test_a_refusal_from_the_workspace_is_one_line_naming_the_endpoint(server: WorkspaceServer, client, tmp_path: Path) -> None:
    promotion.promote(client, MODEL, register(client, tmp_path), "test", "passed")
    server.workspace.deny_endpoint_writes = True
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(databricks_settings(), instance)
    assert not result.success
    message = result.failure_data_for_node("test__serving_endpoint").error.message
    assert message.splitlines()[0] == (
        f"dagster._core.definitions.events.Failure: serving endpoint '{ENDPOINT}': creating it failed: "
        "PermissionDenied: User does not have permission 'CAN_MANAGE' on serving endpoints."
    )
    assert endpoint.recorded(client, MODEL, "databricks") is None and TOKEN not in everything_recorded(instance, client)


def test_a_failed_update_names_the_endpoint_and_what_it_still_serves(server: WorkspaceServer, client, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    promotion.promote(client, MODEL, register(client, tmp_path), "test", "passed")
    assert materialize(databricks_settings(), instance).success
    promotion.promote(client, MODEL, register(client, tmp_path), "test", "better")
    server.workspace.fail_updates = True
    result = materialize(databricks_settings(), instance)
    assert not result.success
    message = result.failure_data_for_node("test__serving_endpoint").error.message
    assert f"serving endpoint '{ENDPOINT}': the update to v2 ended UPDATE_FAILED; it still serves v1." in message
    recorded = endpoint.recorded(client, MODEL, "databricks")
    assert (recorded.version, recorded.previous) == ("1", None), "only what went live is recorded"
    assert TOKEN not in everything_recorded(instance, client)


def test_an_update_still_running_at_the_deadline_fails_clearly_and_the_next_run_waits_for_it(
    server: WorkspaceServer, client, tmp_path: Path
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    promotion.promote(client, MODEL, register(client, tmp_path), "test", "passed")
    server.workspace.hang_updates = True
    slow = {"ops": {"test__serving_endpoint": {"config": {"poll_seconds": 0.01, "timeout_seconds": 0.05}}}}
    result = materialize(databricks_settings(), instance, slow)
    assert not result.success
    message = result.failure_data_for_node("test__serving_endpoint").error.message
    assert f"serving endpoint '{ENDPOINT}' was still updating to v1 after 0.05 s (NOT_READY / IN_PROGRESS)" in message
    assert endpoint.recorded(client, MODEL, "databricks") is None

    server.workspace.hang_updates = False
    result = materialize(databricks_settings(), instance)
    assert result.success, "the update under way is waited for, not refused or sent twice"
    assert (metadata_of(result)["action"], metadata_of(result)["served_version"]) == ("updated", "1")
    assert [method for method, _, _ in endpoint_writes(server)] == ["POST"]


def test_an_existing_endpoint_without_an_inference_table_gets_one(server: WorkspaceServer, client, tmp_path: Path) -> None:
    from databricks.sdk import WorkspaceClient

    promotion.promote(client, MODEL, register(client, tmp_path), "test", "passed")
    spec = endpoint.endpoint_spec(BundleEnvironment.from_settings(databricks_settings()))
    workspace = WorkspaceClient(host=server.host, token=TOKEN, auth_type="pat")
    server.workspace.settle_after = 0  # live at the next read
    # Made by hand, with a rate limit and usage tracking but no inference table.
    limits = [AiGatewayRateLimit(calls=100, key=AiGatewayRateLimitKey.USER, renewal_period=AiGatewayRateLimitRenewalPeriod.MINUTE)]
    gateway = AiGatewayConfig(rate_limits=limits, usage_tracking_config=AiGatewayUsageTrackingConfig(enabled=True))
    workspace.serving_endpoints.create(ENDPOINT, config=endpoint.desired_config(spec, "1"), ai_gateway=gateway)
    outcome = endpoint.ensure_endpoint(workspace, spec, "1", poll_s=0.01, timeout_s=5)
    assert (outcome.action, outcome.served_version, outcome.inference_table_enabled) == ("unchanged", "1", True)
    method, path, body = endpoint_writes(server)[-1]
    assert (method, path) == ("PUT", f"{ENDPOINTS}/{ENDPOINT}/ai-gateway")
    assert body["inference_table_config"]["enabled"] is True and body["inference_table_config"]["table_name_prefix"] == "llmops_test"
    # The gateway is replaced whole, so what was there is sent back with the inference table.
    assert body["rate_limits"] == [{"calls": 100, "key": "user", "renewal_period": "minute"}] and body["usage_tracking_config"] == {"enabled": True}
    assert server.workspace.endpoints[ENDPOINT].ai_gateway["rate_limits"] == body["rate_limits"]


def test_a_gateway_change_that_sets_the_endpoint_updating_is_waited_for_before_the_config_update(
    server: WorkspaceServer, client, tmp_path: Path
) -> None:
    """Enabling the inference table on an endpoint made by hand, then moving it to a new version:
    a workspace may set the endpoint updating for the gateway change, and refuses (409) a config
    update sent before that is over."""
    from databricks.sdk import WorkspaceClient

    promotion.promote(client, MODEL, register(client, tmp_path), "test", "passed")
    spec = endpoint.endpoint_spec(BundleEnvironment.from_settings(databricks_settings()))
    workspace = WorkspaceClient(host=server.host, token=TOKEN, auth_type="pat")
    server.workspace.settle_after = 0
    workspace.serving_endpoints.create(ENDPOINT, config=endpoint.desired_config(spec, "1"))
    workspace.serving_endpoints.get(ENDPOINT)  # live
    server.workspace.settle_after, server.workspace.gateway_updates = 2, True
    outcome = endpoint.ensure_endpoint(workspace, spec, "2", poll_s=0.01, timeout_s=5)
    assert (outcome.action, outcome.served_version, outcome.inference_table_enabled) == ("updated", "2", True)
    assert [(method, path.rsplit("/", 1)[-1]) for method, path, _ in endpoint_writes(server)][-2:] == [("PUT", "ai-gateway"), ("PUT", "config")]


def test_the_served_model_gets_its_secret_variables_and_a_change_to_them_updates_the_endpoint(
    server: WorkspaceServer, client, tmp_path: Path
) -> None:
    """The model reads its index from object storage and may call a generator: the endpoint passes it
    the credentials as secret references, and a new reference reaches the live version."""
    from databricks.sdk import WorkspaceClient

    promotion.promote(client, MODEL, register(client, tmp_path), "test", "passed")
    workspace = WorkspaceClient(host=server.host, token=TOKEN, auth_type="pat")
    server.workspace.settle_after = 0

    def spec_with(variables: dict[str, str]) -> endpoint.EndpointSpec:
        settings = databricks_settings()
        configured = replace(settings.databricks, serving_environment_vars=variables)
        return endpoint.endpoint_spec(BundleEnvironment.from_settings(replace(settings, databricks=configured)))

    first = {"AWS_ACCESS_KEY_ID": "{{secrets/llmops/aws-id}}", "OPENAI_API_KEY": "{{secrets/llmops/openai}}"}
    assert endpoint.ensure_endpoint(workspace, spec_with(first), "1", poll_s=0.01, timeout_s=5).action == "created"
    [(_, _, body)] = [call for call in endpoint_writes(server) if call[0] == "POST"]
    assert body["config"]["served_entities"][0]["environment_vars"] == first
    assert endpoint.ensure_endpoint(workspace, spec_with(first), "1", poll_s=0.01, timeout_s=5).action == "unchanged"
    rotated = {**first, "AWS_ACCESS_KEY_ID": "{{secrets/llmops/aws-id-2}}"}
    outcome = endpoint.ensure_endpoint(workspace, spec_with(rotated), "1", poll_s=0.01, timeout_s=5)
    assert (outcome.action, outcome.served_version) == ("updated", "1")
    method, path, body = endpoint_writes(server)[-1]
    assert (method, path) == ("PUT", f"{ENDPOINTS}/{ENDPOINT}/config") and body["served_entities"][0]["environment_vars"] == rotated
    with pytest.raises(ValueError, match=r"serving_environment_vars.OPENAI_API_KEY must be a secret reference \{\{secrets/<scope>/<key>\}\}"):
        DatabricksConfig.from_mapping({"serving_environment_vars": {"OPENAI_API_KEY": "sk-live-123"}})


# ---- locally: what llmops serve follows --------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    answer: dict[str, Any] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps(self.answer if self.path == "/health" else {}).encode()
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_locally_it_records_the_version_llmops_serve_follows_and_the_one_a_server_reports(client, tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    settings = load_settings("test")
    promotion.promote(client, MODEL, register(client, tmp_path), "test", "passed")

    # No server on the configured address: the champion is what one started there would serve.
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Health", (_Health,), {"answer": {}}))
    port = httpd.server_address[1]
    httpd.server_close()  # a port nobody listens on
    settings = replace(settings, serving=replace(settings.serving, port=port))
    result = materialize(settings, instance)
    assert result.success
    metadata = metadata_of(result)
    assert metadata["where"] == "local" and metadata["endpoint"] == f"http://127.0.0.1:{port}"
    assert (metadata["served_version"], metadata["previous_version"], metadata["server_reports"]) == ("1", "none", "no server")
    assert metadata["state"].startswith(f"no llmops serve answers at http://127.0.0.1:{port}")

    # A server of this model answering with the version it still serves while the new one loads.
    promotion.promote(client, MODEL, register(client, tmp_path), "test", "better")
    answer = {"status": "ready", "model": MODEL, "version": "1"}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Health", (_Health,), {"answer": answer}))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        settings = replace(settings, serving=replace(settings.serving, port=httpd.server_address[1]))
        metadata = metadata_of(materialize(settings, instance))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (metadata["served_version"], metadata["previous_version"], metadata["server_reports"]) == ("2", "1", "1")
    assert "still serves v1" in metadata["state"]
    recorded = endpoint.recorded(client, MODEL, "local")
    assert (recorded.version, recorded.previous, recorded.reported) == ("2", "1", "1")
    assert endpoint.recorded(client, MODEL, "databricks") is None

    sensor = build_endpoint_sensor("test", ENDPOINT_JOB, "local")
    assert tick(sensor, instance, None).skip_message.startswith(f"http://127.0.0.1:{httpd.server_address[1]} was pointed at the champion v2")


def test_a_server_of_another_model_is_not_taken_for_this_one() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Health", (_Health,), {"answer": {"model": "other.llmops.rag_model", "version": "9"}}))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = endpoint.server_url("0.0.0.0", httpd.server_address[1])
        assert url == f"http://127.0.0.1:{httpd.server_address[1]}"
        assert endpoint.local_server_version(url, MODEL) is None
        assert endpoint.local_server_version(url, "other.llmops.rag_model") == "9"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_endpoint_settings_come_from_the_databricks_section(tmp_path: Path, llmops_home: Path) -> None:
    declaration = tmp_path / "environments.yaml"
    declaration.write_text(
        "environments:\n  test:\n    compute: databricks\n    lancedb_uri: 's3://rag/lancedb'\n    landing: /Volumes/main/rag/landing\n"
        "    mlflow: {registered_model: 'main.rag.answers', tracking_uri: databricks, registry_uri: databricks-uc}\n"
        "    databricks: {serving_endpoint: 'answers-{env}', serving_workload_size: Medium, serving_scale_to_zero: false}\n"
    )
    spec = endpoint.endpoint_spec(BundleEnvironment.from_settings(load_settings("test", declaration)))
    assert (spec.name, spec.model, spec.workload_size, spec.scale_to_zero) == ("answers-test", "main.rag.answers", "Medium", False)
    assert spec.inference_table == "main.rag.answers_test_payload"
    [entity] = endpoint.served_entities(spec, "7")
    assert (entity.name, entity.entity_name, entity.entity_version) == ("answers-7", "main.rag.answers", "7")
    declaration.write_text("environments:\n  test:\n    databricks: {serving_scale_to_zero: sometimes}\n")
    with pytest.raises(ValueError, match="databricks.serving_scale_to_zero must be true or false"):
        load_settings("test", declaration)
