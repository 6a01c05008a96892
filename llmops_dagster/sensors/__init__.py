"""Sensors: new documents in the landing zone, and promotion within and across environments."""

from llmops_dagster.sensors.documents import NEW_DOCUMENTS, build_new_documents_sensor
from llmops_dagster.sensors.promotion import CHAMPION_SENSOR, UPSTREAM_SENSOR, build_champion_sensor, build_upstream_sensor

__all__ = [
    "CHAMPION_SENSOR",
    "NEW_DOCUMENTS",
    "UPSTREAM_SENSOR",
    "build_champion_sensor",
    "build_new_documents_sensor",
    "build_upstream_sensor",
]
