"""Promotion sensors: they read the MLflow registry, never only run statuses (a failed check does
not fail a run, so a run-failure sensor would miss it).

- ``champion``: in every environment, moves ``champion`` to the challenger once its
  ``validation_status`` is PASSED (and, where required, it is approved), and records the history.
- ``upstream_champion``: in an environment with a ``promotion.source``, starts the ``adopt`` job
  when the source has a new validated champion, which copies it here and evaluates it on this
  environment's data.

A registry that cannot be reached fails the tick with the error (shown in the UI), no alias moves,
and the cursor stays where it was, so the next tick tries again.
"""

from __future__ import annotations

import json

import dagster as dg

from llmops_dagster.resources import LanceDBResource, RegistryResource, UpstreamRegistryResource
from llmops_dagster.tags import ADOPT_TAG, SOURCE_VERSION_TAG, TRIGGER_TAG

CHAMPION_SENSOR = "champion"
UPSTREAM_SENSOR = "upstream_champion"
MAX_ADOPT_ATTEMPTS = 3


class RegistryUnavailableError(RuntimeError):
    """The MLflow registry could not be read or written; nothing was changed."""


def _registry_call(what: str, call, *args, **kwargs):
    from llmops_dagster.core.promotion import PromotionError
    from llmops_dagster.core.registry import error_line

    try:
        return call(*args, **kwargs)
    except PromotionError:
        raise
    except Exception as error:  # an unreachable store surfaces as requests or sqlalchemy errors
        raise RegistryUnavailableError(f"{what}: {error_line(error)}") from None


def build_champion_sensor(env: str, requires_approval: bool, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=CHAMPION_SENSOR,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Moves the champion alias to the challenger once every blocking check passed"
            + (" and a person approved it" if requires_approval else "")
            + "; records who, when and the previous champion."
        ),
    )
    def champion(context: dg.SensorEvaluationContext, registry: RegistryResource):
        from llmops_dagster.core import promotion

        client = _registry_call("connecting to the registry", registry.client)
        name = registry.registered_model
        decision = _registry_call(f"reading {name}", promotion.champion_decision, client, name, requires_approval)
        if decision.awaiting_approval:
            return dg.SkipReason(f"{decision.reason}: llmops approve --env {env} --version {decision.awaiting_approval}, or the approve job")
        if decision.version is None:
            return dg.SkipReason(decision.reason)
        actor = f"sensor:{env}/{CHAMPION_SENSOR}"
        try:
            entry = _registry_call(f"promoting {name} v{decision.version}", promotion.promote, client, name, decision.version, actor, decision.reason)
        except promotion.PromotionError as error:  # another writer promoted it between our read and write
            return dg.SkipReason(str(error))
        context.update_cursor(json.dumps({"champion": entry.version, "at": entry.at}))
        observation = dg.AssetObservation(
            asset_key=dg.AssetKey([env, "rag_model"]),
            metadata={
                "champion": entry.version,
                "previous_champion": entry.previous or "none",
                "promoted_by": entry.actor,
                "reason": entry.reason,
                "at": entry.at,
            },
        )
        return dg.SensorResult(asset_events=[observation], skip_reason=f"champion is now v{entry.version} (was {entry.previous or 'none'})")

    return champion


def build_upstream_sensor(job_name: str, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=UPSTREAM_SENSOR,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adopts the source environment's new validated champion: copies it here and evaluates it on this environment's data.",
    )
    def upstream_champion(
        context: dg.SensorEvaluationContext, registry: RegistryResource, upstream: UpstreamRegistryResource, lancedb: LanceDBResource
    ):
        from llmops_dagster.core import promotion, store

        client = _registry_call("connecting to the registry", registry.client)
        decision = _registry_call(
            f"reading {upstream.registered_model}", promotion.upstream_candidate, client, upstream.registered_model, registry.registered_model
        )
        if decision.version is None:
            return dg.SkipReason(decision.reason)
        if lancedb.store().count(store.EMBEDDINGS) == 0:
            return dg.SkipReason(f"{decision.reason}, but this environment has no indexed documents to evaluate it on yet")
        marker = f"{upstream.env}-v{decision.version}"
        runs = context.instance.get_runs(filters=dg.RunsFilter(tags={ADOPT_TAG: marker}))
        if any(not run.is_finished for run in runs):
            return dg.SkipReason(f"adoption of {upstream.registered_model} v{decision.version} is running")
        # One run per attempt: a failed adoption (registry down, say) is retried on a later tick,
        # while a restarted daemon re-evaluating the same state asks for the same run key again.
        attempt = sum(1 for run in runs if run.status == dg.DagsterRunStatus.FAILURE)
        if attempt >= MAX_ADOPT_ATTEMPTS:
            return dg.SkipReason(
                f"adopting {upstream.registered_model} v{decision.version} failed {attempt} times (last run {runs[0].run_id}); "
                "fix the cause and launch the adopt job by hand"
            )
        return dg.RunRequest(
            run_key=f"adopt-{marker}-{attempt}",
            tags={ADOPT_TAG: marker, SOURCE_VERSION_TAG: decision.version, TRIGGER_TAG: UPSTREAM_SENSOR},
        )

    return upstream_champion
