"""chunks: token-aware passages of the documents, with stable ids, source, page and heading."""

from typing import Any

import dagster as dg

from llmops_dagster.assets._metadata import check_result, table_metadata
from llmops_dagster.assets.ingestion import DOCUMENTS
from llmops_dagster.core import checks, store
from llmops_dagster.core.pipeline import ChunkResult, chunk_documents
from llmops_dagster.resources import ChunkerResource, LanceDBResource

CHUNKS = dg.AssetKey("chunks")
CHUNKS_WELL_FORMED = "chunks_well_formed"
EVERY_DOCUMENT_CHUNKED = "every_document_chunked"


@dg.asset(key=CHUNKS, deps=[DOCUMENTS], group_name="ingestion", kinds={"lancedb", "transformers"})
def chunks(context: dg.AssetExecutionContext, lancedb: LanceDBResource, chunker: ChunkerResource) -> dg.MaterializeResult:
    """Token-aware chunks cut with the embedding model's own tokenizer, never crossing a heading.

    Only new or changed documents (or all of them, when the chunk settings change) are chunked
    again; chunks of deleted documents are removed. Lance table keyed by chunk id.
    """
    lance = lancedb.store()
    splitter, fingerprint = chunker.load()
    result = chunk_documents(lance, splitter, fingerprint, log=context.log.info)
    return dg.MaterializeResult(metadata=chunks_metadata(result, fingerprint, lance.uri))


def chunks_metadata(result: ChunkResult, fingerprint: str, uri: str) -> dict[str, Any]:
    """What ``chunks`` reports, in process or from the ``ingest`` Pipes step."""
    summary = (
        f"**{result.chunks}** chunks; **{result.documents_chunked}** document(s) chunked this run; "
        f"{result.write.upserted} chunk(s) written, {result.write.deleted} removed.\n\n"
        f"Chunker: `{fingerprint}`"
    )
    return {
        **table_metadata(store.CHUNKS_SCHEMA, result.chunks, result.write.version, uri, store.CHUNKS, summary),
        "documents_chunked": result.documents_chunked,
        "chunks_written": result.write.upserted,
        "chunks_removed": result.write.deleted,
    }


@dg.asset_check(asset=CHUNKS, blocking=True, description="no empty chunk and none over the token budget")
def chunks_well_formed(lancedb: LanceDBResource, chunker: ChunkerResource) -> dg.AssetCheckResult:
    table = lancedb.store().read(store.CHUNKS, store.CHUNKS_SCHEMA, ["text", "n_tokens"])
    splitter, _ = chunker.load()
    # Count again with the tokenizer rather than trusting the stored n_tokens.
    texts = table.column("text").to_pylist()
    return check_result(checks.chunks_well_formed(texts, splitter.count_tokens(texts), chunker.config().chunk_tokens))


@dg.asset_check(asset=CHUNKS, blocking=True, description="every document has chunks and no chunk outlives its document")
def every_document_chunked(lancedb: LanceDBResource) -> dg.AssetCheckResult:
    lance = lancedb.store()
    documents = set(lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path"]).column("path").to_pylist())
    sources = set(lance.read(store.CHUNKS, store.CHUNKS_SCHEMA, ["source"]).column("source").to_pylist())
    return check_result(checks.every_document_chunked(documents, sources))
