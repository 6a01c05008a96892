"""Batch inference: answer the landing zone's questions with the serving model and write the rows.

One code path for both places the step runs: the ``batch_predictions`` asset (in process) and the
``llmops_dagster.pipes.predict`` entry point (a subprocess, or a Databricks job). Rows are keyed
by Dagster run and question, so running the same Dagster run again replaces its rows instead of
adding them twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from llmops_dagster.core import registry as model_registry
from llmops_dagster.core import store

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from llmops_dagster.core.questions import Question

Log = Callable[[str], None]


class NoServingModel(RuntimeError):
    """The registered model has neither a champion nor a challenger."""


@dataclass(frozen=True)
class ServingModel:
    name: str
    alias: str
    version: str
    status: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class BatchResult:
    model: ServingModel
    rows: list[dict[str, Any]]
    rejected: list[str]
    write: store.WriteResult
    total_rows: int
    engine: str

    @property
    def found(self) -> int:
        return sum(1 for row in self.rows if row["found"])

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["error"]]

    def summary(self) -> str:
        return (
            f"**{len(self.rows)}** question(s) answered by **{self.model.alias} v{self.model.version}** ({self.model.status}) "
            f"on the {self.engine} engine; {self.found} with an answer, {len(self.rows) - self.found} without "
            f"({len(self.failed)} of them because generation failed); {len(self.rejected)} line(s) rejected."
        )

    def metadata(self) -> dict[str, Any]:
        """Plain values (no Dagster types), so the Pipes entry point can report them as they are."""
        return {
            "dagster/row_count": self.total_rows,
            "table_version": self.write.version,
            "questions_this_run": len(self.rows),
            "rejected_lines": len(self.rejected),
            "model_alias": self.model.alias,
            "model_version": self.model.version,
            "validation_status": self.model.status,
            "engine": self.engine,
            "generation_failures": len(self.failed),
            "prompt_tokens": sum(row["prompt_tokens"] for row in self.rows),
            "completion_tokens": sum(row["completion_tokens"] for row in self.rows),
        }


def serving_model(client: MlflowClient, name: str) -> ServingModel:
    """The model that should answer: the champion, else the challenger."""
    serving = model_registry.serving_version(client, name)
    if serving is None:
        raise NoServingModel(f"{name} has neither a champion nor a challenger; materialize rag_model first")
    alias, version = serving
    return ServingModel(name, alias, str(version.version), version.tags.get(model_registry.VALIDATION_STATUS, model_registry.PENDING))


def prediction_rows(
    run_id: str, questions: Sequence[Question], answers: pd.DataFrame | None, model: ServingModel, now: datetime
) -> list[dict[str, Any]]:
    """One ``batch_predictions`` row per question, keyed by run and question origin."""
    rows = []
    for position, question in enumerate(questions):
        answer = answers.iloc[position]
        rows.append(
            {
                "id": store.row_id(run_id, question.origin),
                "dagster_run_id": run_id,
                "origin": question.origin,
                "question": question.question,
                "answer": answer["answer"],
                "found": bool(answer["found"]),
                "passages": list(answer["passages"]),
                "sources": list(answer["sources"]),
                "scores": [float(s) for s in answer["scores"]],
                "model_name": model.name,
                "model_version": model.version,
                "model_alias": model.alias,
                "latency_ms": float(answer["latency_ms"]),
                "predicted_at": now,
                # Versions registered before generators were configurable return none of these.
                "cited": [int(n) for n in answer.get("cited", [])],
                "prompt_tokens": int(answer.get("prompt_tokens", 0)),
                "completion_tokens": int(answer.get("completion_tokens", 0)),
                "generator": answer.get("generator") or "",
                "error": answer.get("error") or "",
            }
        )
    return rows


def answer(
    model: ServingModel, texts: list[str], lancedb_uri: str, engine: str, spark_master: str = "local[*]", spark_remote: str | None = None
) -> pd.DataFrame | None:
    """The model's answers, in process or as a Spark UDF; None when there is nothing to ask."""
    from llmops_dagster.core.rag_model import predict_local, predict_spark

    if not texts:
        return None
    if engine == "spark":
        from llmops_dagster.core.spark import spark_session

        return predict_spark(spark_session(spark_master, spark_remote), model.uri, texts, lancedb_uri)
    return predict_local(model.uri, texts, lancedb_uri)


def predict_batch(
    run_id: str,
    landing: Path,
    lance: store.LanceStore,
    client: MlflowClient,
    registered_model: str,
    engine: str = "local",
    spark_master: str = "local[*]",
    spark_remote: str | None = None,
    log: Log = lambda _: None,
    warn: Log = lambda _: None,
) -> BatchResult:
    """Answer every valid question of the landing zone and upsert the rows in one commit."""
    from llmops_dagster.core.questions import landing_questions

    questions, rejected = landing_questions(landing)
    for problem in rejected:
        warn(f"question skipped: {problem}")
    model = serving_model(client, registered_model)
    log(f"answering {len(questions)} question(s) with {model.alias} v{model.version} ({model.status}) on the {engine} engine")
    answers = answer(model, [q.question for q in questions], lance.uri, engine, spark_master, spark_remote)
    rows = prediction_rows(run_id, questions, answers, model, datetime.now(UTC))
    write = lance.apply(store.PREDICTIONS, store.PREDICTIONS_SCHEMA, "id", pa.Table.from_pylist(rows, store.PREDICTIONS_SCHEMA), [])
    result = BatchResult(model, rows, [str(r) for r in rejected], write, lance.count(store.PREDICTIONS), engine)
    for row in result.failed[:5]:
        warn(f"{row['origin']}: {row['error']}")
    return result
