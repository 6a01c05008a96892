"""The MLflow registry as the contract between runs and environments.

Each blocking check writes its verdict to the model version as a tag (``check_<name>``), and
``validation_status`` is derived from all of them: FAILED as soon as one fails, PASSED only when
every required check has passed, PENDING otherwise. A promotion sensor reads these tags; it never
has to trust a run's status, because a failed check does not fail a run.

Tag keys on versions and registered models are ones the ``databricks-uc`` registry accepts: letters,
digits and underscores (Unity Catalog refuses ``. , - = / :`` in a key), and no more than
``UC_TAG_LIMIT`` on one object. Keys written before this scheme (``check.<name>``, ``metric.<key>``,
``llmops.content_digest``, ...) are read as their current spelling by ``current_tags``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

VALIDATION_STATUS = "validation_status"
PASSED, FAILED, PENDING = "PASSED", "FAILED", "PENDING"
CHECK_TAG_PREFIX = "check_"
METRIC_TAG_PREFIX = "metric_"
UC_TAG_LIMIT = 50  # tags Unity Catalog keeps on one registered model or model version
UC_TAG_VALUE_CHARS = 1000  # and the longest value it takes
DAGSTER_RUN_TAG = "dagster_run_id"
CHALLENGER, CHAMPION = "challenger", "champion"


def tag_key(*parts: str) -> str:
    """A tag key Unity Catalog accepts: the parts joined by underscores, any other character made one."""
    return re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))


def current_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` under their current keys: one written before the Unity Catalog scheme (``check.x``)
    is read as its current spelling (``check_x``), and the current key wins where both are there."""
    older = {tag_key(key): value for key, value in tags.items() if tag_key(key) != key}
    return {**older, **{key: value for key, value in tags.items() if tag_key(key) == key}}


def configure(tracking_uri: str, registry_uri: str | None) -> MlflowClient:
    import os

    # Progress bars are noise in run logs and CLI output; MLflow reads this at call time.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    import mlflow

    # Store migrations and registration chatter at INFO would break the CLI's one-line output.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri or tracking_uri)
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """Create the experiment with its artifact location (MLflow's default would be ./mlruns of the cwd)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:
        # Another process created it between the lookup and the create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def serving_version(client: MlflowClient, name: str) -> tuple[str, ModelVersion] | None:
    """(alias, version) of the model that answers: the champion, or the challenger while there is none."""
    for alias in (CHAMPION, CHALLENGER):
        version = version_by_alias(client, name, alias)
        if version is not None:
            return alias, version
    return None


def failed_checks(tags: Mapping[str, str]) -> list[str]:
    """Names of the checks whose verdict tag on a version is FAILED."""
    tags = current_tags(tags)
    return sorted(k.removeprefix(CHECK_TAG_PREFIX) for k, v in tags.items() if k.startswith(CHECK_TAG_PREFIX) and v == FAILED)


def recorded_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """The evaluation metrics recorded on a version."""
    tags = current_tags(tags)
    return {k.removeprefix(METRIC_TAG_PREFIX): float(v) for k, v in tags.items() if k.startswith(METRIC_TAG_PREFIX)}


def find_version(client: MlflowClient, name: str, **tags: str) -> ModelVersion | None:
    """The newest version of ``name`` that carries every one of ``tags`` with that value.

    The tags are compared here, not in the search filter: Unity Catalog searches versions by name
    alone and returns them without their tags (``ModelVersionSearch``), so there each version is
    read, newest first, until one matches. Other stores return the tags with the search.
    """
    from mlflow.entities.model_registry import ModelVersionSearch
    from mlflow.exceptions import MlflowException

    found: list[ModelVersion] = []
    token = None
    try:
        while True:
            page = client.search_model_versions(f"name = '{name}'", page_token=token)
            found += page
            token = page.token
            if not token:
                break
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    for version in sorted(found, key=lambda version: int(version.version), reverse=True):
        if isinstance(version, ModelVersionSearch):
            version = client.get_model_version(name, str(version.version))
        carried = current_tags(version.tags)
        if all(carried.get(key) == value for key, value in tags.items()):
            return version
    return None


def validation_status(tags: Mapping[str, str], required: Iterable[str]) -> str:
    tags = current_tags(tags)
    verdicts = [tags.get(tag_key(CHECK_TAG_PREFIX + name)) for name in required]
    if FAILED in verdicts:
        return FAILED
    if all(verdict == PASSED for verdict in verdicts):
        return PASSED
    return PENDING


def record_check(
    client: MlflowClient,
    name: str,
    version: str,
    check: str,
    passed: bool,
    required: Iterable[str],
    dagster_run_id: str,
    metrics: dict[str, float] | None = None,
) -> str:
    """Write one check's verdict (and any metrics) to the version; returns the new validation_status."""
    client.set_model_version_tag(name, version, tag_key(CHECK_TAG_PREFIX + check), PASSED if passed else FAILED)
    client.set_model_version_tag(name, version, tag_key(CHECK_TAG_PREFIX + check, DAGSTER_RUN_TAG), dagster_run_id)
    for key, value in (metrics or {}).items():
        client.set_model_version_tag(name, version, tag_key(METRIC_TAG_PREFIX + key), f"{value:.4f}")
    tags = client.get_model_version(name, version).tags
    status = validation_status(tags, required)
    client.set_model_version_tag(name, version, VALIDATION_STATUS, status)
    client.set_model_version_tag(name, version, DAGSTER_RUN_TAG, dagster_run_id)
    return status


def error_line(error: Exception) -> str:
    """A registry error in one line: MLflow's own message, or the type and first line of what an
    unreachable store raised (requests, sqlalchemy), never a traceback or a request dump."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return (error.message.splitlines() or [type(error).__name__])[0]
    first_line = (str(error).splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first_line}"


TRAINING_WINNER_TAG = "llmops.embedding_model.winner"  # on the MLflow run that trained: base | trained
TRAINING_ADAPTER_TAG = "llmops.embedding_model.has_adapter"  # ... and whether it logged adapter.npy


def tagged_run(client: MlflowClient, experiment: str, run_id: str | None, tag: str) -> Run | None:
    """MLflow run ``run_id`` when it carries ``tag``, else the newest run of the experiment that
    does; None when no run does."""
    run = client.get_run(run_id) if run_id else None
    if run is not None and tag in run.data.tags:
        return run
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{tag}` LIKE '%'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def training_record(client: MlflowClient, experiment: str, active_run_id: str | None) -> dict[str, Any] | None:
    """What the embedding model's training left in MLflow: this Dagster run's own MLflow run when it
    trained, else the newest run of the experiment that did. None when nothing was trained yet."""
    run = tagged_run(client, experiment, active_run_id, TRAINING_WINNER_TAG)
    if run is None:
        return None
    return {
        "winner": run.data.tags[TRAINING_WINNER_TAG],
        "has_adapter": run.data.tags.get(TRAINING_ADAPTER_TAG) == "true",
        "artifacts": f"runs:/{run.info.run_id}/embedding_model",
        "mlflow_run_id": run.info.run_id,
    }
