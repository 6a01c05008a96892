"""Shared fixtures: a private LLMOPS_HOME per test, the sample corpus as a landing zone, the real
model, and one trained environment that the CLI and model tests both read. Plain helpers live in
helpers.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from filelock import FileLock

from helpers import SAMPLE_CORPUS, SECRETS, TrainedHome, llmops

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")


@pytest.fixture
def llmops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "llmops-home"
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    return home


@pytest.fixture
def sample_landing(tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    shutil.copytree(SAMPLE_CORPUS, landing)
    return landing


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> TrainedHome:
    """The whole graph, once per session, through the CLI: the sample corpus, its 24 gold questions
    plus two malformed lines, and secrets in the environment. Tests that change the state copy it.

    Under pytest-xdist the workers share one: the first to ask builds it in the run's common temp
    folder while holding a file lock, and records the run's output there for the others to read."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return _train(tmp_path_factory.mktemp("trained-home"))
    shared = tmp_path_factory.getbasetemp().parent
    record = shared / "trained-home.json"
    with FileLock(shared / "trained-home.lock"):
        if not record.exists():
            run = _train(shared / "trained-home").run
            record.write_text(json.dumps({"home": str(shared / "trained-home"), "args": run.args, "stdout": run.stdout, "stderr": run.stderr}))
    recorded = json.loads(record.read_text())
    home = Path(recorded["home"])
    run = subprocess.CompletedProcess(recorded["args"], 0, recorded["stdout"], recorded["stderr"])
    return TrainedHome(home, home / "landing", run, _run_id(run))


def _train(home: Path) -> TrainedHome:
    landing = home / "landing"
    shutil.copytree(SAMPLE_CORPUS, landing)
    with (landing / "questions" / "sample.jsonl").open("a") as handle:
        handle.write('{"question": ""}\nnot json at all\n')
    run = llmops("run", "--env", "test", "--landing", str(landing), home=home, extra_env=SECRETS)
    assert run.returncode == 0, run.stderr[-3000:]
    return TrainedHome(home, landing, run, _run_id(run))


def _run_id(run: subprocess.CompletedProcess) -> str:
    return next(line.split()[1] for line in run.stderr.splitlines() if line.startswith("run ") and line.endswith(" succeeded"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with slow tests first: under pytest-xdist (``make test`` runs two workers, one module
    at a time each) the longest modules then start at once, instead of one ending the run alone."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
