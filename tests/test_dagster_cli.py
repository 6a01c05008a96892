"""The dagster CLI, in a subprocess, the way CI uses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops_dagster.core import store

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
pytestmark = pytest.mark.slow
INDEX_STAGES = "test/documents,test/quarantine,test/chunks,test/embeddings,test/vector_index"


def run_dagster(args: list[str], home: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMOPS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "HF_HUB_OFFLINE": "1"}
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    return subprocess.run([DAGSTER, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_definitions_validate_for_the_workspace(tmp_path: Path) -> None:
    result = run_dagster(["definitions", "validate", "-w", "workspace.yaml"], tmp_path / "home")
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    for location in ("llmops-test", "llmops-staging", "llmops-prod"):
        assert location in output


def test_asset_materialize_selects_the_test_environment(tmp_path: Path, sample_landing: Path) -> None:
    home = tmp_path / "home"
    landing = home / "landing" / "test"
    landing.parent.mkdir(parents=True)
    sample_landing.rename(landing)
    result = run_dagster(
        ["asset", "materialize", "-m", "llmops_dagster.definitions", "-a", "test_defs", "--select", INDEX_STAGES], home
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lance = store.LanceStore(str(home / "test" / "lancedb"))
    assert lance.count(store.DOCUMENTS) == 4
    assert lance.count(store.EMBEDDINGS) == lance.count(store.CHUNKS) > 0
    # Other environments are untouched.
    assert not (home / "staging").exists()
