"""What several test modules share: paths, the secrets planted in runs, the short corpus, and the
llmops command in a subprocess. Fixtures stay in conftest.py; modules import these from here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

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


def wait_for(condition, timeout: float, what: str, every: float = 2.0):  # noqa: ANN001, ANN201
    """``condition()``'s first truthy value, asked every ``every`` seconds for up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def lock_held_elsewhere(path: Path) -> Iterator[None]:
    """``path`` locked as ``llmops run`` locks it (filelock), by another process, which is killed on the way out."""
    hold = f"import filelock, time; lock = filelock.FileLock({str(path)!r}); lock.acquire(); print('held', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()  # the lock goes with the process
        holder.wait()


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


def requirement_closure(distribution: str, extras: tuple[str, ...] = ()) -> set[str]:
    """The installed distributions that ``pip install distribution[extras]`` brings, by their
    normalized names, read from the installed metadata (optional extras of dependencies followed as
    they are asked for)."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(distribution, extras)]
    while todo:
        name, asked = todo.pop()
        if (canonicalize_name(name), asked) in seen:
            continue
        seen.add((canonicalize_name(name), asked))
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker and not any(requirement.marker.evaluate({"extra": extra}) for extra in asked or ("",)):
                continue
            try:
                metadata.distribution(requirement.name)
            except metadata.PackageNotFoundError:  # an optional dependency nobody here installed
                continue
            todo.append((requirement.name, tuple(sorted(requirement.extras))))
    return {name for name, _ in seen}


def core_site_packages(root: Path) -> Path:
    """A view of this interpreter's site-packages, under ``root``, with only what ``pip install
    llmops-dagster`` brings, as on Databricks compute where a job installs the wheel alone: a link
    to each entry that only the core requirements' distributions own (or nobody does), none to one
    that only others own (the ``platform`` and ``dev`` extras), and a folder of the same rule one
    level down where both share a namespace (``google/``)."""
    import importlib.metadata as metadata
    import sysconfig

    from packaging.utils import canonicalize_name

    site = Path(sysconfig.get_paths()["purelib"])
    view = root / "core-site-packages"
    if view.is_dir():
        return view
    core = requirement_closure("llmops-dagster")
    owners: dict[tuple[str, ...], set[str]] = {}  # every folder and file of a distribution → who installed it
    for distribution in metadata.distributions():
        name = canonicalize_name(distribution.metadata["Name"])
        for file in distribution.files or []:
            if file.parts[0] != "..":
                for depth in range(1, len(file.parts) + 1):
                    owners.setdefault(tuple(file.parts[:depth]), set()).add(name)

    def mirror(source: Path, target: Path, parts: tuple[str, ...]) -> None:
        target.mkdir(parents=True)
        for entry in source.iterdir():
            found = owners.get((*parts, entry.name), set())
            if not found or found <= core:
                (target / entry.name).symlink_to(entry)
            elif found & core and entry.is_dir():
                mirror(entry, target / entry.name, (*parts, entry.name))

    staging = root / "core-site-packages.partial"
    shutil.rmtree(staging, ignore_errors=True)
    mirror(site, staging, ())
    staging.rename(view)
    return view


CORE_ONLY = Path(__file__).resolve().parent / "core_only"


def core_only_environment(root: Path) -> dict[str, str]:
    """Environment variables under which a Python subprocess imports from ``core_site_packages``
    instead of site-packages (``core_only/sitecustomize.py``)."""
    path = os.pathsep.join(filter(None, [str(CORE_ONLY), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "LLMOPS_CORE_SITE": str(core_site_packages(root))}
