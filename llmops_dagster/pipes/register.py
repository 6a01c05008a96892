"""Registration and the gate as a Pipes process, the last step of the bundle's training job.

The RAG model is registered as the challenger by ``core.rag_model.register_rag_model`` (what the
``rag_model`` asset calls), carrying the retrieval the ``evaluate`` step selected. Then the gate
runs on it as the asset checks and the ``evaluation`` asset run it in Dagster (it loads and answers,
its signature is valid, ``core.comparison.evaluate_challenger``), and every verdict is recorded on
the version, so that promotion, which reads the registry alone, can act on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmops_dagster.pipes._model import StepRefused, evaluation_items, trained
from llmops_dagster.pipes._session import arguments, environment, logger, mlflow_run, open_pipes, report, resources, run_key


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("register", argv)
    with open_pipes() as pipes:
        from llmops_dagster.assets.gate import evaluation_metadata, gate_verdicts
        from llmops_dagster.assets.model_registry import MEETS_THRESHOLDS, MODEL_LOADS_AND_ANSWERS, REQUIRED_CHECKS, SIGNATURE_VALID
        from llmops_dagster.assets.training import rag_model_metadata
        from llmops_dagster.core import registry as model_registry
        from llmops_dagster.core import store
        from llmops_dagster.core.comparison import evaluate_challenger
        from llmops_dagster.core.rag_model import challenger_spec, loads_and_answers, register_rag_model, signature_verdict
        from llmops_dagster.core.selection import recorded_selection, selection_problem
        from llmops_dagster.core.training import deployable_adapter, load_adapter

        log = logger(pipes)
        settings = environment(args, pipes)
        built = resources(settings)
        registry, marker = built["registry"], {"compute": "pipes"}
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
            report(pipes, {**rag_model_metadata(registered, chosen, mlflow_run_id), **marker}, asset="rag_model")

            gate = built["evaluation"].gate()
            verdicts = {
                MODEL_LOADS_AND_ANSWERS: loads_and_answers(name, version, model.lance.uri, gate.smoke_question),
                SIGNATURE_VALID: signature_verdict(name, version),
            }
            items, gold_skipped = evaluation_items(settings, built, model, mlflow_run_id, log.warning)
            trained_adapter = load_adapter(model.record) if model.record["has_adapter"] else None
            evaluated = evaluate_challenger(client, name, version, model.lance, items, trained_adapter, gate, key, log=log.info)
            verdicts.update(gate_verdicts(evaluated))
            status = model_registry.PENDING
            for check, verdict in verdicts.items():
                recorded = evaluated.recorded if check == MEETS_THRESHOLDS else None
                status = model_registry.record_check(client, name, version, check, verdict.passed, REQUIRED_CHECKS, key, recorded)
                log.info(f"{check}: {'passed' if verdict.passed else 'FAILED'}: {verdict.description}")
            log.info(f"{name} v{version}: {model_registry.VALIDATION_STATUS} {status}")
            metadata = evaluation_metadata(evaluated, model.lance.count(store.EVALUATIONS), gold_skipped)
            report(pipes, {**metadata, model_registry.VALIDATION_STATUS: status, **marker}, asset="evaluation")


if __name__ == "__main__":
    main()
