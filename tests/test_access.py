"""The bundle's permissions on a real MLflow tracking server with built-in authentication: the
service account writes, registers and moves aliases; a reader reads and is refused the rest, and
each refusal reads as one clear line."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmops_dagster.core.access import (
    EXPERIMENT,
    REGISTERED_MODEL,
    AccessError,
    AccessPolicy,
    Account,
    Action,
    apply_policy,
    explain_denied,
    held_permission,
    is_denied,
)

from processes import free_port, stop_group

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
MODEL = "test.llmops.rag_model"
EXPERIMENT_NAME = "llmops-test"
SERVICE = Account("llmops-service", "TEST_ACCESS_SERVICE_PASSWORD")
READER = Account("analyst", "TEST_ACCESS_READER_PASSWORD")
ADMIN = Account("admin", "TEST_ACCESS_ADMIN_PASSWORD")


@dataclass
class AuthServer:
    url: str
    passwords: dict[str, str]
    log: Path


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.skip("mlflow's basic-auth app needs Flask-WTF (the mlflow[auth] extra)")
    root = tmp_path_factory.mktemp("mlflow-auth")
    # Deny by default: nobody sees the experiment or the model without a grant, as in Unity Catalog.
    (root / "basic_auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{root}/auth.db\n"
        f"admin_username = {ADMIN.username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"  # one PBKDF2 check per account, not per request
    )
    passwords = {account.username: secrets.token_urlsafe(16) for account in (ADMIN, SERVICE, READER)}
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING_")}
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(root / "basic_auth.ini"),
        MLFLOW_AUTH_ADMIN_PASSWORD=passwords[ADMIN.username],
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no job runner and its worker pool: half the start-up on 2 cores
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    command = [MLFLOW, "server", "--app-name", "basic-auth", "--backend-store-uri", f"sqlite:///{root}/mlflow.db"]
    command += ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(url, process, log)
        yield AuthServer(url, passwords, log)
    finally:
        stop_group(process, timeout=15)


@pytest.fixture
def passwords(auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> AuthServer:
    for account in (ADMIN, SERVICE, READER):
        monkeypatch.setenv(account.password_env, auth_server.passwords[account.username])
    return auth_server


def acting_as(monkeypatch: pytest.MonkeyPatch, account: Account, password: str | None = None) -> None:
    """MLflow's client reads the credentials from the environment on every request."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", account.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password if password is not None else os.environ[account.password_env])


def client(server: AuthServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def refused(call) -> Exception:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as caught:
        call()
    assert is_denied(caught.value), caught.value
    return caught.value


def test_service_account_writes_and_reader_only_reads(passwords: AuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server = passwords
    # The service account exists before the policy does, and does its work: a run, a version, the alias.
    admin = client(server)
    acting_as(monkeypatch, ADMIN)
    from mlflow.server import get_app_client

    get_app_client("basic-auth", tracking_uri=server.url).create_user(SERVICE.username, os.environ[SERVICE.password_env])
    acting_as(monkeypatch, SERVICE)
    service = client(server)
    experiment_id = service.create_experiment(EXPERIMENT_NAME)
    run = service.create_run(experiment_id)
    service.log_metric(run.info.run_id, "recall_at_5", 0.9)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "MLmodel").write_text("flavors: {}\n")
        service.log_artifacts(run.info.run_id, folder, "rag_model")
    service.set_terminated(run.info.run_id)
    service.create_registered_model(MODEL)
    version = service.create_model_version(MODEL, f"runs:/{run.info.run_id}/rag_model", run_id=run.info.run_id)
    service.set_registered_model_alias(MODEL, "champion", version.version)

    policy = AccessPolicy(service=SERVICE, readers=(READER,), experiment=EXPERIMENT_NAME, registered_model=MODEL)
    first = apply_policy(server.url, policy, ADMIN)
    assert first.created_users == [READER.username] and first.created_resources == []
    assert sorted(first.grants) == sorted(
        [
            f"granted READ on experiment '{EXPERIMENT_NAME}' to '{READER.username}'",
            f"granted READ on registered model '{MODEL}' to '{READER.username}'",
        ]
    )  # the service account already manages what it created
    again = apply_policy(server.url, policy, ADMIN)
    assert not again.changed and again.lines() == ["the policy was already in place"]
    assert held_permission(server.url, SERVICE, REGISTERED_MODEL, MODEL) == "MANAGE"
    assert held_permission(server.url, READER, EXPERIMENT, EXPERIMENT_NAME) == "READ"
    held = held_permission(server.url, READER, REGISTERED_MODEL, MODEL)
    assert held == "READ"

    # The reader reads the experiment, its runs and artifacts, the version, and resolves the alias.
    acting_as(monkeypatch, READER)
    reader = client(server)
    assert reader.get_experiment_by_name(EXPERIMENT_NAME).experiment_id == experiment_id
    assert [r.info.run_id for r in reader.search_runs([experiment_id])] == [run.info.run_id]
    assert reader.get_run(run.info.run_id).data.metrics["recall_at_5"] == 0.9
    assert reader.get_model_version_by_alias(MODEL, "champion").version == version.version
    assert reader.get_model_version(MODEL, version.version).run_id == run.info.run_id
    assert [f.path for f in reader.list_artifacts(run.info.run_id, "rag_model")] == ["rag_model/MLmodel"]

    # ...and is refused everything that changes the registry, each with a line that says why.
    as_reader = {"account": READER.username, "held": held}
    attempts = [
        (
            lambda: reader.create_model_version(MODEL, f"runs:/{run.info.run_id}/rag_model", run_id=run.info.run_id),
            Action.register_version(MODEL, **as_reader),
        ),
        (lambda: reader.set_registered_model_alias(MODEL, "champion", version.version), Action.set_alias(MODEL, "champion", **as_reader)),
        (lambda: reader.delete_registered_model_alias(MODEL, "champion"), Action.delete_alias(MODEL, "champion", **as_reader)),
        (
            lambda: reader.set_model_version_tag(MODEL, version.version, "approved", "true"),
            Action.set_version_tag(MODEL, version.version, "approved", **as_reader),
        ),
        (lambda: reader.create_run(experiment_id), Action.log_run(EXPERIMENT_NAME, account=READER.username, held="READ")),
    ]
    for call, action in attempts:
        assert explain_denied(refused(call), action) == f"account '{READER.username}' may not {action.describe()}: it has READ"
    message = explain_denied(refused(attempts[1][0]), Action.set_alias(MODEL, "champion", account=READER.username, held=held))
    assert message == f"account '{READER.username}' may not move alias 'champion' of model '{MODEL}': it has READ"
    # Without a known permission (and the account from the environment) the line still says who and what.
    assert (
        explain_denied(refused(attempts[0][0]), "register a version")
        == f"account '{READER.username}' may not register a version: the tracking server denied it"
    )
    acting_as(monkeypatch, SERVICE)
    assert service.get_model_version_by_alias(MODEL, "champion").version == version.version  # nothing moved

    # A wrong password is a 401 that names the account and never the password.
    wrong = "not-the-" + secrets.token_hex(4)
    acting_as(monkeypatch, READER, password=wrong)
    error = refused(lambda: reader.get_experiment_by_name(EXPERIMENT_NAME))
    line = explain_denied(error, Action.read_model(MODEL))
    rejected = f"the tracking server did not accept the password of account '{READER.username}' (check MLFLOW_TRACKING_PASSWORD)"
    assert line == f"cannot read model '{MODEL}': {rejected}"
    assert wrong not in line and server.passwords[READER.username] not in line
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    assert "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in explain_denied(
        refused(lambda: admin.search_experiments()), "list experiments"
    )


