"""serving_endpoint: what serves the environment's champion, and which version it serves.

The champion moves through the registry (the champion sensor, ``llmops rollback``), not through a
materialization, so this asset has its own job, started by the ``champion_endpoint`` sensor
whenever the champion differs from what was last deployed; it is part of neither ingest nor adopt.
"""

from typing import TYPE_CHECKING, Any

import dagster as dg

from llmops_dagster.resources import PipesComputeResource, RegistryResource
from llmops_dagster.tags import OPERATOR_ENV_TAG

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

    from llmops_dagster.core.endpoint import Deployment, EndpointOutcome, EndpointSpec
    from llmops_dagster.settings import EnvSettings

SERVING_ENDPOINT = "serving_endpoint"
ENDPOINT_JOB = "update_endpoint"
GROUP = "serving"


class EndpointRunConfig(dg.Config):
    timeout_seconds: float = 1200.0  # Databricks: how long an endpoint update may take to go live
    poll_seconds: float = 10.0


def endpoint_key(env: str) -> dg.AssetKey:
    return dg.AssetKey([env, SERVING_ENDPOINT])


def build_serving_endpoint(settings: "EnvSettings") -> dg.AssetsDefinition:
    """The environment's ``serving_endpoint`` asset; its endpoint and local address come from the settings."""
    from llmops_dagster.core import endpoint
    from llmops_dagster.core.bundle import BundleEnvironment

    env = settings.name
    try:
        spec: EndpointSpec | None = endpoint.endpoint_spec(BundleEnvironment.from_settings(settings))
        unresolved = ""
    except ValueError as error:  # a local environment need not name a Unity Catalog model
        spec, unresolved = None, str(error)
    local_url = endpoint.server_url(settings.serving.host, settings.serving.port)
    described: dict[str, Any] = {"local_server": local_url}
    if spec is not None:
        described |= {"databricks_endpoint": spec.name, "inference_table": spec.inference_table, "workload_size": spec.workload_size}

    @dg.asset(
        key=endpoint_key(env),
        deps=[dg.AssetKey([env, "rag_model"])],
        group_name=GROUP,
        kinds={"databricks"} if settings.compute == endpoint.DATABRICKS else {"mlflow"},
        metadata=described,
    )
    def serving_endpoint(
        context: dg.AssetExecutionContext, config: EndpointRunConfig, registry: RegistryResource, compute: PipesComputeResource
    ) -> dg.MaterializeResult:
        """The version of the champion that serves requests. On Databricks (compute: databricks): a
        Model Serving endpoint pointed at the champion's version, with its inference table enabled.
        Locally: the version ``llmops serve`` follows, and the one a running server reports. The
        version served before is recorded on the registered model, for rollback."""
        from llmops_dagster.core.registry import CHAMPION, error_line, version_by_alias

        where = endpoint.DATABRICKS if compute.on_databricks else endpoint.LOCAL
        model = registry.registered_model
        try:
            client = registry.client()
            champion = version_by_alias(client, model, CHAMPION)
            before = endpoint.recorded(client, model, where)
        except Exception as error:  # noqa: BLE001 - an unreachable registry is one line, not a traceback
            raise dg.Failure(f"reading {model}: {error_line(error)}") from None
        if champion is None:
            context.log.warning(f"{model} has no champion yet; nothing was deployed")
            state = f"{model} has no champion yet: nothing to serve"
            return dg.MaterializeResult(metadata={"where": where, "state": state, "served_version": "none"})
        version = str(champion.version)
        if where == endpoint.DATABRICKS:
            if spec is None:
                raise dg.Failure(f"environment '{env}' has no Databricks serving endpoint: {unresolved}")
            outcome = _deploy_to_databricks(context, compute, spec, version, config)
            deployment = endpoint.Deployment(
                where, spec.name, version, endpoint.previous_for(before, version, outcome.previous_version), endpoint.now(), context.run.run_id
            )
            metadata = _databricks_metadata(outcome)
        else:
            reported = endpoint.local_server_version(local_url, model)
            deployment = endpoint.Deployment(
                where, local_url, version, endpoint.previous_for(before, version, None), endpoint.now(), context.run.run_id, reported
            )
            metadata = _local_metadata(deployment)
        try:
            endpoint.record(client, model, deployment)
        except Exception as error:  # noqa: BLE001
            raise dg.Failure(f"{deployment.endpoint} serves v{version}, but recording it on {model} failed: {error_line(error)}") from None
        previous = f"v{deployment.previous}" if deployment.previous else "none"
        context.log.info(f"{deployment.endpoint} ({where}): v{version}, previous {previous}")
        return dg.MaterializeResult(
            metadata={
                "where": where,
                "endpoint": deployment.endpoint,
                "registered_model": model,
                "served_version": version,
                "previous_version": deployment.previous or "none",
                **metadata,
            }
        )

    return serving_endpoint


def _deploy_to_databricks(
    context: dg.AssetExecutionContext, compute: PipesComputeResource, spec: "EndpointSpec", version: str, config: EndpointRunConfig
) -> "EndpointOutcome":
    from llmops_dagster.core import endpoint

    workspace = compute.workspace_client()  # checks the credentials first: nothing is sent without them
    # Masked out of any error text, should the workspace ever echo it.
    token = None if compute.profile else dg.EnvVar(compute.token_env).get_value()
    try:
        return endpoint.ensure_endpoint(
            workspace, spec, version, timeout_s=config.timeout_seconds, poll_s=config.poll_seconds, secrets=[token], log=context.log.info
        )
    except endpoint.EndpointError as error:
        raise dg.Failure(str(error)) from None


def _databricks_metadata(outcome: "EndpointOutcome") -> dict[str, Any]:
    return {
        "action": outcome.action,
        "state": outcome.state,
        "inference_table": outcome.inference_table,
        "inference_table_enabled": outcome.inference_table_enabled,
    }


def _local_metadata(deployment: "Deployment") -> dict[str, Any]:
    if deployment.reported is None:
        state = f"no llmops serve answers at {deployment.endpoint}; one started there serves v{deployment.version}"
    elif deployment.reported == deployment.version:
        state = f"llmops serve at {deployment.endpoint} serves v{deployment.version}"
    else:
        state = f"llmops serve at {deployment.endpoint} still serves v{deployment.reported}; it swaps v{deployment.version} in once loaded"
    return {
        "state": state,
        "server_reports": deployment.reported or "no server",
        "inference_table": "inference_log (Lance table written by llmops serve)",
    }


def build_endpoint_job(env: str) -> "UnresolvedAssetJobDefinition":
    # The operator tag, not the environment one: pointing the endpoint at a rolled-back champion must
    # not queue behind a long ingest run.
    return dg.define_asset_job(
        ENDPOINT_JOB,
        selection=dg.AssetSelection.assets(endpoint_key(env)),
        description=f"Point {env}'s serving endpoint at its champion (started by the champion_endpoint sensor)",
        tags={OPERATOR_ENV_TAG: env},
    )
