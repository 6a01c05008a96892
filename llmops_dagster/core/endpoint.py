"""Where an environment's champion is served: a Databricks Model Serving endpoint, or ``llmops serve``.

On Databricks, ``ensure_endpoint`` makes the endpoint serve one numeric version of the registered
model, with an AI Gateway inference table in the environment's catalog and schema (the legacy
``auto_capture_config`` can no longer be enabled on new endpoints since February 2026). It creates
the endpoint when it is missing, updates its config when it serves another version, and leaves it
alone when it already serves this one; then it waits, within a bounded time, until the update is
live. The version it served before is returned so that it can be recorded for rollback.

Locally, ``llmops serve`` follows the champion alias by itself; ``local_server_version`` asks a
server at the configured address which version it actually answers with (``/health``, which needs
no token).

What was deployed where is recorded on the registered model, one tag per place (``ENDPOINT_TAG``),
beside the champion history that ``promotion`` keeps there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from llmops_dagster.core import registry
from llmops_dagster.core.bundle import BundleEnvironment, target_names

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import ServingEndpointDetailed
    from mlflow import MlflowClient

DATABRICKS, LOCAL = "databricks", "local"
ENDPOINT_TAG = "serving_endpoint_{where}"  # on the registered model: JSON of the last ``Deployment`` there
CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"
INFERENCE_TABLE_SUFFIX = "_payload"  # AI Gateway names the request table <prefix>_payload
HEALTH_TIMEOUT_S = 0.5  # a server on loopback answers /health in milliseconds


class EndpointError(RuntimeError):
    """The workspace refused or failed a serving-endpoint call; the message names the endpoint and
    holds no secret."""


@dataclass(frozen=True)
class EndpointSpec:
    """What one environment's endpoint should look like, apart from the version it serves."""

    env: str
    name: str  # the endpoint
    model: str  # catalog.schema.model in Unity Catalog
    catalog: str
    schema: str
    workload_size: str = "Small"
    scale_to_zero: bool = True
    environment_vars: tuple[tuple[str, str], ...] = ()  # (name, secret reference), sorted

    @property
    def table_prefix(self) -> str:
        return self.name.replace("-", "_")  # a table name part needs no quoting

    @property
    def inference_table(self) -> str:
        return f"{self.catalog}.{self.schema}.{self.table_prefix}{INFERENCE_TABLE_SUFFIX}"

    def entity_name(self, version: str) -> str:
        return f"{self.model.rsplit('.', 1)[-1]}-{version}"


def endpoint_spec(env: BundleEnvironment) -> EndpointSpec:
    """The endpoint of an environment from its ``databricks:`` settings and registered model name."""
    names = target_names(env)
    config = env.databricks
    return EndpointSpec(
        env=env.name,
        name=names.serving_endpoint,
        model=names.full_model_name,
        catalog=names.catalog,
        schema=names.schema,
        workload_size=config.serving_workload_size,
        scale_to_zero=config.serving_scale_to_zero,
        environment_vars=tuple(sorted(config.serving_environment_vars.items())),
    )


@dataclass(frozen=True)
class EndpointOutcome:
    name: str
    action: str  # created | updated | unchanged
    served_version: str | None
    previous_version: str | None  # what it served before this call; None for a new endpoint
    inference_table: str
    inference_table_enabled: bool
    state: str  # READY / NOT_UPDATING, as the workspace reports it


# ---- the desired config ----------------------------------------------------------------------


def served_entities(spec: EndpointSpec, version: str) -> list[Any]:
    from databricks.sdk.service.serving import ServedEntityInput

    return [
        ServedEntityInput(
            name=spec.entity_name(version),
            entity_name=spec.model,
            entity_version=str(version),
            workload_size=spec.workload_size,
            scale_to_zero_enabled=spec.scale_to_zero,
            environment_vars=dict(spec.environment_vars) or None,
        )
    ]


def traffic(spec: EndpointSpec, version: str) -> Any:
    from databricks.sdk.service.serving import Route, TrafficConfig

    return TrafficConfig(routes=[Route(served_model_name=spec.entity_name(version), traffic_percentage=100)])


