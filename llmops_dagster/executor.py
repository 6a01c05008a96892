"""The executor of every run the daemon or the UI launches: Dagster's in-process executor, behind the
environment's lock.

``llmops run`` and ``llmops tick`` run a job in their own process, outside the run queue. They take
their environment's lock exclusively (``cli.instance.running_alone``), then refuse if a run of the
environment is in progress in the instance. Between that check and the moment their own run is
recorded as started, the daemon could start a queued run of the same environment, and both would
write the same tables. So a launched run takes the same lock, shared, before its first step: while
an ``llmops`` process holds it, the run waits (and says so in its log), and while runs hold it, an
``llmops`` process is refused at once. The lock is the operating system's (``flock``): it goes with
the process that holds it, so a killed process never leaves an environment locked.

Only runs tagged with an environment (``ENV_TAG``) take it: an endpoint redeploy runs in the
operator's lane and does not wait behind a long ``llmops run``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from dagster._core.definitions.executor_definition import IN_PROC_CONFIG, _core_in_process_executor_creation
from dagster._core.errors import raise_execution_interrupts
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.executor.in_process import InProcessExecutor

from llmops_dagster.tags import ENV_TAG

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dagster._core.execution.context.system import PlanOrchestrationContext
    from dagster._core.execution.plan.plan import ExecutionPlan


def lock_path(home: str | Path, env: str) -> Path:
    """The file that ``llmops`` processes and launched runs of ``env`` lock, beside the instance's dagster.yaml."""
    return Path(home) / f"llmops-{env}.lock"


class EnvironmentLockedExecutor(InProcessExecutor):
    """``InProcessExecutor`` that holds its run's environment lock, shared, while the steps run."""

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        env = plan_context.dagster_run.tags.get(ENV_TAG)
        instance = plan_context.instance
        if env is None or instance.is_ephemeral:  # no shared instance: nothing else can run this environment
            yield from super().execute(plan_context, execution_plan)
            return
        import fcntl

        path = lock_path(instance.root_directory, env)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            held, unlockable = False, None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
            except OSError as error:  # a filesystem without flock (some network and FUSE mounts)
                if error.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK):
                    raise
                unlockable = os.strerror(error.errno)
            if unlockable:  # filelock, on the CLI's side, falls back to a marker file there
                message = f"cannot lock {path} ({unlockable}): this run does not wait for llmops processes"
                yield DagsterEvent.engine_event(plan_context, message, EngineEventData())
            if held:
                message = f"waiting for the llmops process that holds {path} to end its job in environment '{env}'"
                yield DagsterEvent.engine_event(plan_context, message, EngineEventData())
                with raise_execution_interrupts():  # terminating the run ends the wait, not only its first step
                    fcntl.flock(descriptor, fcntl.LOCK_SH)
            yield from super().execute(plan_context, execution_plan)
        finally:
            os.close(descriptor)  # releases the lock


@dg.executor(name="in_process_environment_locked", config_schema=IN_PROC_CONFIG)
def environment_locked_executor(init_context: dg.InitExecutorContext) -> EnvironmentLockedExecutor:
    """``in_process_executor``, with the same config, behind the environment's lock."""
    base = _core_in_process_executor_creation(init_context.executor_config)
    return EnvironmentLockedExecutor(base.retries, base.step_dependency_config, base.marker_to_close)
