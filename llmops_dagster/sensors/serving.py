"""inference_log: an observation of the table whenever ``llmops serve`` has written to it."""

from __future__ import annotations

import dagster as dg

from llmops_dagster.core import inference_log
from llmops_dagster.resources import LanceDBResource

INFERENCE_LOG_SENSOR = "inference_log"


def build_inference_log_sensor(env: str, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=INFERENCE_LOG_SENSOR,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records an observation of inference_log (rows, last request, versions seen) when the server wrote to it",
    )
    def observe_inference_log(context: dg.SensorEvaluationContext, lancedb: LanceDBResource) -> dg.SensorResult | dg.SkipReason:
        facts = inference_log.summary(lancedb.store())
        version = str(facts["table_version"])
        if version == context.cursor or not facts["rows"]:
            return dg.SkipReason(f"inference_log unchanged ({facts['rows']} rows, table version {version})")
        observation = dg.AssetObservation(
            asset_key=dg.AssetKey([env, "inference_log"]),
            metadata=inference_log.metadata(facts),
            tags={"dagster/data_version": version},
        )
        return dg.SensorResult(asset_events=[observation], cursor=version)

    return observe_inference_log