def inference_table_config(spec: EndpointSpec) -> Any:
    from databricks.sdk.service.serving import AiGatewayInferenceTableConfig

    return AiGatewayInferenceTableConfig(enabled=True, catalog_name=spec.catalog, schema_name=spec.schema, table_name_prefix=spec.table_prefix)


def desired_config(spec: EndpointSpec, version: str) -> Any:
    from databricks.sdk.service.serving import EndpointCoreConfigInput

    return EndpointCoreConfigInput(served_entities=served_entities(spec, version), traffic_config=traffic(spec, version))


# ---- reading an endpoint ---------------------------------------------------------------------


def _version_in(config: Any, model: str) -> str | None:
    entities = (config.served_entities or []) if config is not None else []
    versions = [str(e.entity_version) for e in entities if e.entity_name == model and e.entity_version is not None]
    return max(versions, key=int) if versions else None


def served_version(endpoint: ServingEndpointDetailed, model: str) -> str | None:
    """The version of ``model`` the endpoint's live config serves (None: another model, or none yet)."""
    return _version_in(endpoint.config, model)


def served_environment_vars(endpoint: ServingEndpointDetailed, model: str) -> tuple[tuple[str, str], ...]:
    """The variables the live config gives the served version of ``model``, as ``EndpointSpec`` holds them."""
    entities = (endpoint.config.served_entities or []) if endpoint.config is not None else []
    served = [e for e in entities if e.entity_name == model and str(e.entity_version) == served_version(endpoint, model)]
    return tuple(sorted((served[0].environment_vars or {}).items())) if served else ()


def pending_version(endpoint: ServingEndpointDetailed, model: str) -> str | None:
    return _version_in(endpoint.pending_config, model)


def updating(endpoint: ServingEndpointDetailed) -> bool:
    from databricks.sdk.service.serving import EndpointStateConfigUpdate

    return endpoint.state is not None and endpoint.state.config_update == EndpointStateConfigUpdate.IN_PROGRESS


def inference_table_enabled(endpoint: ServingEndpointDetailed) -> bool:
    gateway = endpoint.ai_gateway
    return bool(gateway and gateway.inference_table_config and gateway.inference_table_config.enabled)


def state_of(endpoint: ServingEndpointDetailed) -> str:
    state = endpoint.state
    ready = state.ready.value if state and state.ready else "UNKNOWN"
    update = state.config_update.value if state and state.config_update else "UNKNOWN"
    return f"{ready} / {update}"


# ---- changing it -----------------------------------------------------------------------------


