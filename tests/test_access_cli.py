"""The CLI on an environment whose tracking URI is a real MLflow server with basic auth:
`llmops access` applies the declared policy; approve and rollback act as the service account; a
reader reads and sees the status, and its approve and rollback are refused in one line, exit 1."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow_auth import ADMIN, AuthServer

from llmops_dagster.cli.app import main
from llmops_dagster.core.access import Account
from llmops_dagster.core.promotion import APPROVED_BY, promote
from llmops_dagster.core.registry import CHAMPION, PASSED, VALIDATION_STATUS

from helpers import REPO, llmops

pytest_plugins = ("mlflow_auth",)  # the auth server, shared with test_access.py

# Names of their own, so that test_access.py's expectations on the shared server hold in any order.
SERVICE = Account("cli-service", "TEST_CLI_SERVICE_PASSWORD")
READER = Account("cli-analyst", "TEST_CLI_READER_PASSWORD")
MODEL = "test.cli.rag_model"
EXPERIMENT = "llmops-cli-test"


def _declaration(folder: Path, mlflow: dict, auth: dict | None) -> Path:
    document = yaml.safe_load((REPO / "environments.yaml").read_text())
    document["defaults"]["mlflow"].update(mlflow)
    document["defaults"]["auth"] = auth
    document["environments"] = {"test": {}}
    path = folder / "environments.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _auth() -> dict:
    account = lambda a: {"username": a.username, "password_env": a.password_env}  # noqa: E731
    return {"service": account(SERVICE), "readers": [account(READER)], "admin": account(ADMIN)}


def _seed_two_champions(url: str, password: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the service account: two PASSED versions, v1 then v2 promoted, so there is a rollback to make."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", SERVICE.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    run = client.create_run(client.get_experiment_by_name(EXPERIMENT).experiment_id)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "MLmodel").write_text("flavors: {}\n")
        client.log_artifacts(run.info.run_id, folder, "rag_model")
    client.set_terminated(run.info.run_id)
    for _ in range(2):
        version = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/rag_model", run_id=run.info.run_id)
        client.set_model_version_tag(MODEL, version.version, VALIDATION_STATUS, PASSED)
        promote(client, MODEL, version.version, "test", "seeded")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")


def test_policy_applied_and_reader_refused_by_the_cli(
    auth_server: AuthServer, tmp_path: Path, llmops_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    passwords = {SERVICE.username: secrets.token_urlsafe(16), READER.username: secrets.token_urlsafe(16)}
    mlflow = {"tracking_uri": auth_server.url, "artifact_location": None, "experiment": "llmops-cli-{env}", "registered_model": "{env}.cli.rag_model"}
    declaration = _declaration(tmp_path, mlflow, _auth())
    variables = {
        "LLMOPS_ENVIRONMENTS": str(declaration),
        ADMIN.password_env: auth_server.passwords[ADMIN.username],
        SERVICE.password_env: passwords[SERVICE.username],
        READER.password_env: passwords[READER.username],
    }
    shown: list[str] = []

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        """The real command in a fresh process (each costs seconds, so only where the process matters)."""
        done = llmops(*args, home=llmops_home, timeout=120, extra_env={**variables, **extra})
        shown.append(done.stdout + done.stderr)
        return done

    def run_here(*args: str, **extra: str | None) -> tuple[int, str, str]:
        """The same entry point in this process, with these variables (None: unset) for its duration."""
        with monkeypatch.context() as scoped:
            for name, value in {**variables, **extra}.items():
                if value is None:
                    scoped.delenv(name, raising=False)
                else:
                    scoped.setenv(name, value)
            signed_in = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
            capsys.readouterr()
            code = main(list(args))
            out, err = capsys.readouterr()
            # The service account's credentials were set for the command only, and taken away after it.
            assert {name: os.environ.get(name) for name in signed_in} == signed_in
        shown.append(out + err)
        return code, out, err

    applied = run("access", "--env", "test")
    assert (applied.returncode, applied.stderr) == (0, "")
    assert applied.stdout.splitlines() == [
        "test: created user 'cli-service'",
        "test: created user 'cli-analyst'",
        f"test: created experiment '{EXPERIMENT}'",
        f"test: created registered model '{MODEL}'",
        f"test: granted MANAGE on experiment '{EXPERIMENT}' to 'cli-service'",
        f"test: granted MANAGE on registered model '{MODEL}' to 'cli-service'",
        f"test: granted READ on experiment '{EXPERIMENT}' to 'cli-analyst'",
        f"test: granted READ on registered model '{MODEL}' to 'cli-analyst'",
        f"test: 'cli-service' MANAGEs, readers 'cli-analyst' READ experiment '{EXPERIMENT}' and registered model '{MODEL}' on {auth_server.url}",
    ]
    summary = applied.stdout.splitlines()[-1]
    assert run_here("access", "--env", "test") == (0, f"test: the policy was already in place\n{summary}\n", "")

    _seed_two_champions(auth_server.url, passwords[SERVICE.username], monkeypatch)

    # The reader, signed in as itself, reads the status and is refused approve and rollback.
    as_reader = {"MLFLOW_TRACKING_USERNAME": READER.username, "MLFLOW_TRACKING_PASSWORD": passwords[READER.username]}
    code, out, _ = run_here("status", "--env", "test", "--json", **as_reader)
    assert code == 0 and json.loads(out)[0]["champion"]["version"] == "2"
    approve = run("approve", "--env", "test", "--version", "1", **as_reader)
    assert (approve.returncode, approve.stderr) == (
        1,
        f"llmops: error: account 'cli-analyst' may not approve version 1 of model '{MODEL}': it has READ\n",
    )
    assert run_here("rollback", "--env", "test", **as_reader) == (
        1,
        "",
        f"llmops: error: account 'cli-analyst' may not move alias 'champion' of model '{MODEL}': it has READ\n",
    )

    # Without credentials of its own, the CLI acts as the service account, which may do both.
    code, out, err = run_here("rollback", "--env", "test")
    assert code == 0, err
    assert out.startswith(f"{MODEL}: champion v2 → v1 (")
    code, out, err = run_here("approve", "--env", "test", "--version", "2")
    assert code == 0, err
    assert "approved by cli:" in out and "(as cli-service)" in out
    assert out.rstrip().endswith("it is an earlier champion, not the challenger: `llmops rollback --env test --to 2` makes it champion again")

    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", READER.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", passwords[READER.username])
    reader = MlflowClient(tracking_uri=auth_server.url, registry_uri=auth_server.url)
    assert reader.get_model_version_by_alias(MODEL, CHAMPION).version == "1"
    assert "(as cli-service)" in reader.get_model_version(MODEL, "2").tags[APPROVED_BY]
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")

    # A code location of workspace.yaml (the daemon's sensors, the UI's runs) signs in as the service
    # account by itself; someone who started it signed in stays themselves.
    from llmops_dagster.definitions import code_location

    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    code_location("test")
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == SERVICE.username
    MlflowClient(tracking_uri=auth_server.url, registry_uri=auth_server.url).set_registered_model_alias(MODEL, CHAMPION, "2")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", READER.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", passwords[READER.username])
    code_location("test")
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == READER.username
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")

    # A service password variable that is not set: one line naming it, before any registry call.
    code, _, err = run_here("approve", "--env", "test", "--version", "2", **{SERVICE.password_env: None})
    not_set = f"account 'cli-service': environment variable {SERVICE.password_env} is not set"
    assert (code, err) == (2, f"llmops: error: environment 'test': auth.service {not_set}\n")
    secrets_given = [*passwords.values(), auth_server.passwords[ADMIN.username]]
    assert not any(secret in output for secret in secrets_given for output in shown)


def test_access_refuses_what_it_cannot_apply(
    tmp_path: Path, llmops_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    local = _declaration(tmp_path, {}, _auth())
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(local))
    assert main(["access", "--env", "test"]) == 2
    assert "is not an MLflow tracking server" in capsys.readouterr().err
    remote = _declaration(tmp_path, {"tracking_uri": "http://127.0.0.1:9"}, None)
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(remote))
    assert main(["access", "--env", "test"]) == 2
    assert capsys.readouterr().err.endswith("environment 'test' declares no auth: section in environments.yaml; there is no policy to apply\n")
    no_admin = _declaration(tmp_path, {"tracking_uri": "http://127.0.0.1:9"}, {**_auth(), "admin": None})
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(no_admin))
    assert main(["access", "--env", "test"]) == 2
    assert "auth.admin is not declared" in capsys.readouterr().err
