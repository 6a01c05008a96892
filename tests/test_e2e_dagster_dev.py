"""End to end under the real dagster-daemon: a file dropped into the test landing zone is ingested
by the sensor's run, becomes searchable, and the run's validated challenger becomes champion, with
no other action. Loopback only, a temp DAGSTER_HOME and LLMOPS_HOME, bounded waits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from conftest import REPO, SAMPLE_CORPUS
from processes import stop_group
from llmops_dagster.cli import ensure_dagster_home
from llmops_dagster.core import registry, store
from llmops_dagster.core.embedding import EmbedderConfig, load_embedder
from llmops_dagster.core.index import AnnParams, search
from llmops_dagster.settings import load_settings

pytestmark = pytest.mark.slow
DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))


def wait_for(condition, timeout: float, what: str, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    declaration = yaml.safe_load((REPO / "environments.yaml").read_text())
    declaration["defaults"]["sensor_interval_seconds"] = 3  # the daemon ticks each sensor every 3 s
    (tmp_path / "environments.yaml").write_text(yaml.safe_dump(declaration))
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("LLMOPS_ENVIRONMENTS", str(tmp_path / "environments.yaml"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ensure_dagster_home()
    (home / "landing" / "test").mkdir(parents=True)
    log = (tmp_path / "daemon.log").open("w")
    process = subprocess.Popen(
        [DAEMON, "run", "-w", str(REPO / "workspace.yaml")], cwd=REPO, env=os.environ.copy(),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield home
    finally:
        stop_group(process)
        log.close()


def test_a_dropped_file_is_ingested_and_its_model_becomes_champion(daemon: Path) -> None:
    settings = load_settings("test")
    instance = dg.DagsterInstance.get()
    for name in ("chunking-notes.md", "release-checklist.txt"):
        shutil.copy(SAMPLE_CORPUS / name, settings.landing / name)

    def finished_run():
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"llmops/trigger": "new_documents"}))
        return next((run for run in runs if run.is_finished), None)

    run = wait_for(finished_run, 600, "the new_documents sensor's run to finish")
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
    assert run.tags["llmops/landing_change"] == "2 added, 0 changed, 0 deleted"

    table = store.LanceStore(settings.lancedb_uri).open(store.EMBEDDINGS)
    hits = search(table, "release checklist approver", 3, "hybrid", AnnParams(), load_embedder(EmbedderConfig()))
    assert "release-checklist.txt" in {hit.source for hit in hits}

    client = registry.configure(settings.mlflow.tracking_uri, None)
    champion = wait_for(
        lambda: registry.version_by_alias(client, settings.mlflow.registered_model, registry.CHAMPION), 120, "the champion sensor"
    )
    assert champion.tags[registry.VALIDATION_STATUS] == registry.PASSED
    assert champion.tags[registry.DAGSTER_RUN_TAG] == run.run_id
