"""The bundle's permissions, enforced on an MLflow tracking server with built-in authentication.

On Databricks the bundle gives the ``users`` group CAN_READ on the experiment and ``account users``
EXECUTE on the Unity Catalog model; the service principal that runs the jobs owns both. A local
``mlflow server --app-name basic-auth`` enforces the same split: the service account MANAGEs the
experiment and the registered model (it logs runs, registers versions, moves aliases and approves),
readers get READ on both (they read runs, load versions and resolve aliases, nothing more).

Passwords never appear as values here: an :class:`Account` names the environment variable that
holds its password, and MLflow's own client reads ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.utils.rest_utils import MlflowHostCreds

READ, MANAGE = "READ", "MANAGE"
EXPERIMENT, REGISTERED_MODEL = "experiment", "registered_model"
USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The basic-auth app's REST routes (mlflow.server.auth.routes). Called directly rather than through
# AuthServiceClient, whose import loads the whole tracking server (Flask, FastAPI): seconds per command.
_CREATE_USER = "/api/2.0/mlflow/users/create"
_GET_USER = "/api/2.0/mlflow/users/get"
_GRANT_USER_PERMISSION = "/api/3.0/mlflow/users/permissions/grant"
_LIST_ROLE_PERMISSIONS = "/api/3.0/mlflow/roles/permissions/list"
_UPDATE_ROLE_PERMISSION = "/api/3.0/mlflow/roles/permissions/update"
_LIST_USER_PERMISSIONS = "/api/3.0/mlflow/users/permissions/list"
_LIST_CURRENT_USER_PERMISSIONS = "/api/3.0/mlflow/users/current/permissions"
_SYNTHETIC_ROLE = re.compile(r"^__user_\d+__$")  # the per-user role that grant/revoke write to


class AccessError(RuntimeError):
    """The policy cannot be applied as declared (a missing password variable, an admin reader...)."""


@dataclass(frozen=True)
class Account:
    """A tracking-server account: its user name and the NAME of the variable holding its password."""

    username: str
    password_env: str

    def __post_init__(self) -> None:
        if not self.username or not self.username.strip():
            raise ValueError("an account needs a user name")
        if not _ENV_VAR.match(self.password_env or ""):
            raise ValueError(f"account '{self.username}': password_env must name an environment variable, got {self.password_env!r}")

    def password(self) -> str:
        value = os.environ.get(self.password_env)
        if not value:
            raise AccessError(f"account '{self.username}': environment variable {self.password_env} is not set")
        return value

    def host_creds(self, tracking_uri: str) -> MlflowHostCreds:
        from mlflow.utils.rest_utils import MlflowHostCreds

        return MlflowHostCreds(tracking_uri.rstrip("/"), username=self.username, password=self.password())


def tracking_server(tracking_uri: str, registry_uri: str | None = None) -> str | None:
    """The URL of the registry when it is an MLflow tracking server (http/https), else None."""
    uri = registry_uri or tracking_uri
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def service_credentials(auth: AuthConfig | None, server: str | None) -> dict[str, str]:
    """The variables MLflow's client signs in with, for the service account: empty where there is no
    tracking server or no ``auth:`` section, or where someone is already signed in as themselves
    (``MLFLOW_TRACKING_USERNAME`` set). Raises ``AccessError`` when the password variable is unset."""
    if server is None or auth is None or os.environ.get(USERNAME_ENV):
        return {}
    return {USERNAME_ENV: auth.service.username, PASSWORD_ENV: auth.service.password()}


@dataclass(frozen=True)
class AccessPolicy:
    """Who may do what with one environment's experiment and registered model."""

    service: Account  # logs runs, registers versions, moves aliases, approves
    readers: tuple[Account, ...]  # read runs and versions, resolve aliases, query
    experiment: str
    registered_model: str
    artifact_location: str | None = None  # used only when the experiment has to be created

    def __post_init__(self) -> None:
        object.__setattr__(self, "readers", tuple(self.readers))
        names = [self.service.username, *(reader.username for reader in self.readers)]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"an account may hold one role only: {', '.join(duplicates)}")
        if not self.experiment or not self.registered_model:
            raise ValueError("the policy needs an experiment and a registered model name")

    def grants(self, experiment_id: str) -> list[tuple[str, str, str, str]]:
        """(user, resource type, resource id, permission) for every grant the policy makes."""
        rows = [(self.service.username, EXPERIMENT, experiment_id, MANAGE), (self.service.username, REGISTERED_MODEL, self.registered_model, MANAGE)]
        for reader in self.readers:
            rows += [(reader.username, EXPERIMENT, experiment_id, READ), (reader.username, REGISTERED_MODEL, self.registered_model, READ)]
        return rows


