"""new_documents: one ingestion run per change of the landing zone's content."""

from __future__ import annotations

import json

import dagster as dg

from llmops_dagster.core import landing as landing_files
from llmops_dagster.resources import LanceDBResource, LandingZoneResource
from llmops_dagster.tags import LANDING_CHANGE_TAG, LANDING_DIGEST_TAG, TRIGGER_TAG

NEW_DOCUMENTS = "new_documents"


def _decode(cursor: str | None) -> tuple[int, str, dict[str, landing_files.LandingFile]]:
    """(change count, digest, manifest) from the cursor; the manifest lets unchanged files skip re-hashing."""
    if not cursor:
        return 0, "", {}
    state = json.loads(cursor)
    manifest = {path: landing_files.LandingFile(path, size, mtime, sha) for path, (size, mtime, sha) in state["files"].items()}
    return state["seq"], state["digest"], manifest


def _encode(seq: int, digest: str, files: list[landing_files.LandingFile]) -> str:
    manifest = {f.path: [f.size_bytes, f.mtime_ns, f.sha256] for f in files}
    return json.dumps({"seq": seq, "digest": digest, "files": manifest}, separators=(",", ":"))


def build_new_documents_sensor(job_name: str, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name=NEW_DOCUMENTS,
        job_name=job_name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts the ingest job when a landing file is created, changed or deleted.",
    )
    def new_documents(context: dg.SensorEvaluationContext, landing: LandingZoneResource, lancedb: LanceDBResource):
        from llmops_dagster.core.pipeline import known_files

        seq, previous, manifest = _decode(context.cursor)
        stored = known_files(lancedb.store(), landing.max_file_bytes)[0] if not previous else None
        # Unchanged size and mtime skip re-hashing: against the cursor's manifest, or on a first
        # tick (a new daemon, or `make ui` after `llmops run`) against the stored tables.
        files = landing_files.scan(landing.root, manifest if previous else stored)
        digest = landing_files.manifest_digest(files)
        if digest == previous:
            return dg.SkipReason(f"no new or changed files ({len(files)} files in {landing.root})")
        if not previous and not files:
            context.update_cursor(_encode(seq, digest, files))
            return dg.SkipReason(f"landing zone {landing.root} is empty")
        # The landing zone moved since the last tick; what is already ingested (by `llmops run`, by
        # a run started in the UI, or before this daemon started) is not a change to ask a run for.
        if stored is None:
            stored = known_files(lancedb.store(), landing.max_file_bytes)[0]
        change = landing_files.diff(files, stored)
        if change.is_empty:
            context.update_cursor(_encode(seq, digest, files))
            return dg.SkipReason(f"all {len(files)} files in {landing.root} are already ingested")
        seq += 1
        context.update_cursor(_encode(seq, digest, files))
        summary = f"{len(change.added)} added, {len(change.changed)} changed, {len(change.deleted)} deleted"
        context.log.info(f"landing changed: {summary}")
        # The change count makes the key unique per change, so that A → B → A runs twice, while a
        # tick evaluated again from the same cursor (daemon restart) yields the same key.
        return dg.RunRequest(
            run_key=f"landing-{seq}-{digest[:16]}",
            tags={LANDING_DIGEST_TAG: digest, TRIGGER_TAG: NEW_DOCUMENTS, LANDING_CHANGE_TAG: summary},
        )

    return new_documents
