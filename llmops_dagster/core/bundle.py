"""The Databricks asset bundle (``databricks.yml``), generated from the environment declaration.

``environments.yaml`` stays the one source of truth: each declared environment becomes one bundle
target of the same name, and the names that target deploys (the MLflow experiment, the Unity Catalog
registered model, the volume that carries Dagster Pipes messages, the serving endpoint) come from
that environment's settings. The rendering is deterministic, so ``llmops bundle --check`` can
compare the committed file with a fresh one.

Each target carries its own ``resources`` rather than sharing top-level ones through variables:
environments differ in names, catalog and compute, and a target that spells everything out is
what ``databricks bundle deploy -t ENV`` deploys, with no override merging to reason about.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

if typing.TYPE_CHECKING:
    from llmops_dagster.settings import EnvSettings

BUNDLE_NAME = "llmops-dagster"
UNITY_CATALOG_REGISTRY = "databricks-uc"
PRODUCTION_TARGETS = frozenset({"prod"})  # the others deploy with no mode: see _target
SHARED_ROOT = "/Workspace/Shared/.bundle/${bundle.name}/${bundle.target}"
WHEEL_PACKAGE = "llmops_dagster"
WHEEL_FILES = "dist/*.whl"
WHEEL_BUILD = "python -m pip wheel --no-deps --wheel-dir dist ."
TRAINING_STEPS = ("ingest", "train", "evaluate", "register")
INFERENCE_STEPS = ("predict",)
TRAINING_JOB, INFERENCE_JOB = "model_training_job", "batch_inference_job"
EXPERIMENT_KEY, MODEL_KEY, VOLUME_KEY = "rag_experiment", "rag_model", "pipes_volume"
EXPERIMENT_READ_LEVEL = "CAN_READ"
MODEL_READ_PRIVILEGE = "EXECUTE"
HEADER = "# Generated from environments.yaml by `llmops bundle`. Edit environments.yaml and regenerate; `llmops bundle --check` compares.\n"


def pipes_entry_point(step: str) -> str:
    """The wheel entry point (``[project.scripts]`` name) that a job task runs for a Pipes step."""
    return f"llmops-pipes-{step}"


def pipes_module(step: str) -> str:
    return f"llmops_dagster.pipes.{step}"


# What pyproject.toml must declare under [project.scripts] for the wheel tasks to find their code.
PIPES_ENTRY_POINTS = {pipes_entry_point(step): f"{pipes_module(step)}:main" for step in (*TRAINING_STEPS, *INFERENCE_STEPS)}

_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UC_NAME = re.compile(r"^[^.\s/]+$")  # one Unity Catalog name part: no dot, slash or whitespace
_ENDPOINT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_APPLICATION_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SECRET_REFERENCE = re.compile(r"^\{\{secrets/(?P<scope>[^/{}\s]+)/(?P<key>[^/{}\s]+)\}\}$")  # {{secrets/<scope>/<key>}}


def _text(value: Any, setting: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{setting} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class JobCompute:
    """Compute for the bundle's jobs: serverless (an environment holding the wheel) unless
    ``node_type_id`` and ``spark_version`` describe a classic job cluster."""

    environment_version: str = "2"  # serverless environment 2 runs Python 3.11, as this project does
    spark_version: str | None = None
    node_type_id: str | None = None
    num_workers: int = 1
    timeout_seconds: int = 6 * 3600  # Databricks cancels a run, or a job's run, still going after this; 0: never

    @property
    def serverless(self) -> bool:
        return self.node_type_id is None

    def new_cluster(self) -> dict[str, Any]:
        """A classic job cluster in single-user access mode (the job's run-as identity): Unity Catalog
        volumes and models need an access mode, and one created through the API without it has none."""
        return {
            "spark_version": self.spark_version,
            "node_type_id": self.node_type_id,
            "num_workers": self.num_workers,
            "data_security_mode": "SINGLE_USER",
        }

    def __post_init__(self) -> None:
        _text(self.environment_version, "databricks.cluster.environment_version")
        _text(self.spark_version, "databricks.cluster.spark_version", optional=True)
        _text(self.node_type_id, "databricks.cluster.node_type_id", optional=True)
        if (self.spark_version is None) != (self.node_type_id is None):
            missing = "spark_version" if self.spark_version is None else "node_type_id"
            raise ValueError(f"databricks.cluster.{missing} is required for a classic job cluster (leave both unset for serverless)")
        for name in ("num_workers", "timeout_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"databricks.cluster.{name} must be a whole number ≥ 0, got {value!r}")


@dataclass(frozen=True)
class DatabricksConfig:
    """The ``databricks:`` section of an environment: where its jobs, model and Pipes volume live.

    Credentials are never settings: ``host_env`` and ``token_env`` name the variables that hold them.
    ``catalog`` and ``schema`` default to those of a ``catalog.schema.model`` registered-model name.
    """

    host_env: str = "DATABRICKS_HOST"
    token_env: str = "DATABRICKS_TOKEN"
    profile: str | None = None  # a ~/.databrickscfg profile, written to the target's workspace
    catalog: str | None = None
    schema: str | None = None
    volume: str = "pipes"  # Unity Catalog volume for Pipes context and messages
    cluster: JobCompute = field(default_factory=JobCompute)
    serving_endpoint: str = "llmops-{env}"
    serving_workload_size: str = "Small"  # the served entity's size: Small, Medium, Large (or a workspace's custom size)
    serving_scale_to_zero: bool = True  # an idle endpoint scales to zero; the first request after that waits for it
    # Variables the served model reads (the index's object-store credentials, a generator's key), each a
    # Databricks secret reference {{secrets/<scope>/<key>}}, never a value: {"AWS_ACCESS_KEY_ID": "{{secrets/llmops/aws-id"}}.
    serving_environment_vars: Mapping[str, str] = field(default_factory=dict)
    # The same for the job steps (ingest, embed, train, evaluate, register, predict): each step reads
    # them from their secret scopes when it starts on Databricks, serverless included, where a task
    # has no environment variables of its own. The job's identity needs READ on the scope.
    job_environment_vars: Mapping[str, str] = field(default_factory=dict)
    users_group: str = "users"  # workspace group that may read the experiment
    account_users_group: str = "account users"  # account group that may load (EXECUTE) the model
    experiment_root: str = "/Shared"  # Databricks experiments are workspace paths; relative names go here
    service_principal: str | None = None  # production targets run their jobs as it
    # The SQL warehouse that reads the serving endpoint's inference table into inference_log
    # (the inference_table asset); unset: that asset is not defined and monitoring sees only llmops serve.
    warehouse_id: str | None = None
    # The inference table is filled up to an hour late and out of order: each import re-reads this far
    # behind the newest request it already holds (the overlap is deduplicated by request id).
    inference_table_lookback_hours: float = 6.0

    def __post_init__(self) -> None:
        for name in ("host_env", "token_env"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _ENV_VAR.match(value):
                raise ValueError(f"databricks.{name} must name an environment variable, got {value!r}")
        for name in ("catalog", "schema"):
            value = _text(getattr(self, name), f"databricks.{name}", optional=True)
            if value is not None and not _UC_NAME.match(value):
                raise ValueError(f"databricks.{name} must be one Unity Catalog name (no '.', '/' or spaces), got {value!r}")
        if not _UC_NAME.match(_text(self.volume, "databricks.volume")):
            raise ValueError(f"databricks.volume must be one Unity Catalog name (no '.', '/' or spaces), got {self.volume!r}")
        for name in ("users_group", "account_users_group"):
            _text(getattr(self, name), f"databricks.{name}")
        _text(self.profile, "databricks.profile", optional=True)
        principal = _text(self.service_principal, "databricks.service_principal", optional=True)
        if principal is not None and not _APPLICATION_ID.match(principal):
            raise ValueError(
                f"databricks.service_principal must be the service principal's application ID (a UUID), as run_as wants it; got {principal!r}"
            )
        if not _text(self.experiment_root, "databricks.experiment_root").startswith("/"):
            raise ValueError(f"databricks.experiment_root must be an absolute workspace path, got {self.experiment_root!r}")
        _text(self.serving_workload_size, "databricks.serving_workload_size")
        _text(self.warehouse_id, "databricks.warehouse_id", optional=True)
        lookback = self.inference_table_lookback_hours
        if isinstance(lookback, bool) or not isinstance(lookback, int | float) or not 0 <= lookback <= 24 * 30:
            raise ValueError(f"databricks.inference_table_lookback_hours must be a number of hours from 0 to 720, got {lookback!r}")
        if not isinstance(self.serving_scale_to_zero, bool):
            raise ValueError(f"databricks.serving_scale_to_zero must be true or false, got {self.serving_scale_to_zero!r}")
        for setting in ("serving_environment_vars", "job_environment_vars"):
            variables = getattr(self, setting)
            if not isinstance(variables, Mapping):
                raise ValueError(f"databricks.{setting} must be a mapping, got {variables!r}")
            for name, value in variables.items():
                if not isinstance(name, str) or not _ENV_VAR.match(name):
                    raise ValueError(f"databricks.{setting}: {name!r} is not an environment variable name")
                if not isinstance(value, str) or not SECRET_REFERENCE.match(value):
                    raise ValueError(
                        f"databricks.{setting}.{name} must be a secret reference {{{{secrets/<scope>/<key>}}}}, "
                        "not a value: environments.yaml is committed"
                    )
        if not isinstance(self.cluster, JobCompute):
            raise ValueError("databricks.cluster must be a mapping")
        self.endpoint_name("staging")  # validates the pattern

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> DatabricksConfig:
        """Parse the section as it appears in environments.yaml; errors name the setting."""
        if raw is not None and not isinstance(raw, Mapping):
            raise ValueError(f"databricks must be a mapping, got {raw!r}")
        raw = dict(raw or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown databricks setting(s) {unknown}")
        cluster = raw.pop("cluster", None) or {}
        if not isinstance(cluster, Mapping):
            raise ValueError(f"databricks.cluster must be a mapping, got {cluster!r}")
        cluster_fields = {f.name for f in dataclasses.fields(JobCompute)}
        unknown = sorted(set(cluster) - cluster_fields)
        if unknown:
            raise ValueError(f"unknown databricks.cluster setting(s) {unknown}")
        if "environment_version" in cluster and isinstance(cluster["environment_version"], int | float):
            cluster = {**cluster, "environment_version": str(cluster["environment_version"])}
        return cls(cluster=JobCompute(**cluster), **raw)

    def endpoint_name(self, env: str) -> str:
        try:
            name = _text(self.serving_endpoint, "databricks.serving_endpoint").format(env=env)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"databricks.serving_endpoint may only use {{env}}: {error}") from None
        if not _ENDPOINT.match(name):
            raise ValueError(f"databricks.serving_endpoint gives {name!r}: letters, digits, '-' and '_', at most 63 characters")
        return name

    def experiment_path(self, experiment: str) -> str:
        """The workspace path of an experiment: absolute names stay, relative ones go under experiment_root."""
        return experiment if experiment.startswith("/") else f"{self.experiment_root.rstrip('/')}/{experiment}"


@dataclass(frozen=True)
class BundleEnvironment:
    """What the bundle needs from one environment's settings."""

    name: str
    experiment: str
    registered_model: str
    registry_uri: str | None = None
    databricks: DatabricksConfig = field(default_factory=DatabricksConfig)

    @classmethod
    def from_settings(cls, settings: EnvSettings, databricks: DatabricksConfig | None = None) -> BundleEnvironment:
        configured = databricks or settings.databricks  # the environment's `databricks:` section
        return cls(settings.name, settings.mlflow.experiment, settings.mlflow.registered_model, settings.mlflow.registry_uri, configured)


@dataclass(frozen=True)
class TargetNames:
    """The Databricks names one environment deploys."""

    catalog: str
    schema: str
    model: str
    experiment: str
    volume_path: str
    serving_endpoint: str

    @property
    def full_model_name(self) -> str:
        return f"{self.catalog}.{self.schema}.{self.model}"


def target_names(env: BundleEnvironment) -> TargetNames:
    """Resolve the Unity Catalog and workspace names of one environment, refusing what Databricks would."""
    config = env.databricks
    parts = env.registered_model.split(".")
    where = f"environment '{env.name}': mlflow.registered_model '{env.registered_model}'"
    if len(parts) == 3 and all(parts):
        catalog, schema, model = parts
        for name, configured, actual in (("catalog", config.catalog, catalog), ("schema", config.schema, schema)):
            if configured is not None and configured != actual:
                raise ValueError(f"{where} is in {name} '{actual}' but databricks.{name} is '{configured}'")
    elif env.registry_uri == UNITY_CATALOG_REGISTRY:
        raise ValueError(f"{where} must be catalog.schema.model when mlflow.registry_uri is {UNITY_CATALOG_REGISTRY}")
    elif len(parts) == 1 and parts[0] and config.catalog and config.schema:
        catalog, schema, model = config.catalog, config.schema, parts[0]
    else:
        raise ValueError(f"{where} is not catalog.schema.model; name it so, or set databricks.catalog and databricks.schema")
    for part in (catalog, schema, model):
        if not _UC_NAME.match(part):
            raise ValueError(f"{where}: '{part}' is not a Unity Catalog name")
    return TargetNames(
        catalog=catalog,
        schema=schema,
        model=model,
        experiment=config.experiment_path(env.experiment),
        volume_path=f"/Volumes/{catalog}/{schema}/{config.volume}",
        serving_endpoint=config.endpoint_name(env.name),
    )


def _task(step: str, env: str, compute: JobCompute, depends_on: str | None) -> dict[str, Any]:
    task: dict[str, Any] = {"task_key": step}
    if depends_on:
        task["depends_on"] = [{"task_key": depends_on}]
    task["python_wheel_task"] = {"package_name": WHEEL_PACKAGE, "entry_point": pipes_entry_point(step), "parameters": ["--env", env]}
    if compute.serverless:
        task["environment_key"] = "default"
    else:
        task["job_cluster_key"] = "main"
        task["libraries"] = [{"whl": WHEEL_FILES}]
    return task


def _job(title: str, steps: tuple[str, ...], env: str, compute: JobCompute) -> dict[str, Any]:
    job: dict[str, Any] = {
        "name": f"llmops {env} {title}",
        "description": "Dagster Pipes entry points: " + ", ".join(pipes_module(step) for step in steps),
        "max_concurrent_runs": 1,  # two runs would race for the same registered model and alias
        "timeout_seconds": compute.timeout_seconds,
        "tags": {"llmops_env": env},
    }
    if compute.serverless:
        job["environments"] = [
            {"environment_key": "default", "spec": {"environment_version": compute.environment_version, "dependencies": [WHEEL_FILES]}}
        ]
    else:
        job["job_clusters"] = [{"job_cluster_key": "main", "new_cluster": compute.new_cluster()}]
    job["tasks"] = [_task(step, env, compute, steps[i - 1] if i else None) for i, step in enumerate(steps)]
    return job


def _target(env: BundleEnvironment, default: bool) -> dict[str, Any]:
    names = target_names(env)
    config = env.databricks
    production = env.name in PRODUCTION_TARGETS
    # Every environment is shared, so each target is deployed once, under one explicit root. Not
    # development mode: it prefixes every name with the deployer's (dev_<user>_rag_model,
    # "[dev <user>] llmops-test"), so its grants would land on objects the platform never uses.
    # Prod's root is its service principal's (or the deployer's) own folder, which other users
    # cannot write: a folder under /Shared would let anyone replace the wheel prod's jobs run.
    target: dict[str, Any] = {"mode": "production"} if production else {}
    if default:
        target["default"] = True
    workspace: dict[str, Any] = {}
    if config.profile:
        workspace["profile"] = config.profile
    if not production:
        workspace["root_path"] = SHARED_ROOT
    else:
        owner = config.service_principal or "${workspace.current_user.userName}"
        workspace["root_path"] = f"/Workspace/Users/{owner}/.bundle/${{bundle.name}}/${{bundle.target}}"
    target["workspace"] = workspace
    if production and config.service_principal:
        target["run_as"] = {"service_principal_name": config.service_principal}
    target["resources"] = {
        "experiments": {
            EXPERIMENT_KEY: {
                "name": names.experiment,
                "permissions": [{"level": EXPERIMENT_READ_LEVEL, "group_name": config.users_group}],
            }
        },
        "registered_models": {
            MODEL_KEY: {
                "catalog_name": names.catalog,
                "schema_name": names.schema,
                "name": names.model,
                "comment": f"RAG model of the {env.name} environment; aliases champion and challenger move with promotion",
                "grants": [{"principal": config.account_users_group, "privileges": [MODEL_READ_PRIVILEGE]}],
            }
        },
        "volumes": {
            VOLUME_KEY: {
                "catalog_name": names.catalog,
                "schema_name": names.schema,
                "name": config.volume,
                "volume_type": "MANAGED",
                "comment": "Dagster Pipes context and messages",
            }
        },
        "jobs": {
            TRAINING_JOB: _job("model training", TRAINING_STEPS, env.name, config.cluster),
            INFERENCE_JOB: _job("batch inference", INFERENCE_STEPS, env.name, config.cluster),
        },
    }
    return target


def render_bundle(environments: Mapping[str, BundleEnvironment], declared: Iterable[str] | None = None, bundle_name: str = BUNDLE_NAME) -> str:
    """``databricks.yml`` for these environments, one target each, in the given order.

    ``declared`` is the list of environments that the declaration names; a target outside it is
    refused, so the bundle can never deploy an environment that environments.yaml does not know.
    """
    if not environments:
        raise ValueError("no environments to render: declare at least one in environments.yaml")
    known = list(declared) if declared is not None else list(environments)
    for name, env in environments.items():
        if name not in known:
            raise ValueError(f"target '{name}' is not an environment declared in environments.yaml (declared: {', '.join(known)})")
        if env.name != name:
            raise ValueError(f"target '{name}' was given the settings of environment '{env.name}'")
    default = next((name for name in environments if name not in PRODUCTION_TARGETS), None)
    document = {
        "bundle": {"name": bundle_name},
        "artifacts": {"llmops_wheel": {"type": "whl", "path": ".", "build": WHEEL_BUILD}},
        "targets": {name: _target(env, name == default) for name, env in environments.items()},
    }
    return HEADER + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True, width=200)


