"""Micro-batching: the texts of concurrent requests go through the model in one call.

Request threads never run the model. torch's CPU kernels run on an OpenMP thread team per calling
thread; two request threads calling the model at once start two teams that spin against each other
on the same cores, and on two cores each request then took about ten times longer. So request
threads hand their texts to one worker thread, which takes every job already waiting (and, with a
``window``, those arriving within it), runs the model once on the union (each distinct text once)
and hands every caller its rows. Batches form by themselves while the model is busy.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

Encode = Callable[[list[str]], np.ndarray]


@dataclass
class _Job:
    encode: Encode
    texts: list[str]
    result: Future = field(default_factory=Future)


class MicroBatcher:
    """One worker thread that runs every ``encode`` it is handed, batching jobs that share one."""

    def __init__(self, window_seconds: float, max_texts: int, on_batch: Callable[[int], None] | None = None) -> None:
        self.window, self.max_texts, self.on_batch = window_seconds, max_texts, on_batch
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="llmops-embed-batcher", daemon=True)
        self._worker.start()

    def wrap(self, encode: Encode) -> Encode:
        """``encode``, run on the worker together with other callers' texts."""
        return lambda texts: self.encode(encode, texts)

    def encode(self, encode: Encode, texts: list[str]) -> np.ndarray:
        if not texts:
            return encode(texts)
        job = _Job(encode, list(texts))
        self._jobs.put(job)
        return job.result.result()

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join(timeout=30)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and those arriving within the window, up to ``max_texts`` texts; and whether to stop."""
        jobs, texts = [first], len(first.texts)
        deadline = time.monotonic() + self.window
        while texts < self.max_texts:
            left = deadline - time.monotonic()
            try:
                job = self._jobs.get(timeout=left) if left > 0 else self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            texts += len(job.texts)
        return jobs, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._jobs.get()
            if first is None:
                break
            jobs, stop = self._collect(first)
            groups: dict[int, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(id(job.encode), []).append(job)
            for group in groups.values():
                self._encode_group(group)

    def _encode_group(self, jobs: list[_Job]) -> None:
        distinct = list(dict.fromkeys(text for job in jobs for text in job.texts))
        try:
            vectors = jobs[0].encode(distinct)
        except BaseException as error:  # every waiting caller gets the model's error
            for job in jobs:
                job.result.set_exception(error)
            return
        if self.on_batch:
            self.on_batch(len(distinct))
        row = {text: position for position, text in enumerate(distinct)}
        for job in jobs:
            picked = [row[text] for text in job.texts]
            job.result.set_result(vectors[picked] if isinstance(vectors, np.ndarray) else [vectors[i] for i in picked])
