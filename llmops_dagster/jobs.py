"""Operator jobs for the Dagster UI, equivalent to ``llmops approve`` and ``llmops rollback``.

Launch them from the Launchpad with run config; the run records who asked (the ``dagster/user``
tag where the UI sets one, else the name given in the config).
"""

import dagster as dg

from llmops_dagster.resources import RegistryResource
from llmops_dagster.tags import OPERATOR_ENV_TAG

ROLLBACK_JOB = "rollback"
APPROVE_JOB = "approve"


class RollbackConfig(dg.Config):
    to: str | None = None  # a version that was champion before; empty: the previous champion
    by: str = "dagster-ui"


class ApproveConfig(dg.Config):
    version: str
    by: str = "dagster-ui"


def _actor(context: dg.OpExecutionContext, given: str) -> str:
    return f"{context.run.tags.get('dagster/user', given)} (run {context.run_id})"


@dg.op(description="Move champion back to the most recent earlier champion not rolled back (or to `to`), using the recorded history.")
def rollback_champion(context: dg.OpExecutionContext, config: RollbackConfig, registry: RegistryResource) -> str:
    from llmops_dagster.core import promotion

    try:
        entry = promotion.rollback(registry.client(), registry.registered_model, _actor(context, config.by), config.to)
    except promotion.PromotionError as error:
        raise dg.Failure(str(error)) from None
    context.log.info(f"{registry.registered_model}: champion v{entry.previous} → v{entry.version}")
    return entry.version


@dg.op(description="Approve a validated version for promotion; the champion sensor then promotes it.")
def approve_version(context: dg.OpExecutionContext, config: ApproveConfig, registry: RegistryResource) -> str:
    from llmops_dagster.core import promotion

    try:
        kind = promotion.approve(registry.client(), registry.registered_model, config.version, _actor(context, config.by))
    except promotion.PromotionError as error:
        raise dg.Failure(str(error)) from None
    if kind == promotion.CHALLENGER_APPROVED:
        follows = "the champion sensor promotes it"
    else:
        follows = f"the rollback job with `to: {config.version}` restores it"
    context.log.info(f"{registry.registered_model} v{config.version} approved as the {kind}; {follows}")
    return config.version


def operator_jobs(env: str, requires_approval: bool) -> list[dg.JobDefinition]:
    # Not the llmops/env tag: an operator's rollback must not queue behind a long ingest run.
    tags = {OPERATOR_ENV_TAG: env}

    @dg.job(name=ROLLBACK_JOB, tags=tags, description="Put the previous champion back (llmops rollback).")
    def rollback() -> None:
        rollback_champion()

    jobs = [rollback]
    if requires_approval:

        @dg.job(name=APPROVE_JOB, tags=tags, description="Approve a validated version for promotion (llmops approve).")
        def approve() -> None:
            approve_version()

        jobs.append(approve)
    return jobs
