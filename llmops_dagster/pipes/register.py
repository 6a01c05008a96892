"""Registration and the gate as a Pipes process, the last step of the bundle's training job, and
what the ``rag_model`` asset runs when ``compute: databricks`` sends it there.

The RAG model is registered as the challenger by ``core.rag_model.register_rag_model`` (what the
``rag_model`` asset calls), carrying the retrieval the ``evaluate`` step selected. Then the gate
runs on it as the asset checks and the ``evaluation`` asset run it in Dagster: it loads and answers,
its signature is valid, and ``pipes.gate`` evaluates it and records every verdict on the version.
Launched for ``rag_model`` alone, the step stops after registering: Dagster runs those checks, and
the ``evaluation`` asset its own step.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmops_dagster.pipes._model import StepRefused, trained
from llmops_dagster.pipes._session import (
    arguments,
    asset_key,
    environment,
    launched_by_dagster,
    logger,
    mlflow_run,
    open_pipes,
    report,
    resources,
    run_key,
)
from llmops_dagster.pipes.gate import gate_challenger


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("register", argv)
    with open_pipes() as pipes:
        from llmops_dagster.assets.model_registry import MODEL_LOADS_AND_ANSWERS, SIGNATURE_VALID
        from llmops_dagster.assets.training import rag_model_metadata
        from llmops_dagster.core.rag_model import challenger_spec, loads_and_answers, register_rag_model, signature_verdict
        from llmops_dagster.core.selection import recorded_selection, selection_problem
        from llmops_dagster.core.training import deployable_adapter

        log = logger(pipes)
        settings = environment(args, pipes)
        built = resources(settings)
        registry = built["registry"]
        with mlflow_run(pipes, registry, settings.name, "register") as mlflow_run_id:
            key = run_key(pipes, mlflow_run_id)
            model = trained(settings, built, mlflow_run_id, "register")
            client = registry.client()
            adapter, variant, warning = deployable_adapter(model.record)
            if warning:
                log.warning(warning)
            config, chosen = built["rag"].config(), None
            if config.select_by_evaluation:
                chosen = recorded_selection(client, registry.experiment, mlflow_run_id)
                problem = "none was recorded" if chosen is None else selection_problem(chosen, config)
                if problem:
                    raise StepRefused(f"no retrieval selection to register in {registry.experiment} ({problem}); run the evaluate step first")
                config = chosen.winner
            ann, device = built["vector_index"].params(), built["embedder"].config().device
            spec = challenger_spec(model.lance.uri, model.table, model.index_fingerprint, config, ann, variant, device)
            registered = register_rag_model(
                client, registry.registered_model, spec, model.embedder.model_path, adapter, key, str(model.record["mlflow_run_id"])
            )
            name, version = registered.name, registered.version
            log.info(f"{name} v{version} is the challenger" + (" (an equal version, reused)" if registered.reused else ""))
            report(pipes, {**rag_model_metadata(registered, chosen, mlflow_run_id), "compute": "pipes"}, asset="rag_model")

            if launched_by_dagster(pipes) and asset_key(pipes, "evaluation") is None:
                return  # the rag_model asset: its evaluation is the next asset's step
            smoke = {
                MODEL_LOADS_AND_ANSWERS: loads_and_answers(name, version, model.lance.uri, built["evaluation"].gate().smoke_question),
                SIGNATURE_VALID: signature_verdict(name, version),
            }
            gate_challenger(pipes, settings, built, model.record, mlflow_run_id, log, version, found=smoke)


if __name__ == "__main__":
    main()
