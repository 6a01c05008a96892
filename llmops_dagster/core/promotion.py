"""Promotion inside and across environments, through the MLflow registry alone.

- ``champion_decision``: may the environment's challenger become its champion? Only a version whose
  ``validation_status`` is PASSED, that is not already champion, and, where the environment needs
  it, that carries an approval.
- ``promote``: moves ``champion`` and records a history entry (version, previous champion, time,
  actor, reason) as its own registered-model tag. One tag per entry, under a unique key, so two
  writers never overwrite each other's entry; an alias has one version, so there is never a second
  champion. The newest ``HISTORY_KEPT`` entries are kept, so that the registered model stays within
  the tags Unity Catalog allows on one object.
- ``rollback``: moves ``champion`` back to the most recent earlier champion that was not rolled
  back itself, or to a named version that was champion before; the version taken down is marked
  rolled back and loses its approval.
- ``approve``: records an approval on the challenger, or on an earlier champion to restore.
- ``copy_from``: copies another environment's champion into this environment's registered model
  (as ``copy_model_version`` does, in one call) as the new challenger, with its source recorded in
  tags and without the source's verdicts.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from llmops_dagster.core.registry import (
    CHALLENGER,
    CHAMPION,
    CHECK_TAG_PREFIX,
    METRIC_TAG_PREFIX,
    PASSED,
    PENDING,
    UC_TAG_LIMIT,
    VALIDATION_STATUS,
    current_tags,
    failed_checks,
    find_version,
    recorded_metrics,
    tag_key,
    version_by_alias,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

HISTORY_TAG_PREFIX = "champion_history_"
# Entries kept on the registered model: with the endpoint records beside them, under UC_TAG_LIMIT.
HISTORY_KEPT = UC_TAG_LIMIT - 10
APPROVED_BY, APPROVED_AT = "approved_by", "approved_at"
ROLLED_BACK_AT = "rolled_back_at"
SOURCE_MODEL, SOURCE_VERSION = "source_model", "source_version"


class PromotionError(ValueError):
    """A promotion, approval or rollback that must not happen, with the reason."""


@dataclass(frozen=True)
class HistoryEntry:
    at: str  # ISO 8601, UTC
    version: str
    previous: str | None
    actor: str  # "sensor:<name> run <id>", "cli:<user>", ...
    action: str  # promote | rollback
    reason: str

    def key(self) -> str:
        # Sortable by time; the random suffix keeps two entries of the same instant apart.
        return tag_key(HISTORY_TAG_PREFIX + self.at.replace("-", "").replace(":", ""), uuid.uuid4().hex[:8])


@dataclass(frozen=True)
class Decision:
    version: str | None  # the version to promote, or None
    reason: str  # why (not)
    awaiting_approval: str | None = None  # the version a person has to approve


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history(client: MlflowClient, name: str) -> list[HistoryEntry]:
    """Every recorded champion change of ``name`` that is kept, oldest first."""
    return [entry for _, entry in _history_tags(client.get_registered_model(name).tags)]


def _history_tags(tags: dict[str, str]) -> list[tuple[str, HistoryEntry]]:
    """(tag key as written, entry) for each history entry, oldest first: by time, then key."""
    entries = [(key, HistoryEntry(**json.loads(value))) for key, value in tags.items() if tag_key(key).startswith(HISTORY_TAG_PREFIX)]
    return sorted(entries, key=lambda item: (item[1].at, tag_key(item[0])))


def _make_room(client: MlflowClient, name: str) -> None:
    """Delete the oldest entries, so that with the one about to be written there are ``HISTORY_KEPT``."""
    entries = _history_tags(client.get_registered_model(name).tags)
    for key, _ in entries[: max(0, len(entries) - HISTORY_KEPT + 1)]:
        client.delete_registered_model_tag(name, key)


def champion_decision(client: MlflowClient, name: str, requires_approval: bool) -> Decision:
    challenger = version_by_alias(client, name, CHALLENGER)
    if challenger is None:
        return Decision(None, f"{name} has no challenger")
    number = str(challenger.version)
    champion = version_by_alias(client, name, CHAMPION)
    if champion is not None and str(champion.version) == number:
        return Decision(None, f"challenger v{number} is already the champion")
    status = challenger.tags.get(VALIDATION_STATUS, PENDING)
    if status != PASSED:
        failed = failed_checks(challenger.tags)
        detail = f" (failed: {', '.join(failed)})" if failed else ""
        return Decision(None, f"challenger v{number} is {status}{detail}, not PASSED")
    if ROLLED_BACK_AT in challenger.tags:
        return Decision(None, f"challenger v{number} was rolled back at {challenger.tags[ROLLED_BACK_AT]}; approve it again to promote it")
    if requires_approval and APPROVED_BY not in challenger.tags:
        return Decision(None, f"awaiting approval for version {number}", awaiting_approval=number)
    return Decision(number, f"challenger v{number} passed every blocking check")


def promote(client: MlflowClient, name: str, version: str, actor: str, reason: str, action: str = "promote") -> HistoryEntry:
    """Move ``champion`` to ``version`` and record it. Moving to the current champion records nothing."""
    current = version_by_alias(client, name, CHAMPION)
    previous = str(current.version) if current is not None else None
    if previous == str(version):
        raise PromotionError(f"v{version} is already the champion of {name}")
    entry = HistoryEntry(_now(), str(version), previous, actor, action, reason)
    # Room first, while a failure still leaves the champion where it was (a rollback then has not
    # half happened). Then the history: if the alias move then fails, the entry is taken back; if
    # the alias moved, its entry is already there, so a change is never left unrecorded.
    _make_room(client, name)
    key = entry.key()
    client.set_registered_model_tag(name, key, json.dumps(asdict(entry)))
    try:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    except Exception:
        try:
            client.delete_registered_model_tag(name, key)
        finally:
            raise
    return entry


def _champions(past: list[HistoryEntry]) -> list[str]:
    """Every version that was ever champion, the most recent first, each once."""
    order: dict[str, None] = {}
    for entry in reversed(past):
        order.update(dict.fromkeys(v for v in (entry.version, entry.previous) if v))
    return list(order)


def _rolled_back_at(client: MlflowClient, name: str, version: str) -> str | None:
    return client.get_model_version(name, version).tags.get(ROLLED_BACK_AT)


def rollback(client: MlflowClient, name: str, actor: str, to: str | None = None) -> HistoryEntry:
    """Put back the most recent earlier champion that was not itself rolled back (or ``to``, which
    must have been champion before and not rolled back since). The version taken down loses its
    approval and is marked rolled back, so neither the sensor nor a second rollback brings it back
    until someone approves it again."""
    current = version_by_alias(client, name, CHAMPION)
    if current is None:
        raise PromotionError(f"{name} has no champion to roll back")
    number = str(current.version)
    champions = _champions(history(client, name))
    if to is None:
        earlier = [v for v in champions if v != number]
        if not earlier:
            raise PromotionError(f"v{number} has no previous champion in the history of {name}")
        to = next((v for v in earlier if _rolled_back_at(client, name, v) is None), None)
        if to is None:
            listed = ", ".join(f"v{v}" for v in earlier)
            raise PromotionError(f"every earlier champion of {name} ({listed}) was rolled back; approve one again, then roll back to it with --to")
    elif str(to) not in champions:
        known = sorted(champions, key=int)
        raise PromotionError(f"v{to} was never champion of {name}; known champions: {', '.join('v' + k for k in known) or 'none'}")
    elif (at := _rolled_back_at(client, name, str(to))) is not None:
        raise PromotionError(f"v{to} of {name} was rolled back at {at}; approve it again before it can be champion")
    entry = promote(client, name, str(to), actor, f"rollback from v{number}", action="rollback")
    # The challenger sensor must not promote the rolled-back version straight back, and its approval
    # is spent: the history entry keeps who took it down and when.
    client.set_model_version_tag(name, number, ROLLED_BACK_AT, entry.at)
    for key in (APPROVED_BY, APPROVED_AT):
        if key in current.tags:
            client.delete_model_version_tag(name, number, key)
    return entry


CHALLENGER_APPROVED, EARLIER_CHAMPION_APPROVED = "challenger", "earlier champion"


def approve(client: MlflowClient, name: str, version: str, actor: str) -> str:
    """Record an approval on ``version``; returns which of the two kinds of version it was.

    Only a PASSED version that something will use can be approved: the challenger (the champion
    sensor promotes it), or an earlier champion (``rollback --to`` can restore it). Approving the
    champion, or a version that is neither, is refused rather than reported as a success."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_model_version(name, str(version))
    except MlflowException:
        raise PromotionError(f"{name} has no version {version}") from None
    status = found.tags.get(VALIDATION_STATUS, PENDING)
    if status != PASSED:
        raise PromotionError(f"v{version} of {name} is {status}; only a PASSED version can be approved")
    champion = version_by_alias(client, name, CHAMPION)
    challenger = version_by_alias(client, name, CHALLENGER)
    if champion is not None and str(champion.version) == str(version):
        raise PromotionError(f"v{version} is already the champion of {name}; there is nothing to approve")
    if challenger is not None and str(challenger.version) == str(version):
        kind = CHALLENGER_APPROVED
    elif str(version) in _champions(history(client, name)):
        kind = EARLIER_CHAMPION_APPROVED
    else:
        now = f"the challenger is v{challenger.version}" if challenger is not None else f"{name} has no challenger"
        raise PromotionError(f"v{version} of {name} is neither the challenger nor an earlier champion ({now}); nothing would use the approval")
    client.set_model_version_tag(name, str(version), APPROVED_BY, actor)
    client.set_model_version_tag(name, str(version), APPROVED_AT, _now())
    if ROLLED_BACK_AT in found.tags:
        client.delete_model_version_tag(name, str(version), ROLLED_BACK_AT)
    return kind


