"""Sensors: new documents in the landing zone, promotion within and across environments, the
server's inference log, and the serving endpoint following the champion."""

from llmops_dagster.sensors.documents import NEW_DOCUMENTS, build_new_documents_sensor
from llmops_dagster.sensors.endpoint import ENDPOINT_SENSOR, build_endpoint_sensor
from llmops_dagster.sensors.promotion import CHAMPION_SENSOR, UPSTREAM_SENSOR, build_champion_sensor, build_upstream_sensor
from llmops_dagster.sensors.serving import INFERENCE_LOG_SENSOR, build_inference_log_sensor

__all__ = [
    "CHAMPION_SENSOR",
    "ENDPOINT_SENSOR",
    "INFERENCE_LOG_SENSOR",
    "NEW_DOCUMENTS",
    "UPSTREAM_SENSOR",
    "build_champion_sensor",
    "build_endpoint_sensor",
    "build_inference_log_sensor",
    "build_new_documents_sensor",
    "build_upstream_sensor",
]
