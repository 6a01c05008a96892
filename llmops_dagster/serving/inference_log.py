"""The environment's ``inference_log``: one row per request, written in batches off the request path.

Requests only put a row on a bounded queue, which never blocks: when it is full the row is dropped
and counted. A writer thread commits the queue to Lance once it holds ``flush_rows`` rows or every
``flush_seconds``, and once more when the server stops. A ``kill -9`` therefore loses at most the
rows of the last ``flush_seconds`` (or ``flush_rows``). If a write fails, the server goes on
answering and the rows are counted as failed; ``/health`` and ``/metrics`` show both counts.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from llmops_dagster.core import store

TRUNCATION_MARK = "…[truncated]"


def clip(payload: Any, limit: int) -> tuple[str, bool]:
    """``payload`` as JSON (strings as they are), cut to ``limit`` characters; and whether it was cut."""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, default=str)
    if len(text) <= limit:
        return text, False
    return text[: max(0, limit - len(TRUNCATION_MARK))] + TRUNCATION_MARK, True


@dataclass
class LogCounts:
    written: int = 0
    dropped: int = 0  # the queue was full
    failed: int = 0  # the write to Lance failed
    pending: int = 0

    def as_dict(self) -> dict[str, int]:
        return vars(self).copy()


class InferenceLog:
    """A bounded queue of rows and the thread that writes them to ``store.INFERENCE_LOG``."""

    def __init__(
        self,
        lancedb_uri: str,
        flush_rows: int,
        flush_seconds: float,
        max_queued: int,
        on_write: Callable[[str, int], None] | None = None,
        warn: Callable[[str], None] = print,
    ) -> None:
        self.uri, self.flush_rows, self.flush_seconds = lancedb_uri, flush_rows, flush_seconds
        self.on_write, self.warn = on_write, warn
        self.counts = LogCounts()
        self._rows: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_queued)
        self._stop, self._due = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self._store: store.LanceStore | None = None
        self._writer = threading.Thread(target=self._run, name="llmops-inference-log", daemon=True)
        self._writer.start()

    def record(self, row: dict[str, Any]) -> None:
        """Queue one request's row; never blocks the request."""
        try:
            self._rows.put_nowait(row)
        except queue.Full:
            self._count("dropped", 1)
        if self._rows.qsize() >= self.flush_rows:
            self._due.set()

    def snapshot(self) -> LogCounts:
        with self._lock:
            return LogCounts(self.counts.written, self.counts.dropped, self.counts.failed, self._rows.qsize())

    def close(self, timeout: float = 60.0) -> LogCounts:
        """Write what is queued and stop the writer."""
        self._stop.set()
        self._due.set()
        self._writer.join(timeout)
        return self.snapshot()

    def _count(self, outcome: str, rows: int) -> None:
        with self._lock:
            setattr(self.counts, outcome, getattr(self.counts, outcome) + rows)
        if self.on_write:
            self.on_write(outcome, rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._due.wait(self.flush_seconds)
            self._due.clear()
            self._flush()
        self._flush()

    def _flush(self) -> None:
        """Write the queued rows, ``flush_rows`` per commit; rows stay on the bounded queue until then."""
        while True:
            batch: list[dict[str, Any]] = []
            while len(batch) < self.flush_rows:
                try:
                    batch.append(self._rows.get_nowait())
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            if len(batch) < self.flush_rows:
                return

    def _write(self, rows: list[dict[str, Any]]) -> None:
        try:
            self._store = self._store or store.LanceStore(self.uri)
            self._store.append(store.INFERENCE_LOG, store.INFERENCE_LOG_SCHEMA, pa.Table.from_pylist(rows, store.INFERENCE_LOG_SCHEMA))
        except Exception as error:  # serving goes on; the rows are counted as failed
            self._store = None
            self._count("failed", len(rows))
            self.warn(f"inference log: {len(rows)} row(s) not written: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
            return
        self._count("written", len(rows))
