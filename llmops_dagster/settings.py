"""The one place that knows the environments (test, staging, prod).

Settings are read from ``environments.yaml`` when definitions load (``load_settings``),
never at import time. ``LLMOPS_HOME`` moves all local state; ``LLMOPS_ENVIRONMENTS``
points at another declaration file.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from llmops_dagster.core.access import AuthConfig
from llmops_dagster.core.bundle import UNITY_CATALOG_REGISTRY, BundleEnvironment, DatabricksConfig, target_names
from llmops_dagster.core.chunking import ChunkConfig
from llmops_dagster.core.embedding import EmbedderConfig
from llmops_dagster.core.evaluation import GateSettings
from llmops_dagster.core.index import AnnParams
from llmops_dagster.core.monitoring import MonitoringConfig
from llmops_dagster.core.rag import RagConfig
from llmops_dagster.core.training import TrainingConfig

ENVIRONMENTS = ("test", "staging", "prod")
ENGINES = ("local", "spark")
COMPUTES = ("local", "databricks")  # where the heavy steps (Pipes entry points) run
VOLUMES = "/Volumes/"  # Unity Catalog volumes: the one path a cluster and a Databricks-hosted Dagster both see
DEFAULT_HOME = ".llmops"
PACKAGE_ROOT = Path(__file__).resolve().parent
# In a checkout, the declaration at the top of the project (and its state beside it); installed from the
# wheel (a Pipes step on Databricks), the copy the wheel carries, with state under the working folder.
CHECKOUT_DECLARATION = PACKAGE_ROOT.parent / "environments.yaml"
IN_CHECKOUT = CHECKOUT_DECLARATION.is_file()
DEFAULT_DECLARATION = CHECKOUT_DECLARATION if IN_CHECKOUT else PACKAGE_ROOT / "environments.yaml"


class SettingsError(ValueError):
    """The environment declaration is missing, malformed or names an unknown environment."""


@dataclass(frozen=True)
class IngestionSettings:
    max_file_mb: float = 50.0

    def __post_init__(self) -> None:
        if not self.max_file_mb > 0:  # also refuses NaN
            raise ValueError(f"max_file_mb must be positive, got {self.max_file_mb}")


@dataclass(frozen=True)
class IndexSettings(AnnParams):
    """The ANN parameters (``core.index.AnnParams``, named as here) and the recall they must reach."""

    ann_min_recall: float = 0.95
    recall_sample: int = 200

    def ann_params(self) -> AnnParams:
        return AnnParams.of(self)


@dataclass(frozen=True)
class MlflowSettings:
    """Tracking and registry. Credentials (DATABRICKS_TOKEN, MLFLOW_TRACKING_PASSWORD, ...) come only
    from the environment, where MLflow itself reads them; they are never settings."""

    tracking_uri: str = "sqlite:///{home}/mlflow.db"
    registry_uri: str | None = None  # None: the tracking store; "databricks-uc" for Unity Catalog
    artifact_location: str | None = "{home}/mlartifacts/{env}"
    experiment: str = "llmops-{env}"
    registered_model: str = "{env}.llmops.rag_model"


@dataclass(frozen=True)
class ServingSettings:
    """``llmops serve``: where it listens, how it follows the champion, guards access and logs requests."""

    host: str = "127.0.0.1"
    port: int = 8000
    token_env: str = "LLMOPS_SERVE_TOKEN"  # the NAME of the variable that holds the bearer token, never the token
    poll_seconds: float = 5.0  # how often the champion alias is read
    batch_window_ms: float = 0.0  # 0: batch what waits while the model is busy; more: also wait this long for others
    max_batch: int = 64
    max_concurrent: int = 4  # predictions running at once; the others wait in the event loop
    model_threads: int = 1  # torch threads of the model thread; the other cores serve retrieval and HTTP
    max_body_kb: int = 256
    max_question_chars: int = 2000
    max_k: int = 50
    log_flush_rows: int = 256  # the inference log is written every this many rows...
    log_flush_seconds: float = 2.0  # ...or this often, and on shutdown
    log_queue_rows: int = 10000  # rows waiting beyond this are dropped and counted, never block a request
    log_field_chars: int = 16000  # request and response JSON kept per row; longer is truncated and flagged

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be within 1-65535, got {self.port}")
        if not self.token_env or not self.token_env.replace("_", "").isalnum():
            raise ValueError(f"token_env must name an environment variable, got {self.token_env!r}")
        for name in ("poll_seconds", "log_flush_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        counts = (
            "max_batch", "max_concurrent", "model_threads", "max_body_kb", "max_question_chars", "max_k",
            "log_flush_rows", "log_queue_rows", "log_field_chars",
        )
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.batch_window_ms < 0:
            raise ValueError("batch_window_ms cannot be negative")


@dataclass(frozen=True)
class PromotionSettings:
    requires_approval: bool = False
    source: str | None = None  # the environment whose champion this one adopts; None: it trains its own

    def __post_init__(self) -> None:
        if self.source is not None and self.source not in ENVIRONMENTS:
            raise ValueError(f"source must be one of {', '.join(ENVIRONMENTS)}, got '{self.source}'")


@dataclass(frozen=True)
class EnvSettings:
    name: str
    home: Path
    state_root: Path
    landing: Path
    lancedb_uri: str
    engine: str
    spark_master: str
    spark_remote: str | None
    sensor_interval_seconds: int
    ingestion: IngestionSettings
    embedding: EmbedderConfig
    chunking: ChunkConfig
    index: IndexSettings
    mlflow: MlflowSettings
    training: TrainingConfig
    rag: RagConfig
    evaluation: GateSettings
    promotion: PromotionSettings
    serving: ServingSettings
    monitoring: MonitoringConfig = MonitoringConfig()
    upstream_model: str | None = None  # the registered model of promotion.source, from the same declaration
    compute: str = "local"
    databricks: DatabricksConfig = field(default_factory=DatabricksConfig)
    auth: AuthConfig | None = None  # the accounts of an MLflow tracking server with basic auth; None: no auth

    def with_landing(self, landing: Path) -> EnvSettings:
        return replace(self, landing=landing.resolve())

    def with_engine(self, engine: str, spark_master: str | None = None, spark_remote: str | None = None) -> EnvSettings:
        if engine not in ENGINES:
            raise SettingsError(f"engine must be one of {', '.join(ENGINES)}, got '{engine}'")
        return replace(self, engine=engine, spark_master=spark_master or self.spark_master, spark_remote=spark_remote)


def llmops_home() -> Path:
    """``LLMOPS_HOME``; else, in a checkout, ``.llmops`` beside its ``environments.yaml`` (where ``make`` puts
    it), so that a command run from another folder finds the same state instead of starting an empty one."""
    home = os.environ.get("LLMOPS_HOME")
    if home:
        return Path(home).expanduser().resolve()
    return (CHECKOUT_DECLARATION.parent if IN_CHECKOUT else Path.cwd()).resolve() / DEFAULT_HOME


def declaration_path() -> Path:
    return Path(os.environ.get("LLMOPS_ENVIRONMENTS", DEFAULT_DECLARATION)).expanduser()


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# The scalar kinds a setting is checked against before its dataclass sees it, and how a message names them.
_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _wrong_kind(hint: Any, value: Any) -> str | None:
    """The kind ``value`` should have been, when the field's annotation is a plain scalar (or one
    scalar or None) that it does not match; None when it matches or the field takes something else."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) != 1:
            return None
        hint = options[0]
    if hint not in _KINDS:
        return None
    if isinstance(value, bool):  # YAML's true/false are ints to Python; only a bool field takes them
        return None if hint is bool else _KINDS[hint]
    accepted = (int, float) if hint is float else hint
    return None if isinstance(value, accepted) else _KINDS[hint]


