"""The process settings the project runs under. Entry points set them (the llmops CLI, the Dagster
code location, the pyfunc MLflow loads, Spark's Python workers); library code never changes the
process environment on import or use."""

from __future__ import annotations

import os


def offline() -> None:
    """Model hubs are never reached (every model is a local folder), and LanceDB logs errors only (it
    warns about upcoming API changes on every query). Values set by the user are kept."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LANCEDB_LOG", "error")
