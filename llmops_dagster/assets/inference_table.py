"""inference_table: the Databricks serving endpoint's requests, read into ``inference_log``.

Defined for an environment whose endpoint is on Databricks (``compute: databricks``) and that names
the SQL warehouse to read with (``databricks.warehouse_id``). Every 15 minutes a schedule imports
what the endpoint's AI Gateway inference table gained (``core.inference_table``); the
``new_requests`` sensor then sees the rows in ``inference_log`` and monitors their windows, as it
does for ``llmops serve``'s.
"""

from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import dagster as dg

from llmops_dagster.resources import EmbedderResource, LanceDBResource, PipesComputeResource
from llmops_dagster.tags import ENV_TAG

if TYPE_CHECKING:
    from llmops_dagster.settings import EnvSettings

INFERENCE_TABLE = "inference_table"
IMPORT_JOB = "import_inference_table"
IMPORT_CRON = "*/15 * * * *"
GROUP = "serving"


def inference_table_key(env: str) -> dg.AssetKey:
    return dg.AssetKey([env, INFERENCE_TABLE])


def token_counter(embedder: EmbedderResource):  # noqa: ANN201 - Callable[[str], int]
    """Tokens of a text by the index's tokenizer, without special tokens, as the server counts
    them; only the tokenizer is loaded."""
    from llmops_dagster.core.embedding import load_tokenizer, resolve_model_path

    tokenizer, _ = load_tokenizer(str(resolve_model_path(embedder.config().model)))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


class InferenceTableImport(NamedTuple):
    asset: dg.AssetsDefinition
    job: Any  # the unresolved asset job
    schedule: dg.ScheduleDefinition
    lookback: timedelta  # how far behind its request a row may still be imported


def build_inference_table(settings: "EnvSettings") -> InferenceTableImport | None:
    """The asset, its job and its schedule; None where the environment's endpoint is not on
    Databricks or no warehouse is named to read its table with."""
    from llmops_dagster.core import endpoint, inference_table
    from llmops_dagster.core.bundle import BundleEnvironment

    warehouse_id = settings.databricks.warehouse_id
    if settings.compute != endpoint.DATABRICKS or not warehouse_id:
        return None
    env = settings.name
    spec = endpoint.endpoint_spec(BundleEnvironment.from_settings(settings))
    lookback = timedelta(hours=settings.databricks.inference_table_lookback_hours)

    @dg.asset(
        key=inference_table_key(env),
        deps=[dg.AssetKey([env, "serving_endpoint"])],
        group_name=GROUP,
        kinds={"databricks", "lancedb"},
        metadata={"inference_table": spec.inference_table, "warehouse_id": warehouse_id, "lookback_hours": lookback.total_seconds() / 3600},
    )
    def inference_table_asset(
        context: dg.AssetExecutionContext, compute: PipesComputeResource, lancedb: LanceDBResource, embedder: EmbedderResource
    ) -> dg.MaterializeResult:
        """The requests the Databricks endpoint logged to its inference table since the last import
        (less the lookback, since rows arrive late), added to ``inference_log`` by request id: the
        columns of the table, the question and params from the request, the answer, sources, scores
        and usage from the response, the served version from ``system.serving.served_entities``."""
        warehouse = inference_table.Warehouse(compute.workspace_client(), warehouse_id)
        lance = lancedb.store()
        try:
            result = inference_table.import_requests(
                warehouse,
                spec,
                lance,
                start=settings.monitoring.start,
                lookback=lookback,
                count_tokens=token_counter(embedder),
                field_chars=settings.serving.log_field_chars,
                log=context.log.info,
            )
        except inference_table.InferenceTableError as error:
            raise dg.Failure(str(error)) from None
        if result.versions_unknown:
            context.log.warning(f"served versions unknown: {result.versions_unknown}")
        if result.sampled is not None:
            context.log.warning(f"Databricks logged as few as {result.sampled:.0%} of the endpoint's requests: monitoring counts the logged ones")
        context.log.info(result.summary())
        return dg.MaterializeResult(
            metadata={
                "inference_table": spec.inference_table,
                "read_since": result.since.isoformat(),
                "rows_read": result.read,
                "rows_added": result.added,
                "pages": result.pages,
                "newest_request": result.newest.isoformat() if result.newest else "none",
                "served_versions": "unknown: " + result.versions_unknown if result.versions_unknown else f"from {inference_table.VERSIONS_TABLE}",
                "lowest_sampling_fraction": result.sampled if result.sampled is not None else 1.0,
                "summary": dg.MetadataValue.md(result.summary()),
            }
        )

    job = dg.define_asset_job(
        IMPORT_JOB,
        selection=dg.AssetSelection.assets(inference_table_key(env)),
        description=f"Read {spec.inference_table} into inference_log ({env})",
        tags={ENV_TAG: env},
    )
    schedule = dg.ScheduleDefinition(
        name=f"{IMPORT_JOB}_schedule", job=job, cron_schedule=IMPORT_CRON, execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING
    )
    return InferenceTableImport(inference_table_asset, job, schedule, lookback)