def _mapping(value: Any, what: str) -> dict[str, Any]:
    """``value`` as a dict (None: empty), or a SettingsError saying that ``what`` must be a mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError(f"{what} must be a mapping of settings, got {value!r}")
    return dict(value)


def _section(cls: type, raw: Any, env: str, name: str) -> Any:
    raw = _mapping(raw, f"environment '{env}': {name}")
    unknown = set(raw) - set(cls.__dataclass_fields__)
    if unknown:
        raise SettingsError(f"environment '{env}': unknown {name} setting(s) {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        kind = _wrong_kind(hints[key], value)
        if kind:
            raise SettingsError(f"environment '{env}': {name}.{key} must be {kind}, got {value!r}")
    try:
        return cls(**raw)
    except (TypeError, ValueError) as error:
        raise SettingsError(f"environment '{env}': invalid {name} settings: {error}") from None


def _read_declaration(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The declaration's ``defaults`` and ``environments`` mappings; a YAML error is one line with its place."""
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SettingsError(f"{path} is not valid YAML: {getattr(error, 'problem', None) or error}{where}") from None
    document = _mapping(document, f"{path}")
    unknown = set(document) - {"defaults", "environments"}
    if unknown:
        raise SettingsError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected defaults and environments")
    return _mapping(document.get("defaults"), f"{path}: defaults"), _mapping(document.get("environments"), f"{path}: environments")


