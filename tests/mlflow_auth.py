"""A real MLflow tracking server with basic auth (``mlflow server --app-name basic-auth``), started
once per test session and shared by the modules that name this plugin in ``pytest_plugins``, with
its admin, a service account and a reader, and helpers to act as one of them.

PYTEST_DONT_REWRITE: the test modules import these helpers before pytest registers the module as
their plugin, too late to rewrite its asserts anyway."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmops_dagster.core.access import Account

from processes import free_port, stop_group

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
SERVICE = Account("llmops-service", "TEST_ACCESS_SERVICE_PASSWORD")
READER = Account("analyst", "TEST_ACCESS_READER_PASSWORD")
ADMIN = Account("admin", "TEST_ACCESS_ADMIN_PASSWORD")


@dataclass
class AuthServer:
    url: str
    passwords: dict[str, str]  # of ADMIN, SERVICE and READER
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


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """One server for the session (its start-up is most of these tests' time); each module works on
    its own experiment, registered model and accounts."""
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
def auth_passwords(auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> AuthServer:
    """The server, with the passwords of ADMIN, SERVICE and READER in the variables they name."""
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

    from llmops_dagster.core.access import is_denied

    with pytest.raises(MlflowException) as caught:
        call()
    assert is_denied(caught.value), caught.value
    return caught.value
