"""The persistent Dagster instance the CLI runs against, and the guard against two runs of one environment."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from llmops_dagster.cli.common import UserError
from llmops_dagster.tags import ENV_TAG, HOST_TAG, PID_TAG

RUN_RETRIES = 2

# Local sqlite storage under DAGSTER_HOME. Queued runs (sensor, UI) of one environment run one at a
# time, so two ingest runs never write the same tables at once; the queue tags the runs launched from
# the asset graph, which no job tags (run_queue.EnvironmentRunQueue).
_HEADER = """# Created by llmops. Local sqlite storage under this folder.
telemetry:
  enabled: false
"""
_QUEUE = """run_coordinator:
  module: llmops_dagster.run_queue
  class: EnvironmentRunQueue
"""
_LIMITS = f"""concurrency:
  runs:
    tag_concurrency_limits:
      - key: "{ENV_TAG}"
        value:
          applyLimitPerUniqueValue: true
        limit: 1
"""
# A run whose worker died (killed, out of memory, its `dagster dev` gone) is run again by the daemon
# from the steps it had not finished, up to twice; a run that failed in an asset or check is not:
# its cause needs new data or a person, and the next sensor tick or `llmops run` starts it again.
_RETRIES = f"""run_retries:
  enabled: true
  max_retries: {RUN_RETRIES}
  retry_on_asset_or_op_failure: false
