"""documents and quarantine: every landing file, parsed or set aside with a reason."""

from typing import Any

import dagster as dg

from llmops_dagster.assets._metadata import check_result, env_key, markdown_table, table_metadata
from llmops_dagster.core import checks, store
from llmops_dagster.core import landing as landing_module
from llmops_dagster.core.pipeline import IngestResult, ingest
from llmops_dagster.resources import LanceDBResource, LandingZoneResource

DOCUMENTS = dg.AssetKey("documents")
QUARANTINE = dg.AssetKey("quarantine")
NO_FILES_LOST = "no_files_lost"
QUARANTINE_REASONS_KNOWN = "quarantine_reasons_known"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            DOCUMENTS,
            description="Every parseable file in the landing zone (PDF, HTML, Markdown, text): content hash, "
            "path, mtime, pages and extracted text with page and heading per paragraph. Lance table.",
            group_name="ingestion",
            kinds={"lancedb", "python"},
        ),
        dg.AssetSpec(
            QUARANTINE,
            description="Every landing file that could not be parsed, with the reason "
            "(corrupt, encrypted, empty, no_text_layer, undecodable, too_large, unsupported_type, broken_link). "
            "`llmops quarantine --env ENV` lists them.",
            group_name="ingestion",
            kinds={"lancedb"},
        ),
    ],
    can_subset=False,
)
def documents_and_quarantine(context: dg.AssetExecutionContext, landing: LandingZoneResource, lancedb: LanceDBResource):
    """Parse new and changed landing files; unchanged files are skipped, deleted files removed."""
    lance = lancedb.store()
    result = ingest(landing.root, lance, landing.max_file_bytes, log=context.log.info)
    yield dg.MaterializeResult(asset_key=env_key(context, DOCUMENTS), metadata=documents_metadata(result, lance.uri))
    yield dg.MaterializeResult(asset_key=env_key(context, QUARANTINE), metadata=quarantine_metadata(result, lance.uri))


def ingest_summary(result: IngestResult) -> str:
    change = result.diff
    summary = (
        f"**{result.landing_files}** landing files = **{result.documents}** documents + "
        f"**{result.quarantined}** quarantined\n\n"
        + markdown_table(
            ["added", "changed", "unchanged", "deleted"],
            [[len(change.added), len(change.changed), len(change.unchanged), len(change.deleted)]],
        )
    )
    if result.reasons:
        summary += "\n\nQuarantine reasons:\n\n" + markdown_table(["reason", "files"], sorted(result.reasons.items()))
    if result.repaired:
        summary += f"\n\n**{result.repaired}** documents had bytes that are not UTF-8, replaced by U+FFFD (their `warnings` column says how many)"
    if result.navigation:
        summary += "\n\nNavigation left out of the documents (tables of contents, indexes, running headers, link lists):\n\n" + markdown_table(
            ["kind", "lines or blocks"], sorted(result.navigation.items())
        )
    return summary


def documents_metadata(result: IngestResult, uri: str) -> dict[str, Any]:
    """What ``documents`` reports, in process or from the ``ingest`` Pipes step."""
    change = result.diff
    return {
        **table_metadata(store.DOCUMENTS_SCHEMA, result.documents, result.documents_write.version, uri, store.DOCUMENTS, ingest_summary(result)),
        **{f"navigation/{kind}": count for kind, count in sorted(result.navigation.items())},
        "landing_files": result.landing_files,
        "parsed_this_run": len(change.to_parse),
        "unchanged_skipped": len(change.unchanged),
        "deleted": len(change.deleted),
        "repaired": result.repaired,
    }


def quarantine_metadata(result: IngestResult, uri: str) -> dict[str, Any]:
    """What ``quarantine`` reports, in process or from the ``ingest`` Pipes step."""
    return {
        **table_metadata(
            store.QUARANTINE_SCHEMA, result.quarantined, result.quarantine_write.version, uri, store.QUARANTINE, ingest_summary(result)
        ),
        **{f"reason/{reason}": count for reason, count in sorted(result.reasons.items())},
    }


@dg.asset_check(asset=DOCUMENTS, blocking=True, description="landing files = documents + quarantine, path by path")
def no_files_lost(landing: LandingZoneResource, lancedb: LanceDBResource) -> dg.AssetCheckResult:
    lance = lancedb.store()
    landing_paths = set(landing_module.list_paths(landing.root))
    documents = set(lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path"]).column("path").to_pylist())
    quarantined = set(lance.read(store.QUARANTINE, store.QUARANTINE_SCHEMA, ["path"]).column("path").to_pylist())
    return check_result(checks.no_files_lost(landing_paths, documents, quarantined))


@dg.asset_check(asset=QUARANTINE, description="every quarantined file carries one of the known reasons")
def quarantine_reasons_known(lancedb: LanceDBResource) -> dg.AssetCheckResult:
    reasons = lancedb.store().read(store.QUARANTINE, store.QUARANTINE_SCHEMA, ["reason"]).column("reason").to_pylist()
    return check_result(checks.quarantine_reasons_known(reasons))
