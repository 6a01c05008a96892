"""Entry point MLflow runs to build the RAG pyfunc when a version is loaded (models from code)."""

import mlflow

from llmops_dagster.core.runtime import offline

offline()

from llmops_dagster.core.rag_model import RagModel  # noqa: E402

mlflow.models.set_model(RagModel())
