"""The model a server answers with: the environment's champion, followed as the alias moves.

A background thread reads the ``champion`` alias every ``poll_seconds``. When it names another
version (a promotion or a rollback), that version is loaded and warmed with its input example off
the request path, then swapped in with one reference assignment. A request takes the current model
once, when it starts, and finishes on it even if a swap happens meanwhile; no request waits for a
load. A version that fails to load is reported and the current one keeps serving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from llmops_dagster.core import registry
from llmops_dagster.core.rag import RagPipeline

WARM_UP_QUESTION = "What must pass before a release?"  # the pyfunc's logged input example


class NoChampionError(RuntimeError):
    """The registered model has no champion to serve yet."""


@dataclass
class ServedModel:
    """One loaded version: what answers, and what ``/version`` and every logged row name."""

    name: str
    version: str
    run_id: str
    embedding_model: str  # the index fingerprint this version's queries meet
    pipeline: RagPipeline
    input_schema: Any
    index_table_version: int
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def generator(self) -> dict[str, Any]:
        """What writes the answers: kind, model, parameters and prompt template digest."""
        return dict(self.pipeline.generator.identity)

    def count_tokens(self, text: str) -> int:
        return self.pipeline.encoder.embedder.count_tokens(text)

    def describe(self) -> dict[str, Any]:
        return {
            "registered_model": self.name,
            "version": self.version,
            "alias": registry.CHAMPION,
            "mlflow_run_id": self.run_id,
            "embedding_model": self.embedding_model,
            "index_table_version": self.index_table_version,
            "retrieval": self.pipeline.config.retrieval_label(),
            "k": self.pipeline.config.k,
            "generator": self.generator,
            "loaded_at": self.loaded_at,
        }


def load_served(client: Any, name: str, version: str, lancedb_uri: str, route: Callable) -> ServedModel:
    """Load ``name`` v``version`` on this environment's index, send its embedding calls through
    ``route`` (the micro-batcher's ``wrap``) and warm it with one answer."""
    from llmops_dagster.core.rag_model import load_version

    pyfunc = load_version(name, version, lancedb_uri)
    rag = pyfunc.unwrap_python_model()
    pipeline = rag.pipeline.routed(route)
    pipeline.answer(WARM_UP_QUESTION)
    return ServedModel(
        name=name,
        version=version,
        run_id=client.get_model_version(name, version).run_id or "",
        embedding_model=rag.spec.index_embedding_model,
        pipeline=pipeline,
        input_schema=pyfunc.metadata.get_input_schema(),
        index_table_version=pipeline.table.version,
    )


class ChampionFollower:
    """Holds the served model and keeps it on the ``champion`` alias."""

    def __init__(
        self,
        client: Any,
        name: str,
        lancedb_uri: str,
        route: Callable,
        poll_seconds: float,
        on_swap: Callable[[ServedModel], None] = lambda served: None,
        warn: Callable[[str], None] = print,
    ) -> None:
        self.client, self.name, self.lancedb_uri, self.route = client, name, lancedb_uri, route
        self.poll_seconds, self.on_swap, self.warn = poll_seconds, on_swap, warn
        self.current: ServedModel | None = None
        self.failed_loads = 0
        self._failed_version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def champion_version(self) -> str | None:
        version = registry.version_by_alias(self.client, self.name, registry.CHAMPION)
        return str(version.version) if version is not None else None

    def load_champion(self) -> ServedModel:
        """Load the champion now (at start-up, before the port opens)."""
        version = self.champion_version()
        if version is None:
            raise NoChampionError(f"{self.name} has no champion yet")
        self._swap(load_served(self.client, self.name, version, self.lancedb_uri, self.route))
        return self.current  # type: ignore[return-value]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="llmops-champion-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_seconds + 5)

    def poll(self) -> bool:
        """Follow the alias once: True when a new version was swapped in."""
        wanted = self.champion_version()
        if wanted is None or (self.current is not None and wanted == self.current.version) or wanted == self._failed_version:
            return False
        try:
            served = load_served(self.client, self.name, wanted, self.lancedb_uri, self.route)
        except Exception as error:  # keep serving the current version; try again when the alias moves
            self.failed_loads += 1
            self._failed_version = wanted
            self.warn(f"could not load {self.name} v{wanted}, still serving v{self.current.version if self.current else '-'}: "
                      f"{registry.error_line(error)}")
            return False
        self._swap(served)
        return True

    def _swap(self, served: ServedModel) -> None:
        self.current, self._failed_version = served, None
        self.on_swap(served)

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception as error:  # the registry is unreachable: keep serving, read it again later
                self.warn(f"reading the champion alias of {self.name} failed: {registry.error_line(error)}")
