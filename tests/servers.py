"""A real ``llmops serve`` in a subprocess, on a copy of the session's trained environment, with a
declaration whose serving settings are short: the alias is read every 0.5 s and the log flushed
every 0.5 s. Waits are bounded."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from helpers import LLMOPS, REPO, TrainedHome, llmops
from processes import free_port, stop_group

TOKEN_ENV = "LLMOPS_TEST_SERVE_TOKEN"
FLUSH_SECONDS = 0.5


@dataclass
class Server:
    home: Path
    env: dict[str, str]
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_rows(self) -> list[dict]:
        import lancedb

        db = lancedb.connect(str(self.home / "test" / "lancedb"))
        return db.open_table("inference_log").to_arrow().to_pylist() if "inference_log" in db.table_names() else []

    def logged(self, client_ids: list[str], timeout: float = 60) -> list[dict]:
        """The log rows of these client request ids, once every one of them has been flushed (bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [row for row in self.log_rows() if row["client_request_id"] in client_ids]
            if {row["client_request_id"] for row in rows} == set(client_ids) or time.monotonic() > deadline:
                return rows
            time.sleep(FLUSH_SECONDS)

    def registry(self):  # noqa: ANN201
        from llmops_dagster.core import registry

        return registry.configure(f"sqlite:///{self.home}/mlflow.db", None)


def declare(folder: Path, port: int, **serving: object) -> Path:
    declaration = yaml.safe_load((REPO / "environments.yaml").read_text())
    declaration["defaults"]["serving"].update(
        {"port": port, "poll_seconds": 0.5, "log_flush_seconds": FLUSH_SECONDS, "token_env": TOKEN_ENV, "max_body_kb": 16, **serving}
    )
    path = folder / "environments.yaml"
    path.write_text(yaml.safe_dump(declaration))
    return path


def champion_home(trained_home: TrainedHome, folder: Path) -> Path:
    """A copy of the trained environment whose challenger (v1) is the champion."""
    home = folder / "home"
    shutil.copytree(trained_home.home, home)
    ticked = llmops("tick", "--env", "test", home=home)
    assert ticked.returncode == 0 and "champion is now v1" in ticked.stdout, ticked.stderr[-2000:]
    return home


def start(home: Path, folder: Path, token: str | None = None, **serving: object) -> Server:
    """``llmops serve --env test``; ``serving`` overrides settings of the declaration's serving section."""
    port = free_port()
    env = {**os.environ, "LLMOPS_HOME": str(home), "HF_HUB_OFFLINE": "1", "LLMOPS_ENVIRONMENTS": str(declare(folder, port, **serving))}
    env.pop(TOKEN_ENV, None)
    if token:
        env[TOKEN_ENV] = token
    process = subprocess.Popen(
        [LLMOPS, "serve", "--env", "test"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    server = Server(home, env, port, process)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"llmops serve exited with {process.returncode}: {process.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_group(process)
    raise AssertionError("llmops serve did not become healthy within 240 s")


def stop(server: Server) -> tuple[int, str]:
    """SIGTERM, then the exit code and what the server printed."""
    stop_group(server.process)
    return server.process.returncode, server.process.stderr.read()