def test_policy_creates_what_is_missing_and_corrects_grants(passwords: AuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server = passwords
    other = Account("auditor", "TEST_ACCESS_AUDITOR_PASSWORD")
    policy = AccessPolicy(service=SERVICE, readers=(other,), experiment="llmops-staging", registered_model="staging.llmops.rag_model")
    with pytest.raises(AccessError, match="TEST_ACCESS_AUDITOR_PASSWORD is not set"):
        apply_policy(server.url, policy, ADMIN)
    monkeypatch.setenv(other.password_env, secrets.token_urlsafe(12))
    report = apply_policy(server.url, policy, ADMIN)
    assert "auditor" in report.created_users  # the service account too, when this test runs alone
    assert report.created_resources == ["experiment 'llmops-staging'", "registered model 'staging.llmops.rag_model'"]
    assert len(report.grants) == 4  # the admin created both, so the service account is granted MANAGE too

    # A reader that somebody gave MANAGE is brought back to READ.
    acting_as(monkeypatch, ADMIN)
    from mlflow.server import get_app_client

    auth = get_app_client("basic-auth", tracking_uri=server.url)
    auth.revoke_user_permission("auditor", REGISTERED_MODEL, "staging.llmops.rag_model")
    auth.grant_user_permission("auditor", REGISTERED_MODEL, "staging.llmops.rag_model", "MANAGE")
    corrected = apply_policy(server.url, policy, ADMIN)
    assert corrected.grants == ["changed 'auditor' on registered model 'staging.llmops.rag_model' from MANAGE to READ"]
    assert held_permission(server.url, other, REGISTERED_MODEL, "staging.llmops.rag_model") == "READ"

    # An admin cannot be a reader: permissions do not bind it.
    auth.update_user_admin("auditor", True)
    with pytest.raises(AccessError, match="reader 'auditor' is an admin"):
        apply_policy(server.url, policy, ADMIN)


def test_policy_and_accounts_refuse_what_cannot_work(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="one role only: llmops-service"):
        AccessPolicy(service=SERVICE, readers=(Account("llmops-service", "OTHER_PASSWORD"),), experiment="e", registered_model="m")
    with pytest.raises(ValueError, match="must name an environment variable"):
        Account("reader", "not a variable")
    monkeypatch.delenv("NO_SUCH_PASSWORD_VARIABLE", raising=False)
    with pytest.raises(AccessError, match="environment variable NO_SUCH_PASSWORD_VARIABLE is not set"):
        Account("reader", "NO_SUCH_PASSWORD_VARIABLE").password()
    assert explain_denied(ValueError("disk full\nmore"), "read") == "disk full"