def _account(raw: Any, setting: str) -> Account:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{setting} must be a mapping with username and password_env, got {raw!r}")
    unknown = sorted(set(raw) - {"username", "password_env"})
    if unknown:
        raise ValueError(f"unknown {setting} setting(s) {unknown}")
    username, password_env = raw.get("username"), raw.get("password_env")
    if not isinstance(username, str) or not username.strip():
        raise ValueError(f"{setting}.username must be a non-empty string, got {username!r}")
    if not isinstance(password_env, str) or not _ENV_VAR.match(password_env):
        raise ValueError(f"{setting}.password_env must name an environment variable (not hold the password), got {password_env!r}")
    return Account(username, password_env)


@dataclass(frozen=True)
class AuthConfig:
    """The ``auth:`` section of an environment: the accounts of an MLflow tracking server with basic
    authentication. The service account is the one Dagster and the CLI act as; ``admin`` is needed
    only to apply the policy (``llmops access``)."""

    service: Account
    readers: tuple[Account, ...] = ()
    admin: Account | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "readers", tuple(self.readers))
        names = [self.service.username, *(reader.username for reader in self.readers)]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"auth: an account may hold one role only: {', '.join(duplicates)}")
        if self.admin is not None and self.admin.username in names[1:]:
            raise ValueError(f"auth: admin '{self.admin.username}' cannot be a reader; admins bypass permissions")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> AuthConfig | None:
        """Parse the section as it appears in environments.yaml (None: no authentication); errors name the setting."""
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ValueError(f"auth must be a mapping, got {raw!r}")
        unknown = sorted(set(raw) - {"service", "readers", "admin"})
        if unknown:
            raise ValueError(f"unknown auth setting(s) {unknown}")
        if raw.get("service") is None:
            raise ValueError("auth.service is required: the account Dagster and the CLI act as")
        readers = raw.get("readers") or []
        if not isinstance(readers, list):
            raise ValueError(f"auth.readers must be a list of accounts, got {readers!r}")
        admin = raw.get("admin")
        return cls(
            service=_account(raw["service"], "auth.service"),
            readers=tuple(_account(reader, f"auth.readers[{index}]") for index, reader in enumerate(readers)),
            admin=None if admin is None else _account(admin, "auth.admin"),
        )

    def policy(self, experiment: str, registered_model: str, artifact_location: str | None = None) -> AccessPolicy:
        return AccessPolicy(self.service, self.readers, experiment, registered_model, artifact_location)


@dataclass
class PolicyReport:
    """What one application of the policy changed; empty lists mean it was already in place."""

    created_users: list[str] = field(default_factory=list)
    created_resources: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created_users or self.created_resources or self.grants)

    def lines(self) -> list[str]:
        return [
            *(f"created user '{name}'" for name in self.created_users),
            *(f"created {what}" for what in self.created_resources),
            *self.grants,
        ] or ["the policy was already in place"]


class _Rest:
    """REST calls to one tracking server with explicit credentials (the process environment is never touched)."""

    def __init__(self, tracking_uri: str, account: Account):
        self.tracking_uri = tracking_uri.rstrip("/")
        self.creds = account.host_creds(self.tracking_uri)

    def call(self, endpoint: str, method: str = "GET", expected_status: int = 200, **kwargs: Any) -> dict[str, Any]:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        response = verify_rest_response(http_request(self.creds, endpoint, method, **kwargs), endpoint, expected_status=expected_status)
        return response.json() if response.status_code != 204 and response.content else {}

    # What apply_policy needs of the admin API, with this account's credentials (not the environment's).
    def get_user(self, username: str) -> dict[str, Any]:
        return self.call(_GET_USER, params={"username": username})["user"]

    def create_user(self, username: str, password: str) -> None:
        self.call(_CREATE_USER, "POST", json={"username": username, "password": password})

    def grant_user_permission(self, username: str, resource_type: str, resource_id: str, permission: str) -> None:
        grant = {"username": username, "resource_type": resource_type, "resource_id": resource_id, "permission": permission}
        self.call(_GRANT_USER_PERMISSION, "POST", json=grant)

    def list_role_permissions(self, role_id: int) -> list[dict[str, Any]]:
        return self.call(_LIST_ROLE_PERMISSIONS, params={"role_id": str(role_id)})["role_permissions"]

    def update_role_permission(self, role_permission_id: int, permission: str) -> None:
        self.call(_UPDATE_ROLE_PERMISSION, "PATCH", json={"role_permission_id": role_permission_id, "permission": permission})

    def tracking_store(self) -> Any:
        from mlflow.store.tracking.rest_store import RestStore

        return RestStore(lambda: self.creds)

    def registry_store(self) -> Any:
        from mlflow.store.model_registry.rest_store import RestStore

        return RestStore(lambda: self.creds)