def load_settings(env: str, declaration: Path | None = None, _adopting: tuple[str, ...] = ()) -> EnvSettings:
    """Resolve one environment's settings from the declaration file, with the registered model of
    the environment it adopts from (read from the same file)."""
    if env not in ENVIRONMENTS:
        raise SettingsError(f"unknown environment '{env}'; choose one of {', '.join(ENVIRONMENTS)}")
    path = declaration or declaration_path()
    if not path.is_file():
        raise SettingsError(f"environment declaration not found: {path}")
    defaults, declared = _read_declaration(path)
    if env not in declared:
        raise SettingsError(f"environment '{env}' is not declared in {path}")
    raw = _merge(defaults, _mapping(declared[env], f"environment '{env}'"))

    home = llmops_home()

    def text(value: Any, name: str, optional: bool = False) -> str | None:
        """A setting that must be a string (or, when ``optional``, left out)."""
        if isinstance(value, str) or (optional and value is None):
            return value
        raise SettingsError(f"environment '{env}': {name} must be a string, got {value!r}")

    def expand(value: Any, name: str) -> str:
        """A path or URI setting with its ``{home}`` and ``{env}`` filled in."""
        template = text(value, name)
        try:
            return template.format(home=home, env=env)
        except (KeyError, IndexError, ValueError) as error:
            raise SettingsError(f"environment '{env}': {name} {value!r} is not a template of {{home}} and {{env}}: {error!r}") from None

    state_root = Path(expand(raw.pop("state_root", "{home}/{env}"), "state_root"))
    landing = Path(expand(raw.pop("landing", "{home}/landing/{env}"), "landing"))
    lancedb_uri = expand(raw.pop("lancedb_uri", None) or str(state_root / "lancedb"), "lancedb_uri")
    engine = raw.pop("engine", "local")
    if engine not in ENGINES:
        raise SettingsError(f"environment '{env}': engine must be one of {', '.join(ENGINES)}, got '{engine}'")
    compute = raw.pop("compute", "local")
    if compute not in COMPUTES:
        raise SettingsError(f"environment '{env}': compute must be one of {', '.join(COMPUTES)}, got '{compute}'")
    spark_master = text(raw.pop("spark_master", "local[*]"), "spark_master")
    spark_remote = text(raw.pop("spark_remote", None), "spark_remote", optional=True)
    interval = raw.pop("sensor_interval_seconds", 30)
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
        raise SettingsError(f"environment '{env}': sensor_interval_seconds must be a whole number ≥ 1, got {interval!r}")
    sections = {
        "ingestion": IngestionSettings,
        "embedding": EmbedderConfig,
        "chunking": ChunkConfig,
        "index": IndexSettings,
        "mlflow": MlflowSettings,
        "training": TrainingConfig,
        "rag": RagConfig,
        "evaluation": GateSettings,
        "promotion": PromotionSettings,
        "serving": ServingSettings,
    }
    parsed = {name: _section(cls, raw.pop(name, None), env, name) for name, cls in sections.items()}
    try:
        parsed["monitoring"] = MonitoringConfig.from_mapping(_mapping(raw.pop("monitoring", None), "monitoring"))
    except ValueError as error:  # its messages name the setting (monitoring.window, ...)
        raise SettingsError(f"environment '{env}': {error}") from None
    try:
        databricks = DatabricksConfig.from_mapping(raw.pop("databricks", None))
        auth = AuthConfig.from_mapping(raw.pop("auth", None))
    except ValueError as error:  # these name the setting too (databricks.catalog, auth.service, ...)
        raise SettingsError(f"environment '{env}': {error}") from None
    if parsed["promotion"].source == env:
        raise SettingsError(f"environment '{env}': promotion.source cannot be the environment itself")
    parsed["mlflow"] = replace(
        parsed["mlflow"],
        **{key: expand(value, f"mlflow.{key}") for key, value in vars(parsed["mlflow"]).items() if isinstance(value, str)},
    )
    if raw:
        raise SettingsError(f"environment '{env}': unknown setting(s) {sorted(raw)} in {path}")
    if on_databricks(parsed["mlflow"].tracking_uri):
        # Databricks names experiments by workspace path: a relative name means where the bundle deploys it.
        parsed["mlflow"] = replace(parsed["mlflow"], experiment=databricks.experiment_path(parsed["mlflow"].experiment))
    _check_databricks_names(env, compute, parsed["mlflow"], databricks)
    if compute == "databricks":
        _check_shared_state(env, landing, lancedb_uri, parsed["mlflow"].tracking_uri)
    source = parsed["promotion"].source
    if source in _adopting:
        raise SettingsError(f"promotion sources form a cycle: {' → '.join((*_adopting, env, source))}")
    upstream = load_settings(source, path, (*_adopting, env)).mlflow.registered_model if source else None
    return EnvSettings(
        upstream_model=upstream,
        name=env,
        home=home,
        state_root=state_root.resolve(),
        landing=landing.resolve(),
        lancedb_uri=lancedb_uri,
        engine=engine,
        spark_master=spark_master,
        spark_remote=spark_remote,
        sensor_interval_seconds=interval,
        compute=compute,
        databricks=databricks,
        auth=auth,
        **parsed,
    )