def one_line(error: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """An error as one line: its type and the first line of its message, with any secret masked.
    The SDK's description of the client's config (``Config: host=..., token=***``) is left out."""
    message = (str(error).splitlines() or [""])[0].split(" Config: ", 1)[0]
    text = f"{type(error).__name__}: {message}"[:300]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _Calls:
    """Workspace calls for one endpoint, each failure turned into one ``EndpointError``."""

    def __init__(self, client: WorkspaceClient, name: str, secrets: Iterable[str | None]) -> None:
        self.api = client.serving_endpoints
        self.name = name
        self.secrets = list(secrets)

    def __call__(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except OSError as error:  # the SDK's DatabricksError, and requests' errors when the workspace is out of reach
            raise EndpointError(f"serving endpoint '{self.name}': {what} failed: {one_line(error, self.secrets)}") from None

    def get(self) -> ServingEndpointDetailed | None:
        """The endpoint, or None when the workspace has none of that name."""
        from databricks.sdk.errors import NotFound

        def read() -> ServingEndpointDetailed | None:
            try:
                return self.api.get(self.name)
            except NotFound:
                return None

        return self("reading it", read)


def wait_ready(
    calls: _Calls,
    version: str,
    *,
    model: str,
    timeout_s: float,
    poll_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    fail_on_failed_update: bool = True,
) -> ServingEndpointDetailed:
    """Poll until the endpoint's config update is over. An update that failed or was cancelled (when
    ``fail_on_failed_update``) or is still running at the deadline is one ``EndpointError`` that
    names the endpoint."""
    from databricks.sdk.service.serving import EndpointStateConfigUpdate

    deadline = clock() + timeout_s
    while True:
        endpoint = calls("reading its state", calls.api.get, calls.name)
        update = endpoint.state.config_update if endpoint.state else None
        failed = update in (EndpointStateConfigUpdate.UPDATE_FAILED, EndpointStateConfigUpdate.UPDATE_CANCELED)
        if failed and fail_on_failed_update:
            still = served_version(endpoint, model)
            raise EndpointError(
                f"serving endpoint '{calls.name}': the update to v{version} ended {update.value}; it still serves "
                f"{'v' + still if still else 'nothing'}. See the endpoint's events in the workspace."
            )
        if update != EndpointStateConfigUpdate.IN_PROGRESS:
            return endpoint
        if clock() >= deadline:
            raise EndpointError(
                f"serving endpoint '{calls.name}' was still updating to v{version} after {timeout_s:g} s ({state_of(endpoint)}); "
                "the workspace carries on with it. Materialize again to wait for it, or look at the endpoint's events."
            )
        sleep(poll_s)


def ensure_endpoint(
    client: WorkspaceClient,
    spec: EndpointSpec,
    version: str,
    *,
    timeout_s: float = 1200.0,
    poll_s: float = 10.0,
    secrets: Iterable[str | None] = (),
    log: Callable[[str], None] = lambda message: None,
    sleep: Callable[[float], None] = time.sleep,
) -> EndpointOutcome:
    """Make ``spec.name`` serve ``version`` of ``spec.model`` with its inference table enabled, and
    wait until it does. Returns what it did and the version served before."""
    from databricks.sdk.service.serving import AiGatewayConfig, EndpointTag

    version = str(version)
    calls = _Calls(client, spec.name, secrets)
    endpoint = calls.get()
    wait = {"model": spec.model, "timeout_s": timeout_s, "poll_s": poll_s, "sleep": sleep}
    if endpoint is None:
        log(f"creating serving endpoint {spec.name} for {spec.model} v{version}, inference table {spec.inference_table}")
        calls(
            "creating it",
            calls.api.create,
            spec.name,
            config=desired_config(spec, version),
            ai_gateway=AiGatewayConfig(inference_table_config=inference_table_config(spec)),
            tags=[EndpointTag(key="llmops_env", value=spec.env)],
        )
        ready = wait_ready(calls, version, **wait)
        return _outcome(spec, CREATED, ready, None)

    previous = served_version(endpoint, spec.model)
    if updating(endpoint):
        # An update is under way (an earlier run that timed out, or someone in the workspace):
        # another cannot start before it ends.
        underway = pending_version(endpoint, spec.model)
        log(f"serving endpoint {spec.name} is updating (to v{underway or '?'}); waiting for that first")
        # Whether that update took or not, ours follows it.
        endpoint = wait_ready(calls, underway or version, fail_on_failed_update=False, **wait)
        if underway == version and served_version(endpoint, spec.model) == version:
            return _outcome(spec, UPDATED, _with_inference_table(calls, spec, endpoint, log, wait), previous)
        previous = served_version(endpoint, spec.model)
    endpoint = _with_inference_table(calls, spec, endpoint, log, wait)
    same_variables = served_environment_vars(endpoint, spec.model) == spec.environment_vars
    if previous == version and same_variables:
        return _outcome(spec, UNCHANGED, endpoint, None)  # nothing moved; the caller keeps its record
    if previous == version:
        log(f"updating serving endpoint {spec.name}: v{version}'s environment variables changed ({', '.join(n for n, _ in spec.environment_vars)})")
    else:
        log(f"updating serving endpoint {spec.name}: {spec.model} v{previous or 'none'} → v{version}")
    calls(
        "updating its config",
        calls.api.update_config,
        spec.name,
        served_entities=served_entities(spec, version),
        traffic_config=traffic(spec, version),
    )
    ready = wait_ready(calls, version, **wait)
    if served_version(ready, spec.model) != version:
        raise EndpointError(f"serving endpoint '{spec.name}' finished its update but serves v{served_version(ready, spec.model)}, not v{version}")
    return _outcome(spec, UPDATED, ready, previous)


_GATEWAY_KEPT = ("fallback_config", "guardrails", "rate_limits", "usage_tracking_config")


def _with_inference_table(
    calls: _Calls, spec: EndpointSpec, endpoint: ServingEndpointDetailed, log: Callable[[str], None], wait: dict[str, Any]
) -> ServingEndpointDetailed:
    """The endpoint with its inference table on; where the gateway change sets it updating, once
    that is over, since a config update sent meanwhile would be refused (409)."""
    if inference_table_enabled(endpoint):
        return endpoint
    log(f"enabling the inference table {spec.inference_table} on {spec.name}")
    # The AI Gateway is replaced whole (PUT): its rate limits, guardrails, usage tracking and fallback are sent back as they are.
    gateway = endpoint.ai_gateway
    kept = {key: getattr(gateway, key) for key in _GATEWAY_KEPT if gateway is not None and getattr(gateway, key) is not None}
    calls("enabling its inference table", calls.api.put_ai_gateway, spec.name, inference_table_config=inference_table_config(spec), **kept)
    return wait_ready(calls, served_version(endpoint, spec.model) or "?", fail_on_failed_update=False, **wait)


def _outcome(spec: EndpointSpec, action: str, endpoint: ServingEndpointDetailed, previous: str | None) -> EndpointOutcome:
    return EndpointOutcome(
        name=spec.name,
        action=action,
        served_version=served_version(endpoint, spec.model),
        previous_version=previous,
        inference_table=spec.inference_table,
        inference_table_enabled=inference_table_enabled(endpoint),
        state=state_of(endpoint),
    )


# ---- llmops serve ----------------------------------------------------------------------------


def server_url(host: str, port: int) -> str:
    """Where a client reaches the server: a wildcard bind is reached on loopback."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def local_server_version(url: str, registered_model: str, timeout_s: float = HEALTH_TIMEOUT_S) -> str | None:
    """The version a running ``llmops serve`` of this registered model answers with, or None when no
    such server answers at ``url`` (or it is still loading)."""
    import httpx

    try:
        response = httpx.get(f"{url}/health", timeout=timeout_s)
        health = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    if response.status_code != 200 or not isinstance(health, dict) or health.get("model") != registered_model:
        return None
    return str(health["version"]) if health.get("version") is not None else None


# ---- the record on the registered model ------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """What an environment serves at one place, as last recorded: the version, the one before it
    (for rollback), where and when."""

    where: str  # databricks | local
    endpoint: str  # the endpoint's name, or the local server's URL
    version: str
    previous: str | None
    at: str
    run_id: str
    reported: str | None = None  # local: the version a running server answered with, if one did


def tag_key(where: str) -> str:
    return registry.tag_key(ENDPOINT_TAG.format(where=where))


def recorded(client: MlflowClient, model: str, where: str) -> Deployment | None:
    """The last deployment recorded for ``where`` on the registered model, if any."""
    from mlflow.exceptions import MlflowException

    try:
        tags: Mapping[str, str] = client.get_registered_model(model).tags
    except MlflowException:
        return None
    raw = registry.current_tags(tags).get(tag_key(where))
    if not raw:
        return None
    try:
        return Deployment(**json.loads(raw))
    except (TypeError, ValueError):
        return None  # written by something else: treat as not recorded


def record(client: MlflowClient, model: str, deployment: Deployment) -> None:
    client.set_registered_model_tag(model, tag_key(deployment.where), json.dumps(asdict(deployment)))


def previous_for(before: Deployment | None, version: str, previous: str | None) -> str | None:
    """The version to roll back to: what was served before this one. When nothing moved, the one
    recorded earlier stays."""
    if previous is not None and previous != version:
        return previous
    if before is not None and before.version != version:
        return before.version
    return before.previous if before is not None else None


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