def declared_environments(declaration: Path) -> list[str]:
    """The environment names under ``environments:`` in the declaration, in file order."""
    if not declaration.is_file():
        raise ValueError(f"environment declaration not found: {declaration}")
    document = yaml.safe_load(declaration.read_text()) or {}
    return list((document.get("environments") or {}).keys())


def bundle_from_settings(declaration: Path, targets: Iterable[str] | None = None) -> str:
    """Render databricks.yml from the real settings of every declared environment (or of ``targets``)."""
    from llmops_dagster.settings import ENVIRONMENTS, load_settings

    # Promotion order (test, staging, prod), whatever order the file lists them in.
    declared = sorted(declared_environments(declaration), key=lambda name: ENVIRONMENTS.index(name) if name in ENVIRONMENTS else len(ENVIRONMENTS))
    chosen = list(targets) if targets is not None else declared
    for name in chosen:
        if name not in declared:
            raise ValueError(f"target '{name}' is not an environment declared in {declaration} (declared: {', '.join(declared)})")
    environments = {name: BundleEnvironment.from_settings(load_settings(name, declaration)) for name in chosen}
    return render_bundle(environments, declared)


# ---- comparing and validating ----------------------------------------------------------------


def _differences(committed: Any, generated: Any, path: str, out: list[str]) -> None:
    where = path or "(top level)"
    if isinstance(committed, dict) and isinstance(generated, dict):
        for key in committed:
            if key not in generated:
                out.append(f"{path}.{key}".lstrip(".") + ": only in the committed file")
        for key in generated:
            if key not in committed:
                out.append(f"{path}.{key}".lstrip(".") + ": missing from the committed file")
            else:
                _differences(committed[key], generated[key], f"{path}.{key}".lstrip("."), out)
    elif isinstance(committed, list) and isinstance(generated, list) and len(committed) == len(generated):
        for index, (left, right) in enumerate(zip(committed, generated, strict=True)):
            _differences(left, right, f"{path}[{index}]", out)
    elif committed != generated:
        out.append(f"{where}: committed {_short(committed)}, generated {_short(generated)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_bundle(path: Path, text: str, limit: int = 50) -> list[str]:
    """Differences between the committed ``databricks.yml`` at ``path`` and freshly rendered ``text``
    (empty when they agree), for ``llmops bundle --check``."""
    if not path.is_file():
        return [f"{path} does not exist: write it with `llmops bundle`"]
    committed_text = path.read_text()
    if committed_text == text:
        return []
    try:
        committed = yaml.safe_load(committed_text)
    except yaml.YAMLError as error:
        return [f"{path} is not valid YAML: {str(error).splitlines()[0]}"]
    differences: list[str] = []
    _differences(committed, yaml.safe_load(text), "", differences)
    if not differences:
        return [f"{path} differs from the generated bundle only in layout or comments: regenerate it with `llmops bundle`"]
    if len(differences) > limit:
        differences = [*differences[:limit], f"... and {len(differences) - limit} more"]
    return differences


def target_resources(document: Mapping[str, Any], target: str) -> dict[str, Any]:
    """The resources one target deploys: the top-level ones with the target's own laid over them."""
    targets = document.get("targets") or {}
    if target not in targets:
        raise ValueError(f"the bundle has no target '{target}' (targets: {', '.join(targets)})")
    merged: dict[str, Any] = {}
    for source in (document.get("resources") or {}, (targets[target] or {}).get("resources") or {}):
        for kind, entries in source.items():
            for key, value in (entries or {}).items():
                merged.setdefault(kind, {})[key] = {**merged.get(kind, {}).get(key, {}), **value}
    return merged


# The keys `databricks bundle` accepts where this bundle writes (from the CLI's bundle JSON schema);
# the job payloads are checked against the Databricks SDK's own request dataclasses instead.
_BUNDLE_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {  # kind: (allowed, required)
    "root": (
        frozenset(
            "artifacts bundle experimental include permissions presets python resources run_as scripts sync targets variables workspace".split()
        ),
        frozenset({"bundle"}),
    ),
    "bundle": (frozenset("cluster_id compute_id databricks_cli_version deployment git name uuid".split()), frozenset({"name"})),
    "artifact": (frozenset("build dynamic_version executable files path type".split()), frozenset()),
    "target": (
        frozenset("artifacts bundle cluster_id compute_id default git mode permissions presets resources run_as sync variables workspace".split()),
        frozenset(),
    ),
    "workspace": (
        frozenset("artifact_path auth_type client_id file_path host profile resource_path root_path state_path".split()),
        frozenset(),
    ),
    "run_as": (frozenset({"service_principal_name", "user_name"}), frozenset()),
    "experiment": (frozenset("artifact_location lifecycle name permissions tags".split()), frozenset({"name"})),
    "permission": (frozenset("group_name level service_principal_name user_name".split()), frozenset({"level"})),
    "registered_model": (
        frozenset(
            "aliases browse_only catalog_name comment created_at created_by full_name grants lifecycle metastore_id name owner "
            "schema_name storage_location updated_at updated_by".split()
        ),
        frozenset({"catalog_name", "schema_name", "name"}),
    ),
    "grant": (frozenset({"principal", "privileges"}), frozenset({"principal", "privileges"})),
    "volume": (
        frozenset("catalog_name comment grants lifecycle name schema_name storage_location volume_type".split()),
        frozenset({"catalog_name", "name", "schema_name"}),
    ),
}
_MODES = frozenset({"development", "production"})
_EXPERIMENT_LEVELS = frozenset({"CAN_MANAGE", "CAN_EDIT", "CAN_READ"})
_VOLUME_TYPES = frozenset({"MANAGED", "EXTERNAL"})


def _keys(value: Any, kind: str, path: str, problems: list[str]) -> bool:
    if not isinstance(value, dict):
        problems.append(f"{path}: must be a mapping")
        return False
    allowed, required = _BUNDLE_KEYS[kind]
    problems.extend(f"{path}.{key}: not a {kind} setting databricks bundle knows" for key in sorted(set(value) - allowed))
    problems.extend(f"{path}.{key}: required" for key in sorted(required - set(value)))
    return True


def _each(value: Any, path: str, problems: list[str]) -> list[tuple[str, Any]]:
    if not isinstance(value, list):
        problems.append(f"{path}: must be a list")
        return []
    return [(f"{path}[{index}]", item) for index, item in enumerate(value)]


def _check_sdk(value: Any, cls: Any, path: str, problems: list[str]) -> None:
    """Check a mapping against a Databricks SDK request dataclass, recursively."""
    origin = typing.get_origin(cls)
    if origin is typing.Union:
        cls = next(arg for arg in typing.get_args(cls) if arg is not type(None))
        origin = typing.get_origin(cls)
    if origin in (list, tuple):
        for item_path, item in _each(value, path, problems):
            _check_sdk(item, typing.get_args(cls)[0], item_path, problems)
    elif origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: must be a mapping")
        else:
            for key, item in value.items():
                _check_sdk(item, typing.get_args(cls)[1], f"{path}.{key}", problems)
    elif dataclasses.is_dataclass(cls):
        if not isinstance(value, dict):
            problems.append(f"{path}: must be a mapping")
            return
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, item in value.items():
            if key not in fields:
                problems.append(f"{path}.{key}: not a field of {cls.__name__}")
            else:
                _check_sdk(item, hints[key], f"{path}.{key}", problems)
        for name, spec in fields.items():
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING and name not in value:
                problems.append(f"{path}.{name}: required by {cls.__name__}")
    elif isinstance(cls, type) and issubclass(cls, Enum):
        if value not in {member.value for member in cls}:
            problems.append(f"{path}: {value!r} is not one of {sorted(member.value for member in cls)}")


def _check_job(job: Any, path: str, problems: list[str]) -> None:
    from databricks.sdk.service.jobs import JobSettings  # databricks-sdk: a core requirement

    if not isinstance(job, dict):
        problems.append(f"{path}: must be a mapping")
        return
    payload = {key: value for key, value in job.items() if key not in ("permissions", "lifecycle")}
    _check_sdk(payload, JobSettings, path, problems)
    tasks = [task for task in job.get("tasks") or [] if isinstance(task, dict)]
    keys = {task.get("task_key") for task in tasks}
    environments = {env.get("environment_key") for env in job.get("environments") or [] if isinstance(env, dict)}
    clusters = {cluster.get("job_cluster_key") for cluster in job.get("job_clusters") or [] if isinstance(cluster, dict)}
    for index, task in enumerate(tasks):
        where = f"{path}.tasks[{index}]"
        for dependency in task.get("depends_on") or []:
            if isinstance(dependency, dict) and dependency.get("task_key") not in keys:
                problems.append(f"{where}.depends_on: no task '{dependency.get('task_key')}' in this job")
        if "environment_key" in task and task["environment_key"] not in environments:
            problems.append(f"{where}.environment_key: the job declares no environment '{task['environment_key']}'")
        if "job_cluster_key" in task and task["job_cluster_key"] not in clusters:
            problems.append(f"{where}.job_cluster_key: the job declares no cluster '{task['job_cluster_key']}'")


def _check_resources(resources: Any, path: str, problems: list[str]) -> None:
    if not isinstance(resources, dict):
        problems.append(f"{path}: must be a mapping")
        return
    for key, experiment in (resources.get("experiments") or {}).items():
        where = f"{path}.experiments.{key}"
        if _keys(experiment, "experiment", where, problems):
            for item_path, permission in _each(experiment.get("permissions", []), f"{where}.permissions", problems):
                if _keys(permission, "permission", item_path, problems) and permission.get("level") not in _EXPERIMENT_LEVELS:
                    problems.append(f"{item_path}.level: {permission.get('level')!r} is not one of {sorted(_EXPERIMENT_LEVELS)}")
    for key, model in (resources.get("registered_models") or {}).items():
        where = f"{path}.registered_models.{key}"
        if _keys(model, "registered_model", where, problems):
            for item_path, grant in _each(model.get("grants", []), f"{where}.grants", problems):
                if _keys(grant, "grant", item_path, problems) and not isinstance(grant.get("privileges"), list):
                    problems.append(f"{item_path}.privileges: must be a list")
    for key, volume in (resources.get("volumes") or {}).items():
        where = f"{path}.volumes.{key}"
        if _keys(volume, "volume", where, problems) and volume.get("volume_type", "MANAGED") not in _VOLUME_TYPES:
            problems.append(f"{where}.volume_type: {volume.get('volume_type')!r} is not one of {sorted(_VOLUME_TYPES)}")
    for key, job in (resources.get("jobs") or {}).items():
        _check_job(job, f"{path}.jobs.{key}", problems)


def validate_bundle(document: Any) -> list[str]:
    """Problems that ``databricks bundle validate`` would report in the parts this project writes:
    unknown or missing keys, permission levels, deployment modes, and job payloads checked against
    the Databricks SDK's request types. Empty when the structure holds."""
    problems: list[str] = []
    if not _keys(document, "root", "(top level)", problems):
        return problems
    if _keys(document.get("bundle"), "bundle", "bundle", problems) and not isinstance(document["bundle"].get("name"), str):
        problems.append("bundle.name: must be a string")
    for key, artifact in (document.get("artifacts") or {}).items():
        _keys(artifact, "artifact", f"artifacts.{key}", problems)
    if "resources" in document:
        _check_resources(document["resources"], "resources", problems)
    targets = document.get("targets") or {}
    if sum(1 for target in targets.values() if isinstance(target, dict) and target.get("default")) > 1:
        problems.append("targets: more than one target is marked default")
    for name, target in targets.items():
        where = f"targets.{name}"
        if not _keys(target, "target", where, problems):
            continue
        if "mode" in target and target["mode"] not in _MODES:
            problems.append(f"{where}.mode: {target['mode']!r} is not one of {sorted(_MODES)}")
        if "workspace" in target:
            _keys(target["workspace"], "workspace", f"{where}.workspace", problems)
        if "run_as" in target:
            _keys(target["run_as"], "run_as", f"{where}.run_as", problems)
        if "resources" in target:
            _check_resources(target["resources"], f"{where}.resources", problems)
    return problems
