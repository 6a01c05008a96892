"""What several test modules share: paths, the secrets planted in runs, the short corpus, and the
llmops command in a subprocess. Fixtures stay in conftest.py; modules import these from here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = REPO / "sample_corpus"
LLMOPS = str(Path(sys.executable).with_name("llmops"))
# Put in the environment of the trained run, and looked for in everything it wrote.
SECRETS = {
    "DATABRICKS_TOKEN": "dapi-not-a-real-token-5f1e2d3c",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-password-9a8b7c",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-0a1b2c3d4e",
}
# A tag key the databricks-uc registry accepts on a model version or registered model: none of
# . , - = / : (at most registry.UC_TAG_LIMIT tags on one object).
UC_TAG_KEY = re.compile(r"[^.,\-=/:]+")
SHORT_DOCUMENTS = ("chunking-notes.md", "release-checklist.txt", "vector-search-primer.html")  # no PDF: seconds, not minutes


def gold_questions(sources: tuple[str, ...]) -> list[str]:
    """The sample gold questions (JSON lines) whose answers are in these documents."""
    lines = (SAMPLE_CORPUS / "questions" / "sample.jsonl").read_text().splitlines(keepends=True)
    return [line for line in lines if json.loads(line)["source"] in sources]


def short_landing(landing: Path) -> Path:
    """The three short sample documents and their gold questions."""
    (landing / "questions").mkdir(parents=True)
    for name in SHORT_DOCUMENTS:
        shutil.copy(SAMPLE_CORPUS / name, landing / name)
    (landing / "questions" / "gold.jsonl").write_text("".join(gold_questions(SHORT_DOCUMENTS)))
    return landing


def llmops(*args: str, home: Path, timeout: int = 600, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The llmops command in a subprocess, with LLMOPS_HOME set and DAGSTER_HOME left to its default under it."""
    env = {**os.environ, "LLMOPS_HOME": str(home), "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    env.pop("DAGSTER_HOME", None)
    return subprocess.run([LLMOPS, *args], env=env, capture_output=True, text=True, timeout=timeout)


def llmops_here(*args: str, home: Path, capsys) -> subprocess.CompletedProcess:
    """The same entry point in this process, for calls where a fresh process adds only seconds (torch
    and the model load once, not per call); ``llmops`` above is for what the process boundary tests."""
    import pytest

    from llmops_dagster.cli.app import main

    with pytest.MonkeyPatch.context() as scoped:
        scoped.setenv("LLMOPS_HOME", str(home))
        scoped.setenv("HF_HUB_OFFLINE", "1")
        scoped.delenv("DAGSTER_HOME", raising=False)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse refusing an argument
            code = exit_.code
        out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["llmops", *args], code, out, err)


def assert_every_chunk_embedded_once(lancedb_uri: str) -> None:
    """After a re-run that followed a kill: the index holds every chunk, each vector once."""
    from llmops_dagster.core import store

    lance = store.LanceStore(lancedb_uri)
    chunk_ids = lance.read(store.CHUNKS, store.CHUNKS_SCHEMA, ["id"]).column("id").to_pylist()
    vector_ids = lance.read(store.EMBEDDINGS, store.embeddings_schema(384), ["id"]).column("id").to_pylist()
    assert chunk_ids and sorted(vector_ids) == sorted(chunk_ids) and len(set(vector_ids)) == len(vector_ids)


@dataclass
class TrainedHome:
    """What ``llmops run --env test`` left behind: its LLMOPS_HOME, landing zone and output."""

    home: Path
    landing: Path
    run: subprocess.CompletedProcess
    run_id: str