def _error_code(error: BaseException) -> str | None:
    return getattr(error, "error_code", None)


def _ensure_user(auth: _Rest, account: Account, reader: bool, report: PolicyReport) -> None:
    from mlflow.exceptions import MlflowException

    try:
        user = auth.get_user(account.username)
    except MlflowException as error:
        if _error_code(error) != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(account.username, account.password())
        report.created_users.append(account.username)
        return
    if reader and user.get("is_admin"):
        # An admin passes every permission check, so READ would not limit it.
        raise AccessError(f"reader '{account.username}' is an admin of the tracking server; admins bypass permissions")


def _ensure_experiment(rest: _Rest, policy: AccessPolicy, report: PolicyReport) -> str:
    store = rest.tracking_store()
    experiment = store.get_experiment_by_name(policy.experiment)
    if experiment is not None:
        return experiment.experiment_id
    experiment_id = store.create_experiment(policy.experiment, artifact_location=policy.artifact_location)
    report.created_resources.append(f"experiment '{policy.experiment}'")
    return experiment_id


def _ensure_registered_model(rest: _Rest, policy: AccessPolicy, report: PolicyReport) -> None:
    from mlflow.exceptions import MlflowException

    store = rest.registry_store()
    try:
        store.get_registered_model(policy.registered_model)
    except MlflowException as error:
        if _error_code(error) != "RESOURCE_DOES_NOT_EXIST":
            raise
        store.create_registered_model(policy.registered_model)
        report.created_resources.append(f"registered model '{policy.registered_model}'")


def _direct_grants(rest: _Rest, username: str) -> dict[tuple[str, str], tuple[int, str]]:
    """A user's own grants (not those of shared roles): (type, id) -> (role id, permission)."""
    rows = rest.call(_LIST_USER_PERMISSIONS, params={"username": username}).get("permissions", [])
    return {
        (row["resource_type"], row["resource_pattern"]): (row["role_id"], row["permission"])
        for row in rows
        if _SYNTHETIC_ROLE.match(row.get("role_name", ""))
    }


def _set_grant(auth: _Rest, grant: tuple[str, str, str, str], existing: dict, report: PolicyReport, label: str) -> None:
    username, resource_type, resource_id, permission = grant
    current = existing.get((resource_type, resource_id))
    if current is None:
        auth.grant_user_permission(username, resource_type, resource_id, permission)
        report.grants.append(f"granted {permission} on {label} to '{username}'")
    elif current[1] != permission:
        role_id, held = current
        rows = auth.list_role_permissions(role_id)
        row = next(r for r in rows if r["resource_type"] == resource_type and r["resource_pattern"] == resource_id)
        auth.update_role_permission(row["id"], permission)
        report.grants.append(f"changed '{username}' on {label} from {held} to {permission}")


def apply_policy(tracking_uri: str, policy: AccessPolicy, admin: Account) -> PolicyReport:
    """Make the server match the policy; running it again changes nothing.

    Missing accounts are created with the passwords their variables hold (existing ones keep theirs),
    a missing experiment or registered model is created, and each account's own grant on both is
    set to exactly what the policy says (a reader that held MANAGE is brought down to READ).
    """
    rest = _Rest(tracking_uri, admin)
    report = PolicyReport()
    _ensure_user(rest, policy.service, False, report)
    for reader in policy.readers:
        _ensure_user(rest, reader, True, report)
    experiment_id = _ensure_experiment(rest, policy, report)
    _ensure_registered_model(rest, policy, report)
    labels = {EXPERIMENT: f"experiment '{policy.experiment}'", REGISTERED_MODEL: f"registered model '{policy.registered_model}'"}
    existing: dict[str, dict] = {}
    for grant in policy.grants(experiment_id):
        username = grant[0]
        if username not in existing:
            existing[username] = _direct_grants(rest, username)
        _set_grant(rest, grant, existing[username], report, labels[grant[1]])
    return report


