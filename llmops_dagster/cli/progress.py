"""The progress display of an in-process run: each step, its checks and its time, as they happen."""

from __future__ import annotations

import sys
import threading
import time


def check_steps(job) -> frozenset[str]:
    """The job's steps that only run asset checks: their verdict is the news, not their start and end."""
    assets_defs = job.asset_layer.asset_graph.assets_defs
    return frozenset(a.node_def.name for a in assets_defs if a.check_keys and not a.keys and a.is_executable)


class Progress(threading.Thread):
    """Prints step starts, finishes, our own log lines and check verdicts while a run executes.
    A step in ``quiet`` (a check-only step) shows its verdicts and a failure, not its start and end."""

    def __init__(self, instance, run_id: str, stream=sys.stderr, quiet: frozenset[str] = frozenset()) -> None:
        super().__init__(daemon=True)
        self.instance, self.run_id, self.stream, self.quiet = instance, run_id, stream, quiet
        self.done = threading.Event()
        self.seen = 0
        self.started: dict[str, float] = {}

    def run(self) -> None:
        while not self.done.is_set():
            self.flush()
            self.done.wait(0.3)
        self.flush()

    def flush(self) -> None:
        records = self.instance.all_logs(self.run_id)
        for record in records[self.seen :]:
            self._show(record)
        self.seen = len(records)

    def _show(self, record) -> None:
        event = record.dagster_event
        step = record.step_key or ""
        if event is None:
            if record.user_message and record.level >= 20 and step:
                print(f"    {step}: {record.user_message}", file=self.stream)
            return
        kind = event.event_type_value
        if step in self.quiet and kind in ("STEP_START", "STEP_SUCCESS"):
            return
        if kind == "STEP_START":
            self.started[step] = time.monotonic()
            print(f"  ▶ {step}", file=self.stream)
        elif kind == "STEP_SUCCESS":
            print(f"  ✔ {step} ({time.monotonic() - self.started.get(step, time.monotonic()):.1f}s)", file=self.stream)
        elif kind == "STEP_SKIPPED":
            print(f"  – {step} skipped: an input it needs was not produced", file=self.stream)
        elif kind == "STEP_FAILURE":
            error = event.step_failure_data.error
            while error.cause is not None:  # the innermost error says what went wrong, not the wrapper
                error = error.cause
            print(f"  ✘ {step}: {error.message.strip()}", file=self.stream)
        elif kind == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            mark = "✔" if data.passed else "✘"
            print(f"    {mark} check {data.asset_key.path[-1]}/{data.check_name}: {data.description or ''}", file=self.stream)
