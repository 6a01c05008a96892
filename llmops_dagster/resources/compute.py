"""Where the heavy steps run as Dagster Pipes processes (``compute`` setting).

``local``: a subprocess (``python -m llmops_dagster.pipes.<step> --env ENV``) under
``dg.PipesSubprocessClient``. ``databricks``: a one-off job run of the wheel's entry point
(``llmops-pipes-<step>``) under dagster-databricks' ``PipesDatabricksServerlessClient``, or
``PipesDatabricksClient`` when ``databricks.cluster`` describes a classic cluster. Context and
messages go through the environment's Unity Catalog volume in both cases: some workspaces disable
the DBFS root.

Credentials come from the variables ``databricks.host_env`` / ``databricks.token_env`` name (read
through ``dg.EnvVar``) or from a ``~/.databrickscfg`` profile. They are checked once, before
anything is submitted, and never appear in logs, metadata or errors.

Each submission is named after the environment, step and try (``run_name``). A Dagster worker that
is killed does not cancel the run it followed, so before a step submits, the active runs of the same
step and environment that an ended try left are cancelled and logged (``cancel_left_runs``).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dagster as dg

from llmops_dagster.core.bundle import PRODUCTION_TARGETS, WHEEL_PACKAGE, JobCompute, pipes_entry_point, pipes_module

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

    from llmops_dagster.settings import EnvSettings

TASK_KEY_PREFIX = "llmops"
# Tries of a step after the workspace answered 500 or 504 while following its run.
TRANSIENT_RETRIES = 2
ENVIRONMENT_KEY = "default"


class DatabricksCredentialsError(dg.Failure):
    """The workspace cannot be reached with the configured credentials; raised before any submission."""


class PipesComputeResource(dg.ConfigurableResource):
    """Runs a Pipes entry point of this package for one environment, where ``compute`` says."""

    env: str
    compute: str = "local"
    # Databricks: the NAMES of the variables that hold the credentials, never their values.
    host_env: str = "DATABRICKS_HOST"
    token_env: str = "DATABRICKS_TOKEN"
    profile: str | None = None
    volume_path: str | None = None  # /Volumes/catalog/schema/volume: Pipes context and messages
    wheel: str | None = None  # the wheel the task installs; default: <volume_path>/wheels/<this version's wheel>
    environment_version: str = "2"
    spark_version: str | None = None  # with node_type_id: a classic job cluster instead of serverless
    node_type_id: str | None = None
    num_workers: int = 1
    timeout_seconds: int = JobCompute.timeout_seconds
    poll_interval_seconds: float = 5.0
    transient_wait_seconds: float = 30.0  # before the step's next try, after the workspace answered 500 or 504
    # Production targets: the service principal the bundle's jobs run as (databricks.service_principal).
    # Runs Dagster submits run as it too, not as whoever owns the token, so that they may write
    # where the bundle's jobs write (the deployer's model, the Pipes volume).
    run_as_service_principal: str | None = None
    message_interval_seconds: float = 10.0

    @property
    def on_databricks(self) -> bool:
        return self.compute == "databricks"

    @property
    def serverless(self) -> bool:
        return self.node_type_id is None

    # ---- local -------------------------------------------------------------------------------

    def command(self, step: str) -> list[str]:
        return [sys.executable, "-m", pipes_module(step), "--env", self.env]

    # ---- Databricks --------------------------------------------------------------------------

    def wheel_path(self) -> str:
        if self.wheel:
            return self.wheel
        from importlib.metadata import version

        return f"{self.volume_path}/wheels/{WHEEL_PACKAGE}-{version('llmops-dagster')}-py3-none-any.whl"

    def task(self, step: str) -> dict[str, Any]:
        """The submitted task: the wheel's entry point with ``--env``, on serverless or a new cluster."""
        task: dict[str, Any] = {
            "task_key": f"{TASK_KEY_PREFIX}_{step}",
            "python_wheel_task": {"package_name": WHEEL_PACKAGE, "entry_point": pipes_entry_point(step), "parameters": ["--env", self.env]},
        }
        if self.serverless:
            task["environment_key"] = ENVIRONMENT_KEY
        else:
            task["new_cluster"] = self.job_compute().new_cluster()
            task["libraries"] = [{"whl": self.wheel_path()}]
        return task

    def job_compute(self) -> JobCompute:
        return JobCompute(self.environment_version, self.spark_version, self.node_type_id, self.num_workers, self.timeout_seconds)

    def run_name(self, step: str, attempt: str = "") -> str:
        """The submitted run's name; without ``attempt``, the start every try of the step shares."""
        return f"llmops {self.env} {step} (" + (f"try {attempt})" if attempt else "")

    def submit_args(self, step: str, attempt: str) -> dict[str, Any]:
        """``attempt`` names this try of the step (Dagster run id and retry number). It is the
        idempotency token: a submission repeated after a lost reply, or by a step restarted within
        the same try, gets the run already submitted instead of a second run writing beside it."""
        from databricks.sdk.service import compute, jobs

        token = hashlib.sha256(f"{self.env}:{step}:{attempt}".encode()).hexdigest()[:64]
        args: dict[str, Any] = {"run_name": self.run_name(step, attempt), "idempotency_token": token, "timeout_seconds": self.timeout_seconds}
        if self.run_as_service_principal:
            args["run_as"] = jobs.JobRunAs(service_principal_name=self.run_as_service_principal)
        if self.serverless:
            spec = compute.Environment(environment_version=self.environment_version, dependencies=[self.wheel_path()])
            args["environments"] = [jobs.JobEnvironment(environment_key=ENVIRONMENT_KEY, spec=spec)]
        return args

    def workspace_client(self) -> WorkspaceClient:
        """A client whose credentials were checked against the workspace (one call: who am I).

        Every failure is one ``DatabricksCredentialsError`` that names the variables or profile to
        fix, never their values, and nothing has been submitted when it is raised.
        """
        from databricks.sdk import WorkspaceClient

        where = f"profile '{self.profile}'" if self.profile else f"{self.host_env} and {self.token_env}"
        if self.profile:
            kwargs: dict[str, Any] = {"profile": self.profile}
        else:
            host = dg.EnvVar(self.host_env).get_value()
            token = dg.EnvVar(self.token_env).get_value()
            missing = [name for name, value in ((self.host_env, host), (self.token_env, token)) if not value]
            if missing:
                raise DatabricksCredentialsError(
                    f"environment '{self.env}' runs its steps on Databricks (compute: databricks), but "
                    f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; set {where}, "
                    f"or databricks.profile in environments.yaml. Nothing was submitted."
                )
            kwargs = {"host": host, "token": token, "auth_type": "pat"}
        from databricks.sdk.errors import PermissionDenied, Unauthenticated

        try:
            client = WorkspaceClient(**kwargs)
            client.current_user.me()
        except (Unauthenticated, PermissionDenied) as error:
            reason = _without_secrets(f"{type(error).__name__}: {error}", kwargs)
            raise DatabricksCredentialsError(
                f"environment '{self.env}': the Databricks workspace refused the credentials from {where} ({reason}). "
                f"Nothing was submitted."
            ) from None
        except Exception as error:  # noqa: BLE001 - a workspace that is down, unreachable or misnamed: not the credentials' fault
            reason = _without_secrets(f"{type(error).__name__}: {error}", kwargs)
            raise DatabricksCredentialsError(
                f"environment '{self.env}': the Databricks workspace named by {where} did not answer who we are ({reason}); "
                f"check that it is up and reachable from here. Nothing was submitted."
            ) from None
        return client

    def pipes_client(self, client: WorkspaceClient) -> dg.PipesClient:
        from dagster_databricks.pipes import (
            PipesDatabricksClient,
            PipesDatabricksServerlessClient,
            PipesUnityCatalogVolumesContextInjector,
            PipesUnityCatalogVolumesMessageReader,
        )

        if not self.volume_path:
            raise dg.Failure(f"environment '{self.env}': no Unity Catalog volume for Pipes messages (databricks.volume)")
        injector = PipesUnityCatalogVolumesContextInjector(client=client, volume_path=self.volume_path)
        reader = PipesUnityCatalogVolumesMessageReader(client=client, volume_path=self.volume_path, interval=self.message_interval_seconds)
        if self.serverless:
            return PipesDatabricksServerlessClient(
                client, self.volume_path, context_injector=injector, message_reader=reader, poll_interval_seconds=self.poll_interval_seconds
            )
        return PipesDatabricksClient(client, context_injector=injector, message_reader=reader, poll_interval_seconds=self.poll_interval_seconds)

    # ---- both --------------------------------------------------------------------------------

    def run(
        self, context: dg.AssetExecutionContext, step: str, extras: Mapping[str, Any] | None = None
    ) -> dg.PipesClientCompletedInvocation:
        """Run ``step`` for this environment and return what it reported."""
        if not self.on_databricks:
            context.log.info(f"running {pipes_module(step)} for {self.env} in a subprocess (Dagster Pipes)")
            return dg.PipesSubprocessClient().run(context=context, command=self.command(step), extras=dict(extras or {}))
        from databricks.sdk.service import jobs

        client = self.workspace_client()
        kind = "serverless" if self.serverless else f"a new {self.node_type_id} cluster"
        context.log.info(f"submitting {pipes_entry_point(step)} for {self.env} to Databricks ({kind}), messages via {self.volume_path}")
        from databricks.sdk.errors import DeadlineExceeded, InternalError

        attempt = f"{context.run_id}:{context.retry_number}"
        self.cancel_left_runs(client, context, step)
        task, submit_args = jobs.SubmitTask.from_dict(self.task(step)), self.submit_args(step, attempt)
        try:
            done = self.pipes_client(client).run(context=context, extras=dict(extras or {}), task=task, submit_args=submit_args)
        except (InternalError, DeadlineExceeded) as error:
            # A 500 or 504 while the run was followed (the SDK itself retries only 429, 503 and lost
            # connections): the remote run may be fine. The step's next try cancels it as left by an
            # earlier try and submits again, rather than the whole Dagster run failing on one reply.
            context.log.warning(f"the workspace answered {type(error).__name__} while {step} ran: {error}; trying the step again")
            raise dg.RetryRequested(max_retries=TRANSIENT_RETRIES, seconds_to_wait=self.transient_wait_seconds) from error
        self.raise_if_interrupted(client, done)
        return done

    @staticmethod
    def raise_if_interrupted(client: WorkspaceClient, done: dg.PipesClientCompletedInvocation) -> None:
        """dagster-databricks cancels the remote run when the step is interrupted (the Dagster run
        terminated), then returns as if it had succeeded: a caller would go on to its next step
        (``rag_model`` would register after a cancelled evaluation). A run that did not succeed
        is an interruption here, raised again."""
        from databricks.sdk.service import jobs

        run_id = done.metadata.get("Databricks Job Run ID")  # a TextMetadataValue
        state = client.jobs.get_run(int(run_id.value)).state if run_id is not None else None
        if state is not None and state.result_state != jobs.RunResultState.SUCCESS:
            raise dg.DagsterExecutionInterruptedError(f"Databricks run {run_id} ended {state.result_state}: the step was interrupted")

    def cancel_left_runs(self, client: WorkspaceClient, context: dg.AssetExecutionContext, step: str) -> None:
        """Cancel the active Databricks runs of ``step`` in this environment that no Dagster process
        follows any more: an earlier try of this step in this Dagster run, or one from a Dagster run
        this instance holds as finished. A run of a Dagster run that is still going, or that this
        instance does not know (another Dagster home on the same workspace), is left alone with a
        warning, and so is one the workspace will not let us cancel."""
        from databricks.sdk.service import jobs

        ours = re.compile(re.escape(self.run_name(step)) + r"try (?P<run_id>[0-9a-f-]+):(?P<retry>\d+)\)")
        for run in client.jobs.list_runs(active_only=True, run_type=jobs.RunType.SUBMIT_RUN):
            found = ours.fullmatch(run.run_name or "")
            if found is None or (found["run_id"], int(found["retry"])) == (context.run_id, context.retry_number):
                continue
            named = f"Databricks run {run.run_id} ('{run.run_name}', {run.run_page_url or 'no run page'})"
            if found["run_id"] == context.run_id:
                left = int(found["retry"]) < context.retry_number
            else:
                dagster_run = context.instance.get_run_by_id(found["run_id"])
                left = dagster_run is not None and dagster_run.is_finished
            if not left:
                context.log.warning(f"{named} is still active and may be followed by another Dagster process; left running")
                continue
            try:
                client.jobs.cancel_run(run.run_id)
            except Exception as error:  # noqa: BLE001 - the step goes on; the run is named for someone to cancel
                context.log.warning(f"could not cancel {named}, left by an earlier try of this step: {type(error).__name__}: {error}")
                continue
            context.log.warning(f"cancelled {named}: an earlier try of this step left it running, and it has ended in Dagster")


def _without_secrets(text: str, kwargs: Mapping[str, Any]) -> str:
    token = kwargs.get("token")
    text = text.replace(token, "***") if token else text
    return text[:300]


def compute_resource(settings: EnvSettings) -> PipesComputeResource:
    """The environment's compute, from its ``compute`` and ``databricks`` settings."""
    config = settings.databricks
    volume_path = None
    if settings.compute == "databricks":
        from llmops_dagster.core.bundle import BundleEnvironment, target_names

        volume_path = target_names(BundleEnvironment.from_settings(settings)).volume_path
    return PipesComputeResource(
        env=settings.name,
        compute=settings.compute,
        host_env=config.host_env,
        token_env=config.token_env,
        profile=config.profile,
        volume_path=volume_path,
        environment_version=config.cluster.environment_version,
        spark_version=config.cluster.spark_version,
        node_type_id=config.cluster.node_type_id,
        num_workers=config.cluster.num_workers,
        timeout_seconds=config.cluster.timeout_seconds,
        run_as_service_principal=config.service_principal if settings.name in PRODUCTION_TARGETS else None,
    )
