"""The bundle's permissions on a real MLflow tracking server with built-in authentication: the
service account writes, registers and moves aliases; a reader reads and is refused the rest, and
each refusal reads as one clear line."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import pytest
from mlflow_auth import ADMIN, READER, SERVICE, AuthServer, acting_as, client, refused

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
)

pytest_plugins = ("mlflow_auth",)  # the auth server, shared with test_access_cli.py

MODEL = "test.llmops.rag_model"
EXPERIMENT_NAME = "llmops-test"


def test_service_account_writes_and_reader_only_reads(auth_passwords: AuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server = auth_passwords
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


def test_policy_creates_what_is_missing_and_corrects_grants(auth_passwords: AuthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server = auth_passwords
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
