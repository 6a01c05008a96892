"""Entry point MLflow runs to build the RAG pyfunc when a version is loaded (models from code)."""

import mlflow

from llmops_dagster.core.rag_model import RagModel

mlflow.models.set_model(RagModel())
