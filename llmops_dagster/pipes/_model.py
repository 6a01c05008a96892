"""What the model steps (``train``, ``evaluate``, ``register``, ``gate``) share: the refusal in an
environment that adopts its model instead of training it, the index they work on, the training they
build on, read from MLflow as the ``rag_model`` asset reads it, and the evaluation set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lancedb.table import Table

    from llmops_dagster.core.embedding import Embedder
    from llmops_dagster.core.evaluation import EvalItem
    from llmops_dagster.core.store import LanceStore
    from llmops_dagster.settings import EnvSettings


class StepRefused(RuntimeError):
    """The step cannot run in this environment, or not yet; the message says what to do."""


def must_train(settings: EnvSettings, built: dict[str, Any], step: str) -> None:
    if not built["training"].trains:
        raise StepRefused(
            f"environment '{settings.name}' does not train: it adopts {settings.promotion.source}'s champion "
            f"(promotion.source), so its {step} step has nothing to do"
        )


def index(settings: EnvSettings, built: dict[str, Any]) -> tuple[LanceStore, Table]:
    """The environment's store and its embeddings table, refused while it is empty."""
    from llmops_dagster.core import store

    lance = built["lancedb"].store()
    table = lance.open(store.EMBEDDINGS)
    if table is None or table.count_rows() == 0:
        raise StepRefused(f"{settings.name}: the embeddings table is empty; run the ingest step (or materialize embeddings) first")
    return lance, table


@dataclass
class Trained:
    """What the RAG model steps build on: the index, the embedder and the training."""

    lance: LanceStore
    table: Table
    index_fingerprint: str
    embedder: Embedder
    record: dict[str, Any]  # registry.training_record


def trained(settings: EnvSettings, built: dict[str, Any], mlflow_run_id: str, step: str) -> Trained:
    """This MLflow run's training when it trained (a Dagster run), else the newest (the bundle's
    training job, whose steps each have a run of their own); refused before any training."""
    from llmops_dagster.core.rag import index_models, index_problem

    must_train(settings, built, step)
    lance, table = index(settings, built)
    fingerprint = built["chunker"].index_fingerprint()
    problem = index_problem(index_models(table), fingerprint)
    if problem:
        raise StepRefused(f"{problem}; run the ingest step (or materialize embeddings) first")
    return Trained(lance, table, fingerprint, built["embedder"].load(), training(built, mlflow_run_id))


def training(built: dict[str, Any], mlflow_run_id: str) -> dict[str, Any]:
    """``registry.training_record`` of this MLflow run (or the experiment's newest); refused before any training."""
    from llmops_dagster.core.registry import training_record

    registry = built["registry"]
    record = training_record(registry.client(), registry.experiment, mlflow_run_id)
    if record is None:
        raise StepRefused(f"nothing was trained in {registry.experiment} yet; run the train step (or materialize embedding_model) first")
    return record


def evaluation_items(
    settings: EnvSettings, built: dict[str, Any], record: dict[str, Any] | None, mlflow_run_id: str, warn: Any
) -> tuple[list[EvalItem], int]:
    """The held-out pairs of training ``record`` (None: pairs mined from the index, where the
    environment adopts its model) and the landing zone's gold questions, kept in MLflow run
    ``mlflow_run_id`` by the first step that needs them, as the assets take them."""
    from llmops_dagster.core.evaluation import landing_evaluation_set, run_evaluation_set
    from llmops_dagster.core.training import evaluation_pairs

    def build() -> tuple[list[EvalItem], list[str]]:
        lance, table = index(settings, built)
        return landing_evaluation_set(evaluation_pairs(record, table, built["training"].config()), settings.landing, lance)

    return run_evaluation_set(built["registry"].client(), mlflow_run_id, build, warn=warn)