# ---- explaining refusals ---------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """What an account tried, so that a refusal can say it in one line."""

    verb: str  # "move alias 'champion' of"
    resource_type: str  # EXPERIMENT or REGISTERED_MODEL
    resource: str  # the experiment or registered model name
    account: str | None = None  # None: MLFLOW_TRACKING_USERNAME
    held: str | None = None  # the permission the account holds there, when known
    password_env: str | None = None  # where the account's password came from; None: MLFLOW_TRACKING_PASSWORD

    def describe(self) -> str:
        noun = "experiment" if self.resource_type == EXPERIMENT else "model"
        return f"{self.verb} {noun} '{self.resource}'"

    @classmethod
    def set_alias(cls, model: str, alias: str, **kwargs: Any) -> Action:
        return cls(f"move alias '{alias}' of", REGISTERED_MODEL, model, **kwargs)

    @classmethod
    def delete_alias(cls, model: str, alias: str, **kwargs: Any) -> Action:
        return cls(f"delete alias '{alias}' of", REGISTERED_MODEL, model, **kwargs)

    @classmethod
    def register_version(cls, model: str, **kwargs: Any) -> Action:
        return cls("register a new version of", REGISTERED_MODEL, model, **kwargs)

    @classmethod
    def set_version_tag(cls, model: str, version: str, tag: str, **kwargs: Any) -> Action:
        return cls(f"set tag '{tag}' on version {version} of", REGISTERED_MODEL, model, **kwargs)

    @classmethod
    def approve_version(cls, model: str, version: str, **kwargs: Any) -> Action:
        return cls(f"approve version {version} of", REGISTERED_MODEL, model, **kwargs)

    @classmethod
    def read_model(cls, model: str, **kwargs: Any) -> Action:
        return cls("read", REGISTERED_MODEL, model, **kwargs)

    @classmethod
    def log_run(cls, experiment: str, **kwargs: Any) -> Action:
        return cls("log a run in", EXPERIMENT, experiment, **kwargs)


def is_denied(error: BaseException) -> bool:
    """Whether the tracking server refused the caller (403) or did not recognise it (401)."""
    return _error_code(error) in ("PERMISSION_DENIED", "UNAUTHENTICATED")


def explain_denied(error: BaseException, action: Action | str) -> str:
    """One line for a refusal: who, what, and why (the permission held, or the failed sign-in).
    Other errors come back as their first line, so a caller can print the result either way."""
    what = action if isinstance(action, str) else action.describe()
    held = None if isinstance(action, str) else action.held
    account = (None if isinstance(action, str) else action.account) or os.environ.get(USERNAME_ENV)
    password_env = (None if isinstance(action, str) else action.password_env) or PASSWORD_ENV
    code = _error_code(error)
    if code == "UNAUTHENTICATED":
        if not account:
            return f"cannot {what}: the tracking server needs credentials; set {USERNAME_ENV} and {PASSWORD_ENV}"
        return f"cannot {what}: the tracking server did not accept the password of account '{account}' (check {password_env})"
    if code == "PERMISSION_DENIED":
        who = f"account '{account}'" if account else "this account"
        reason = f"it has {held}" if held else "the tracking server denied it"
        return f"{who} may not {what}: {reason}"
    message = getattr(error, "message", None) or str(error)
    return (message.splitlines() or [type(error).__name__])[0]


def held_permission(tracking_uri: str, account: Account, resource_type: str, resource: str) -> str:
    """The permission ``account`` holds on an experiment (by name) or registered model, as the server
    reports it to the account itself; NO_PERMISSIONS when it holds no grant there."""
    rest = _Rest(tracking_uri, account)
    listing = rest.call(_LIST_CURRENT_USER_PERMISSIONS)
    if listing.get("is_admin"):
        return "ADMIN"
    resource_id = resource
    if resource_type == EXPERIMENT:
        from mlflow.exceptions import MlflowException

        try:
            experiment = rest.tracking_store().get_experiment_by_name(resource)
        except MlflowException:
            experiment = None
        if experiment is None:
            return "NO_PERMISSIONS"
        resource_id = experiment.experiment_id
    held = [
        row["permission"]
        for row in listing.get("permissions", [])
        if row["resource_type"] == resource_type and row["resource_pattern"] in (resource_id, "*")
    ]
    if "DENY" in held:  # an explicit deny wins over any grant, as on the server
        return "DENY"
    rank = {"NO_PERMISSIONS": 0, "READ": 1, "USE": 2, "EDIT": 3, "MANAGE": 4}
    return max(held, key=lambda name: rank.get(name, 0), default="NO_PERMISSIONS")