"""
DAGSTER_YAML = _HEADER + _QUEUE + _LIMITS + _RETRIES
# What earlier versions wrote, word for word: such a file is brought up to date. Any other file,
# an edited copy of one of these included, is the user's and is left as it is.
EARLIER_DAGSTER_YAML = (_HEADER + _LIMITS, _HEADER + _QUEUE + _LIMITS)


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME (default $LLMOPS_HOME/dagster) with its dagster.yaml; shared by `llmops` and `make ui`."""
    from llmops_dagster.settings import llmops_home

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(llmops_home() / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    written = config.read_text() if config.exists() else None
    if written is None or written in EARLIER_DAGSTER_YAML:
        scratch = config.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(DAGSTER_YAML)
        os.replace(scratch, config)  # a daemon reading it at the same time sees one version or the other
    if not (home / "schedules").exists():
        # Create the sqlite storage once, here: a daemon and its code servers starting together on
        # an empty DAGSTER_HOME race to create it and leave two alembic heads behind.
        import dagster as dg

        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.get_runs(limit=1)
            instance.all_instigator_state()
    return home


def dagster_dev(argv: list[str]) -> NoReturn:
    """``make ui``: ``dagster dev`` with these arguments on the project's DAGSTER_HOME, in place of this process.

    A shell without job control starts a background job with SIGINT ignored, and ``dagster dev`` and
    the processes it starts give SIGTERM whatever SIGINT has, so ``kill`` would be ignored as well.
    SIGINT goes back to its default first, so that Ctrl-C and SIGTERM both stop the webserver and daemon.
    Runs that an earlier ``dagster dev`` left in progress when it was killed are marked failed first:
    otherwise they would hold their environments' queues for good. The daemon then runs them again
    from their unfinished steps (``run_retries`` in dagster.yaml).
    """
    import dagster as dg

    home = ensure_dagster_home()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        mark_orphaned_failed(instance)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    dagster = Path(sys.executable).with_name("dagster")
    os.execv(dagster, [str(dagster), "dev", *argv])


def open_instance():
    """The persistent Dagster instance, as the UI sees it."""
    import dagster as dg

    ensure_dagster_home()
    return dg.DagsterInstance.get()


@contextmanager
def running_alone(instance, env: str) -> Iterator[None]:
    """The CLI runs in process, outside the run queue: it runs a job in ``env`` only while no other
    llmops process on this machine does and no launched run holds the environment's lock (taken
    exclusively here, until the job ends; launched runs take it shared: ``executor``), and no run
    of the environment is in progress in the instance (``refuse_if_running``). A run the daemon
    starts after that check waits for the lock, so it never runs beside this job.

    The lock is the operating system's: it goes with the process holding it, so a crash never
    leaves the environment locked.
    """
    from filelock import FileLock, Timeout

    from llmops_dagster.executor import lock_path

    path = lock_path(instance.root_directory, env)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        import dagster as dg

        started = instance.get_runs(dg.RunsFilter(tags={ENV_TAG: env}, statuses=[dg.DagsterRunStatus.STARTED]), limit=1)
        holder = f"run {started[0].run_id}" if started else "another llmops process"  # a launched run holds it shared
        raise UserError(f"{holder} is running a job in environment '{env}' (it holds {path}); try again when it ends") from None
    try:
        refuse_if_running(instance, env)
        yield
    finally:
        lock.release()


def refuse_if_running(instance, env: str) -> None:
    """Refuse while a run of this environment is in progress: one the daemon or the UI started.

    A run whose process is gone (killed, or its machine restarted) is marked failed with the reason
    (``mark_orphaned_failed``), so that a crash never locks the environment. The CLI runs the
    environment itself next, so the daemon is told not to run it again as well.
    """
    for run in mark_orphaned_failed(instance, {ENV_TAG: env}, retry=False):
        raise UserError(f"run {run.run_id} for environment '{env}' is still in progress; try again when it ends")


def mark_orphaned_failed(instance, tags: dict[str, str] | None = None, retry: bool = True) -> list:
    """Mark failed, with the reason, each run in progress whose process is gone; return the others.

    With ``retry``, Dagster's run retries decide whether the daemon runs it again (a run launched
    from a code location, with retries left); without, it gets no retries left.

    A run the CLI started names its host and process in its tags. A run the daemon or the UI
    launched has its run worker's process on its RUN_START event: with the default run launcher and
    the instance in sqlite files under DAGSTER_HOME, those workers ran on this machine. A worker
    killed under a live code server is marked failed by that server; one whose code server went
    with it (``dagster dev`` killed) stays STARTED, and its environment's queue with it, until this
    finds it.
    """
    import dagster as dg
    from dagster._core.storage.tags import MAX_RETRIES_TAG

    if retry:
        start_retry_cursors(instance)
    in_progress = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    live = []
    for run in instance.get_runs(filters=dg.RunsFilter(tags=tags or {}, statuses=in_progress)):
        reason = _orphaned(instance, run)
        if reason is None:
            live.append(run)
            continue
        if not retry:
            # Before the failure is reported: Dagster decides "will retry" from it as it stores the event.
            instance.add_run_tags(run.run_id, {MAX_RETRIES_TAG: "0"})
        instance.report_run_failed(run, message=f"{reason}; marked failed by a later llmops command")
        print(f"llmops: run {run.run_id} was left unfinished ({reason}); marked it failed", file=sys.stderr)
    return live


def start_retry_cursors(instance) -> None:
    """Where the daemon's run-retry consumer has no cursor yet, start it at the latest event now.

    The consumer retries the failures it reads after its cursor, and on its first pass it starts the
    cursor at the latest event, so that enabling retries does not retry every old failure. A home
    whose daemon never made that pass (its first `make ui` killed within seconds) would then skip
    the failures marked here just before the daemon starts. Starting the cursor here first is that
    same first pass, made before those failures are written, so the daemon reads them.
    """
    from dagster._daemon.auto_run_reexecution.event_log_consumer import DAGSTER_EVENT_TYPES, _create_cursor_key

    keys = {_create_cursor_key(event_type) for event_type in DAGSTER_EVENT_TYPES}
    missing = keys - set(instance.daemon_cursor_storage.get_cursor_values(keys))
    if missing:
        latest = str(instance.event_log_storage.get_maximum_record_id() or 0)
        instance.daemon_cursor_storage.set_cursor_values(dict.fromkeys(missing, latest))


def _orphaned(instance, run) -> str | None:
    """Why a run can no longer be running, or None if it may be."""
    import socket

    import dagster as dg

    if HOST_TAG in run.tags or PID_TAG in run.tags:  # started by the CLI
        host, pid = run.tags.get(HOST_TAG), run.tags.get(PID_TAG)
        if host != socket.gethostname() or not (pid or "").isdigit():
            return None  # another machine's: not ours to judge
        return None if _alive(int(pid)) else f"its process {pid} on {host} is gone"
    if run.status != dg.DagsterRunStatus.STARTED or type(instance.run_launcher) is not dg.DefaultRunLauncher:
        return None  # queued or being launched (the daemon's), or a worker in a container or on another machine
    started = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
    pid = started[-1].dagster_event.pid if started else None
    if pid is None or _alive(pid):
        return None
    return f"its run worker, process {pid} on {socket.gethostname()}, is gone"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs. A killed process whose parent went with it stays a zombie until
    init reaps it: `make ui` started again at once found its old run worker so, and left its run
    STARTED. A zombie runs nothing, so it counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, or a zombie, under another user
    try:
        # /proc/<pid>/stat: "pid (command) state ...", and the command may hold spaces and parentheses.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux), or it ended just now: the next check sees it gone
    return state not in ("Z", "X")
