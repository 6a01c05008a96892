"""Sensors: react to the landing zone (promotion sensors arrive with the promotion issue)."""

from llmops_dagster.sensors.documents import NEW_DOCUMENTS, build_new_documents_sensor

__all__ = ["NEW_DOCUMENTS", "build_new_documents_sensor"]
