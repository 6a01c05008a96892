"""A launched run and an `llmops` process of the same environment never run together: the run takes
the environment's lock shared before its first step (llmops_dagster/executor.py), the process takes
it exclusively (cli.instance.running_alone). Real runs on a persistent instance, and the lock held
by another process that is then killed."""

import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from filelock import FileLock

from llmops_dagster.executor import environment_locked_executor, lock_path
from llmops_dagster.tags import ENV_TAG

from helpers import lock_held_elsewhere, wait_for


@dg.op(config_schema={"go": str})
def wait_for_go(context: dg.OpExecutionContext) -> None:
    """Ends once the file ``go`` names exists: the test decides how long the run holds its lock."""
    go = Path(context.op_config["go"])
    deadline = time.monotonic() + 120
    while not go.exists():
        assert time.monotonic() < deadline, f"{go} never appeared"
        time.sleep(0.05)


@dg.job(executor_def=environment_locked_executor)
def locked_job() -> None:
    wait_for_go()


def start(instance: dg.DagsterInstance, go: Path, tags: dict[str, str]) -> tuple[threading.Thread, dict]:
    """``locked_job`` executed as a launched run is (``execute_job``: the job's own executor), in a thread."""
    outcome: dict = {}

    def run() -> None:
        result = dg.execute_job(dg.reconstructable(locked_job), instance, run_config={"ops": {"wait_for_go": {"config": {"go": str(go)}}}}, tags=tags)
        outcome["success"] = result.success

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def events(instance: dg.DagsterInstance, kind: dg.DagsterEventType) -> list:
    return [record.event_log_entry for record in instance.get_event_records(dg.EventRecordsFilter(event_type=kind))]


@pytest.fixture
def instance(tmp_path: Path):  # noqa: ANN201
    home = tmp_path / "dagster"
    home.mkdir()
    with dg.DagsterInstance.local_temp(str(home)) as persistent:
        yield persistent


def test_a_launched_run_waits_while_an_llmops_process_holds_its_environment(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    with lock_held_elsewhere(lock_path(instance.root_directory, "test")):
        go = tmp_path / "go"
        go.touch()  # the op itself would end at once
        thread, outcome = start(instance, go, {ENV_TAG: "test"})

        def waiting() -> bool:
            said = [entry.message or "" for entry in events(instance, dg.DagsterEventType.ENGINE_EVENT)]
            return any("waiting for the llmops process that holds" in message for message in said)

        wait_for(waiting, 60, "the run to say it waits for the lock", every=0.05)
        time.sleep(1)
        assert thread.is_alive() and not events(instance, dg.DagsterEventType.STEP_START), "a step started beside the llmops process"
    thread.join(60)
    assert outcome == {"success": True}
    assert events(instance, dg.DagsterEventType.STEP_SUCCESS)


def test_an_llmops_process_is_refused_while_a_launched_run_holds_its_environment(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    from llmops_dagster.cli.common import UserError
    from llmops_dagster.cli.instance import running_alone

    go = tmp_path / "go"
    thread, outcome = start(instance, go, {ENV_TAG: "test"})
    wait_for(lambda: events(instance, dg.DagsterEventType.STEP_START), 60, "the run to start its step", every=0.05)
    [run] = instance.get_runs()
    refusal = f"run {run.run_id} is running a job in environment 'test' \\(it holds .*llmops-test.lock\\); try again when it ends"
    with pytest.raises(UserError, match=refusal), running_alone(instance, "test"):
        pass
    assert FileLock(str(lock_path(instance.root_directory, "staging")), timeout=0).acquire(), "another environment is not held"
    go.touch()
    thread.join(60)
    assert outcome == {"success": True}
    lock = FileLock(str(lock_path(instance.root_directory, "test")), timeout=0)
    lock.acquire()  # the run ended: free again
    lock.release()


def test_a_run_of_no_environment_does_not_wait(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    """An endpoint redeploy (the operator's lane) or another code location's run takes no lock."""
    lock = FileLock(str(lock_path(instance.root_directory, "test")), timeout=0)
    lock.acquire()
    try:
        go = tmp_path / "go"
        go.touch()
        thread, outcome = start(instance, go, {})
        thread.join(60)
        assert outcome == {"success": True}
    finally:
        lock.release()


def test_a_filesystem_without_flock_runs_the_job_and_says_it_did_not_lock(instance: dg.DagsterInstance, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import errno
    import fcntl

    def no_flock(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    go = tmp_path / "go"
    go.touch()
    thread, outcome = start(instance, go, {ENV_TAG: "test"})
    thread.join(60)
    assert outcome == {"success": True}
    said = [entry.message or "" for entry in events(instance, dg.DagsterEventType.ENGINE_EVENT)]
    assert any("(Function not implemented): this run does not wait for llmops processes" in message for message in said)
