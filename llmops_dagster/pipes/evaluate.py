"""Retrieval selection as a Pipes process, the step between ``train`` and ``register`` in the
bundle's training job: every retrieval candidate scored on the select half of the evaluation set,
by ``core.selection.select_retrieval``, the function the ``rag_model`` asset calls before it
registers. The candidates' figures go to the ``evaluations`` table and the selection to the MLflow
run, where the ``register`` step reads it."""

from __future__ import annotations

from collections.abc import Sequence

from llmops_dagster.pipes._model import evaluation_items, must_train, trained
from llmops_dagster.pipes._session import arguments, environment, logger, mlflow_run, open_pipes, resources, run_key


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("evaluate", argv)
    with open_pipes() as pipes:
        from llmops_dagster.core.rag import QueryEncoder
        from llmops_dagster.core.selection import select_retrieval
        from llmops_dagster.core.training import deployable_adapter

        log = logger(pipes)
        settings = environment(args, pipes)
        built = resources(settings)
        must_train(settings, built, "evaluate")
        config = built["rag"].config()
        if not config.select_by_evaluation:
            log.info(f"rag.select_by_evaluation is off in {settings.name}: register takes the configured retrieval ({config.retrieval_label()})")
            return
        with mlflow_run(pipes, built["registry"], settings.name, "evaluate") as mlflow_run_id:
            model = trained(settings, built, mlflow_run_id, "evaluate")
            adapter, _, _ = deployable_adapter(model.record)
            items, _ = evaluation_items(settings, built, model.record, mlflow_run_id, log.warning)
            encoder = QueryEncoder(model.embedder, adapter)
            params = built["vector_index"].params()
            chosen = select_retrieval(config, encoder, model.table, params, items, model.lance, run_key(pipes, mlflow_run_id))
        log.info(chosen.summary())


if __name__ == "__main__":
    main()