def upstream_candidate(client: MlflowClient, source_name: str, target_name: str) -> Decision:
    """The source environment's validated champion, unless this environment already copied it."""
    from mlflow.exceptions import MlflowException

    try:
        champion = version_by_alias(client, source_name, CHAMPION)
    except MlflowException as error:
        raise PromotionError(f"cannot read {source_name}: {error}") from error
    if champion is None:
        return Decision(None, f"{source_name} has no champion yet")
    number = str(champion.version)
    if champion.tags.get(VALIDATION_STATUS) != PASSED:
        return Decision(None, f"{source_name} champion v{number} is not PASSED")
    copied = copied_version(client, source_name, number, target_name)
    if copied is not None:
        return Decision(None, f"{source_name} v{number} was already copied to {target_name} as v{copied}")
    return Decision(number, f"{source_name} has a new validated champion: v{number}")


def _verdict_tag(key: str) -> bool:
    return key.startswith((CHECK_TAG_PREFIX, METRIC_TAG_PREFIX)) or key in (APPROVED_BY, APPROVED_AT, ROLLED_BACK_AT, VALIDATION_STATUS)


def copied_version(client: MlflowClient, source_name: str, source_version: str, target_name: str) -> str | None:
    found = find_version(client, target_name, **{SOURCE_MODEL: source_name, SOURCE_VERSION: source_version})
    return None if found is None else str(found.version)


