"""Dagster Pipes entry points: the heavy steps as scripts that run outside the Dagster process.

Each module is a ``main()`` (a ``[project.scripts]`` entry point named ``llmops-pipes-<step>``,
see ``core.bundle.PIPES_ENTRY_POINTS``) that takes ``--env``, calls the same ``core`` functions as
the in-process asset, and reports the materialization back through Pipes. Locally it runs under
``PipesSubprocessClient``; on Databricks as a wheel task under dagster-databricks' clients
(``resources.compute``).
"""

# The extra that carries the Dagster run's MLflow run into a step that logs to MLflow.
MLFLOW_RUN_EXTRA = "mlflow_run_id"