def on_databricks(tracking_uri: str) -> bool:
    return tracking_uri == "databricks" or tracking_uri.startswith("databricks://")


def _check_shared_state(env: str, landing: Path, lancedb_uri: str, tracking_uri: str) -> None:
    """``compute: databricks`` runs steps on a cluster that sees none of this machine's disk: the
    index, the MLflow store and the landing zone must be where both sides read and write the same
    thing, or the remote steps would write to a disk that goes away with the cluster. The index is
    kept to object storage, where Lance commits atomically; a volume's FUSE mount is untested for
    that. The landing zone is read as files, so it is a volume path."""
    where = f"environment '{env}': compute: databricks runs its steps on a cluster that cannot see this machine's disk"
    if "://" not in lancedb_uri or lancedb_uri.startswith("file://"):
        raise SettingsError(f"{where}; lancedb_uri {lancedb_uri!r} must be object storage (s3://, gs://, az://)")
    if not (on_databricks(tracking_uri) or tracking_uri.startswith(("http://", "https://"))):
        raise SettingsError(f"{where}; mlflow.tracking_uri {tracking_uri!r} must be databricks or an MLflow server's http(s) URL")
    if not str(landing).startswith(VOLUMES):
        raise SettingsError(f"{where}; landing {str(landing)!r} must be a Unity Catalog volume path ({VOLUMES}<catalog>/<schema>/<volume>/...)")


def _check_databricks_names(env: str, compute: str, mlflow: MlflowSettings, databricks: DatabricksConfig) -> None:
    """Where the model lives in Unity Catalog (or the jobs run on Databricks), refuse at load the
    names Databricks would refuse at deploy: the same check the bundle makes."""
    if mlflow.registry_uri != UNITY_CATALOG_REGISTRY and compute != "databricks":
        return
    try:
        target_names(BundleEnvironment(env, mlflow.experiment, mlflow.registered_model, mlflow.registry_uri, databricks))
    except ValueError as error:
        message = str(error)
        raise SettingsError(message if message.startswith(f"environment '{env}'") else f"environment '{env}': {message}") from None
