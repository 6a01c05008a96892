"""The gate as a Pipes process: what the ``evaluation`` asset runs when ``compute: databricks``
sends it there (``llmops-pipes-gate``), and the second half of the bundle's ``register`` step.

The challenger is scored by ``core.comparison.evaluate_challenger`` on the evaluation set kept in the
MLflow run, every verdict is recorded on the version, so that promotion, which reads the registry
alone, can act on it, and each is reported back as the ``evaluation`` asset's check.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import Logger
from typing import TYPE_CHECKING, Any

from llmops_dagster.pipes._model import StepRefused, evaluation_items, training
from llmops_dagster.pipes._session import arguments, asset_key, environment, logger, mlflow_run, open_pipes, report, resources, run_key

if TYPE_CHECKING:
    from dagster_pipes import PipesContext

    from llmops_dagster.core.checks import Verdict
    from llmops_dagster.settings import EnvSettings


def gate_challenger(
    pipes: PipesContext,
    settings: EnvSettings,
    built: dict[str, Any],
    record: dict[str, Any] | None,
    mlflow_run_id: str,
    log: Logger,
    version: str | None = None,
    found: dict[str, Verdict] | None = None,
) -> None:
    """Evaluate the challenger (``version``, else the one the alias names) against training
    ``record`` (None where the environment adopts its model), record ``found`` (verdicts the caller
    reached first) and the gate's verdicts on the version, and report them with the ``evaluation``
    materialization."""
    from llmops_dagster.assets.gate import evaluation_metadata, gate_verdicts, navigation_verdict
    from llmops_dagster.assets.model_registry import MEETS_THRESHOLDS, NO_NAVIGATION_IN_TOP_RESULTS, REQUIRED_CHECKS
    from llmops_dagster.core import registry as model_registry
    from llmops_dagster.core import store
    from llmops_dagster.core.comparison import evaluate_challenger
    from llmops_dagster.core.training import trained_adapter

    registry, key = built["registry"], run_key(pipes, mlflow_run_id)
    client, name = registry.client(), registry.registered_model
    if version is None:
        challenger = model_registry.version_by_alias(client, name, model_registry.CHALLENGER)
        if challenger is None:
            raise StepRefused(f"{name} has no '{model_registry.CHALLENGER}' version; run the register step (or materialize rag_model) first")
        version = str(challenger.version)
    items, gold_skipped = evaluation_items(settings, built, record, mlflow_run_id, log.warning)
    lance = built["lancedb"].store()
    evaluated = evaluate_challenger(client, name, version, lance, items, trained_adapter(record), built["evaluation"].gate(), key, log=log.info)
    status, statuses = model_registry.PENDING, {}
    verdicts = {**(found or {}), **gate_verdicts(evaluated)}
    for check, verdict in verdicts.items():
        recorded = evaluated.recorded if check == MEETS_THRESHOLDS else None
        status = statuses[check] = model_registry.record_check(client, name, version, check, verdict.passed, REQUIRED_CHECKS, key, recorded)
        log.info(f"{check}: {'passed' if verdict.passed else 'FAILED'}: {verdict.description}")
    log.info(f"{name} v{version}: {model_registry.VALIDATION_STATUS} {status}")
    # The materialization first: Dagster attaches each check result to the asset's latest materialization.
    metadata = evaluation_metadata(evaluated, lance.count(store.EVALUATIONS), gold_skipped)
    report(pipes, {**metadata, model_registry.VALIDATION_STATUS: status, "compute": "pipes"}, asset="evaluation")
    for check, verdict in verdicts.items():
        report_check(pipes, check, verdict, {"model_version": version, model_registry.VALIDATION_STATUS: statuses[check]})
    report_check(pipes, NO_NAVIGATION_IN_TOP_RESULTS, navigation_verdict(evaluated), {}, severity="WARN")


def report_check(pipes: PipesContext, check: str, verdict: Verdict, metadata: dict[str, Any], severity: str = "ERROR") -> None:
    """The verdict as a check of the ``evaluation`` asset, when the launching step materializes it
    and the check is one that asset declares (the smoke checks are ``rag_model``'s, run in Dagster).
    The launching step must declare the same checks, as the ``evaluation`` asset does: Dagster
    refuses a check result it does not expect."""
    from llmops_dagster.assets.gate import evaluation
    from llmops_dagster.pipes._session import pipes_value

    key = asset_key(pipes, "evaluation")
    if key is None or check not in {spec.name for spec in evaluation.check_specs}:
        return
    values = {"verdict": verdict.description, **verdict.metadata, **metadata}
    pipes.report_asset_check(check, verdict.passed, severity, {name: pipes_value(value) for name, value in values.items()}, key)


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("gate", argv)
    with open_pipes() as pipes:
        log = logger(pipes)
        settings = environment(args, pipes)
        built = resources(settings)
        with mlflow_run(pipes, built["registry"], settings.name, "gate") as mlflow_run_id:
            record = training(built, mlflow_run_id) if built["training"].trains else None  # None: it adopts its model
            gate_challenger(pipes, settings, built, record, mlflow_run_id, log)


if __name__ == "__main__":
    main()
