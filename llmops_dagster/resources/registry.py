"""The MLflow side: the environment's tracking store and registry, the environment it promotes from,
and the MLflow run of each Dagster run."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import dagster as dg

from llmops_dagster.resources.section import SettingsSection
from llmops_dagster.tags import ENV_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from llmops_dagster.settings import MlflowSettings


class RegistryResource(dg.ConfigurableResource):
    """The environment's MLflow tracking store and model registry, and its registered model name
    (``mlflow`` settings: ``MlflowSettings``).

    Credentials are read by MLflow from the environment (DATABRICKS_HOST/TOKEN,
    MLFLOW_TRACKING_USERNAME/PASSWORD); they are never part of this configuration.
    """

    mlflow: SettingsSection

    def settings(self) -> MlflowSettings:
        from llmops_dagster.settings import MlflowSettings

        return self.mlflow.to(MlflowSettings)

    @property
    def registered_model(self) -> str:
        return self.settings().registered_model

    @property
    def experiment(self) -> str:
        return self.settings().experiment

    def client(self) -> MlflowClient:
        from llmops_dagster.core import registry

        settings = self.settings()
        return registry.configure(settings.tracking_uri, settings.registry_uri)

    def ensure_experiment(self) -> str:
        """The experiment, created with its artifact location; only runs that log need it."""
        from llmops_dagster.core import registry

        settings = self.settings()
        return registry.ensure_experiment(self.client(), settings.experiment, settings.artifact_location)


class UpstreamRegistryResource(dg.ConfigurableResource):
    """The environment this one promotes from (staging ← test, prod ← staging), in the same registry."""

    env: str
    registered_model: str


def mlflow_run_resource(registry: RegistryResource, env: str) -> dg.ResourceDefinition:
    """dagster-mlflow's ``mlflow_tracking``: one MLflow run per Dagster run, tagged ``dagster_run_id``.

    Where the package falls short, this wrapper fills in:
    - it creates the experiment with the configured artifact location first (``mlflow_tracking``
      would create it under ./mlruns of whatever the working directory is);
    - it sets the registry URI, which ``mlflow_tracking`` leaves at its default;
    - it adds the environment, job and Dagster run URL as tags;
    - it ends the MLflow run when the Dagster run's resources are torn down. The
      ``end_mlflow_on_run_finished`` hook only ends it after the job's last node in topological
      order, and with asset checks and subset selections that node often does not run, which
      left MLflow runs RUNNING forever.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dagster_mlflow import mlflow_tracking

    def start(context: dg.InitResourceContext):
        import mlflow
        from dagster_mlflow.resources import MlFlow

        registry.ensure_experiment()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MlFlow is marked beta
            tracker = MlFlow(context)
        # MlFlow leaves its mlflow_run_id empty when it starts a new run, so note the run it made active.
        ours = mlflow.active_run().info.run_id
        mlflow.set_tags({ENV_TAG: env, "dagster_job": context.dagster_run.job_name})
        try:
            yield tracker
        finally:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == ours:
                mlflow.end_run()

    definition = dg.ResourceDefinition(
        resource_fn=start,
        config_schema=mlflow_tracking.config_schema,
        description="MLflow run for this Dagster run (dagster-mlflow mlflow_tracking)",
    )
    return definition.configured(
        {"experiment_name": registry.experiment, "mlflow_tracking_uri": registry.settings().tracking_uri, "extra_tags": {ENV_TAG: env}}
    )