def copy_from(client: MlflowClient, source_name: str, source_version: str, target_name: str, dagster_run_id: str) -> str:
    """Copy a version into ``target_name`` as its challenger (PENDING until its own checks pass).

    What ``copy_model_version`` does (a new version whose source is ``models:/<source>/<version>``),
    in one registry call that also sets the tags: the source's verdicts, metrics and approvals belong
    to the source environment and are left behind, so the copy never reads PASSED before its own
    evaluation, and an interrupted copy leaves no version half tagged.
    """
    from mlflow.exceptions import MlflowException

    existing = copied_version(client, source_name, source_version, target_name)
    if existing is None:
        try:
            client.get_registered_model(target_name)
        except MlflowException:
            client.create_registered_model(target_name)
        source = client.get_model_version(source_name, source_version)
        tags = {key: value for key, value in current_tags(source.tags).items() if not _verdict_tag(key)}
        tags.update(
            {SOURCE_MODEL: source_name, SOURCE_VERSION: str(source_version), VALIDATION_STATUS: PENDING, "dagster_run_id": dagster_run_id}
        )
        copied = client.create_model_version(
            target_name,
            f"models:/{source_name}/{source_version}",
            run_id=source.run_id,
            tags=tags,
            description=source.description,
            model_id=getattr(source, "model_id", None),
        )
        existing = str(copied.version)
    client.set_registered_model_alias(target_name, CHALLENGER, existing)
    return existing


def status(client: MlflowClient, name: str, requires_approval: bool) -> dict[str, Any]:
    """Where a registered model stands: its champion and challenger with their verdicts, failed
    checks, metrics, approval and source; what is pending, and the last history entries."""
    from mlflow.exceptions import MlflowException

    state: dict[str, Any] = {"model": name}
    try:
        client.get_registered_model(name)
    except MlflowException:
        state["pending"] = "nothing registered yet"
        return state
    for alias in (CHAMPION, CHALLENGER):
        version = version_by_alias(client, name, alias)
        if version is None:
            state[alias] = None
            continue
        tags = version.tags
        state[alias] = {
            "version": str(version.version),
            "validation_status": tags.get(VALIDATION_STATUS, PENDING),
            "failed_checks": failed_checks(tags),
            "metrics": recorded_metrics(tags),
            "approved_by": tags.get(APPROVED_BY),
            "rolled_back_at": tags.get(ROLLED_BACK_AT),
            "source": f"{tags[SOURCE_MODEL]} v{tags[SOURCE_VERSION]}" if SOURCE_MODEL in tags else None,
        }
    state["pending"] = champion_decision(client, name, requires_approval).reason
    state["history"] = [vars(e) for e in history(client, name)[-5:]]
    return state
