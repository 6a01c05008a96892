"""Shared fixtures: a private LLMOPS_HOME per test, the sample corpus as a landing zone, the real
model, and one trained environment that the CLI and model tests both read. Plain helpers live in
helpers.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

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
    plus two malformed lines, and secrets in the environment. Tests that change the state copy it."""
    home = tmp_path_factory.mktemp("trained-home")
    landing = home / "landing"
    shutil.copytree(SAMPLE_CORPUS, landing)
    with (landing / "questions" / "sample.jsonl").open("a") as handle:
        handle.write('{"question": ""}\nnot json at all\n')
    run = llmops("run", "--env", "test", "--landing", str(landing), home=home, extra_env=SECRETS)
    assert run.returncode == 0, run.stderr[-3000:]
    run_id = next(line.split()[1] for line in run.stderr.splitlines() if line.startswith("run ") and line.endswith(" succeeded"))
    return TrainedHome(home, landing, run, run_id)
