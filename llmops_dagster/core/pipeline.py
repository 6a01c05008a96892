"""The incremental steps behind the ingestion assets: landing → documents/quarantine → chunks → embeddings.

Each step compares what is stored with what it is given and writes only the difference, so a re-run
with no change commits nothing, and a run killed half-way is completed by the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from llmops_dagster.core import landing, store
from llmops_dagster.core.chunking import Chunker, search_text
from llmops_dagster.core.documents import PARSE_VERSION, Block, ParseError, QuarantineReason, parse_file
from llmops_dagster.core.embedding import Embedder, vector_array
from llmops_dagster.core.store import LanceStore, WriteResult

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class IngestResult:
    landing_files: int
    documents: int
    quarantined: int
    diff: landing.LandingDiff
    documents_write: WriteResult
    quarantine_write: WriteResult
    reasons: dict[str, int] = field(default_factory=dict)
    navigation: dict[str, int] = field(default_factory=dict)  # lines left out of the documents, by kind
    repaired: int = 0  # documents whose parsing had to repair something (``warnings``)


PARSED_BY = f"llmops parse v{PARSE_VERSION}"


def known_files(lance: LanceStore, max_bytes: int | None = None) -> tuple[dict[str, landing.LandingFile], set[str], set[str]]:
    """Files already stored, by path. A document parsed, or a file set aside, by an older release
    counts as unknown, so it is looked at again with today's parsers; so does a file set aside as
    too large that ``max_bytes`` now allows, and a document that it no longer allows."""
    known: dict[str, landing.LandingFile] = {}
    paths: dict[str, set[str]] = {}
    for name, schema, columns in (
        (store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path", "doc_id", "size_bytes", "mtime_ns", "parser"]),
        (store.QUARANTINE, store.QUARANTINE_SCHEMA, ["path", "doc_id", "size_bytes", "mtime_ns", "parser", "reason"]),
    ):
        rows = lance.read(name, schema, columns).to_pylist()
        paths[name] = {row["path"] for row in rows}
        for row in rows:
            if not (row["parser"] or "").endswith(PARSED_BY):
                continue
            if max_bytes is not None and (
                (row.get("reason") == QuarantineReason.TOO_LARGE and row["size_bytes"] <= max_bytes)
                or (name == store.DOCUMENTS and row["size_bytes"] > max_bytes)
            ):
                continue
            known[row["path"]] = landing.LandingFile(row["path"], row["size_bytes"], row["mtime_ns"], row["doc_id"])
    return known, paths[store.DOCUMENTS], paths[store.QUARANTINE]


def ingest(root: Path, lance: LanceStore, max_bytes: int, log: Log = _quiet) -> IngestResult:
    """Parse new and changed landing files; every file lands in exactly one of documents or quarantine."""
    known, document_paths, quarantine_paths = known_files(lance, max_bytes)
    files = landing.scan(root, known)
    change = landing.diff(files, known)
    now = datetime.now(UTC)
    documents, quarantined = [], []
    for item in change.to_parse:
        base = {"path": item.path, "doc_id": item.sha256, "size_bytes": item.size_bytes, "mtime_ns": item.mtime_ns}
        try:
            parsed = parse_file(root / item.path, max_bytes)
        except FileNotFoundError:
            log(f"{item.path} vanished during the run; the next run records its deletion")
            continue
        except ParseError as error:
            log(f"quarantined {item.path}: {error.reason} ({error.detail})")
            quarantined.append({**base, "reason": str(error.reason), "detail": error.detail, "parser": PARSED_BY, "quarantined_at": now})
            continue
        for warning in parsed.warnings:
            log(f"{item.path}: {warning}")
        documents.append(
            {
                **base,
                "format": parsed.format,
                "pages": parsed.pages,
                "title": parsed.title,
                "text": parsed.text,
                "blocks": [{"text": b.text, "page": b.page, "heading": b.heading, "section": list(b.section)} for b in parsed.blocks],
                "navigation": [{"kind": kind, "lines": lines} for kind, lines in sorted(parsed.dropped.items())],
                "parser": f"{parsed.parser}; {PARSED_BY}",
                "warnings": parsed.warnings,
                "ingested_at": now,
            }
        )
    parsed_ok = {row["path"] for row in documents}
    parsed_bad = {row["path"] for row in quarantined}
    # A file that moved between the two tables must leave the one it was in.
    drop_documents = sorted((set(change.deleted) | parsed_bad) & document_paths)
    drop_quarantine = sorted((set(change.deleted) | parsed_ok) & quarantine_paths)
    documents_write = lance.apply(
        store.DOCUMENTS, store.DOCUMENTS_SCHEMA, "path", pa.Table.from_pylist(documents, store.DOCUMENTS_SCHEMA), drop_documents
    )
    quarantine_write = lance.apply(
        store.QUARANTINE, store.QUARANTINE_SCHEMA, "path", pa.Table.from_pylist(quarantined, store.QUARANTINE_SCHEMA), drop_quarantine
    )
    reasons: dict[str, int] = {}
    for reason in lance.read(store.QUARANTINE, store.QUARANTINE_SCHEMA, ["reason"]).column("reason").to_pylist():
        reasons[reason] = reasons.get(reason, 0) + 1
    navigation: dict[str, int] = {}
    stored = lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["navigation", "warnings"])
    for entries in stored.column("navigation").to_pylist():
        for entry in entries or []:
            navigation[entry["kind"]] = navigation.get(entry["kind"], 0) + entry["lines"]
    repaired = sum(1 for warnings in stored.column("warnings").to_pylist() if warnings)
    return IngestResult(
        navigation=navigation,
        landing_files=len(files),
        documents=lance.count(store.DOCUMENTS),
        quarantined=lance.count(store.QUARANTINE),
        diff=change,
        documents_write=documents_write,
        quarantine_write=quarantine_write,
        reasons=reasons,
        repaired=repaired,
    )


@dataclass(frozen=True)
class ChunkResult:
    documents_chunked: int
    chunks: int
    write: WriteResult


def chunk_documents(lance: LanceStore, chunker: Chunker, fingerprint: str, log: Log = _quiet) -> ChunkResult:
    """Re-chunk documents that are new, changed, or were chunked with other settings.

    A chunk's ``chunker`` names the chunking settings and the parse release of the text it was cut
    from: a release that parses a file differently leaves its content hash alone, and its chunks
    must still follow the new text.
    """
    fingerprint = f"{fingerprint}; {PARSED_BY}"
    documents = lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path", "doc_id"]).to_pylist()
    current = {row["path"]: row["doc_id"] for row in documents}
    stored = lance.read(store.CHUNKS, store.CHUNKS_SCHEMA, ["id", "source", "doc_id", "chunker"]).to_pylist()
    stored_state: dict[str, set[tuple[str, str]]] = {}
    for row in stored:
        stored_state.setdefault(row["source"], set()).add((row["doc_id"], row["chunker"]))
    stale = sorted(path for path, doc_id in current.items() if stored_state.get(path) != {(doc_id, fingerprint)})
    new_rows: list[dict] = []
    for start in range(0, len(stale), 200):
        batch = lance.read_keys(
            store.DOCUMENTS, store.DOCUMENTS_SCHEMA, "path", stale[start : start + 200], ["path", "doc_id", "title", "blocks"]
        )
        for row in batch.to_pylist():
            blocks = [Block(b["text"], b["page"], b["heading"] or "", tuple(b.get("section") or ())) for b in row["blocks"]]
            for chunk in chunker.chunk(row["path"], blocks, title=row["title"] or ""):
                new_rows.append(
                    {
                        "id": chunk.id,
                        "doc_id": row["doc_id"],
                        "source": row["path"],
                        "ordinal": chunk.ordinal,
                        "text": chunk.text,
                        "n_tokens": chunk.n_tokens,
                        "page": chunk.page,
                        "page_end": chunk.page_end,
                        "heading": chunk.heading,
                        "context": chunk.context,
                        "chunker": fingerprint,
                    }
                )
        log(f"chunked {min(start + 200, len(stale))}/{len(stale)} documents")
    keep = {row["id"] for row in new_rows}
    refreshed = set(stale)
    deletes = sorted(
        row["id"] for row in stored if (row["source"] not in current or row["source"] in refreshed) and row["id"] not in keep
    )
    write = lance.apply(store.CHUNKS, store.CHUNKS_SCHEMA, "id", pa.Table.from_pylist(new_rows, store.CHUNKS_SCHEMA), deletes)
    return ChunkResult(documents_chunked=len(stale), chunks=lance.count(store.CHUNKS), write=write)


@dataclass(frozen=True)
class EmbedResult:
    embedded: int
    reused: int
    rows: int
    rebuilt: bool
    write: WriteResult


_CHUNK_COLUMNS = [f.name for f in store.CHUNKS_SCHEMA if f.name != "chunker"]


Encode = Callable[[list[str]], np.ndarray]


def embed_chunks(
    lance: LanceStore, embedder: Embedder, fingerprint: str, log: Log = _quiet, encode: Encode | None = None
) -> EmbedResult:
    """Embed chunks (context and text) the index does not hold yet; drop rows whose chunk is gone.

    An index never mixes models or context templates: ``fingerprint`` names both
    (``chunking.index_fingerprint``), and if the stored vectors have another, every chunk is
    embedded again and the table is replaced in one commit. ``encode`` runs the model elsewhere
    (the Spark engine); by default the embedder encodes in process.
    """
    schema = store.embeddings_schema(embedder.dimension)
    chunks = lance.read(store.CHUNKS, store.CHUNKS_SCHEMA, _CHUNK_COLUMNS)
    stored = lance.read(store.EMBEDDINGS, schema, ["id", "doc_id", "ordinal", "page", "heading", "embedding_model"])
    models = set(stored.column("embedding_model").to_pylist())
    rebuild = bool(models) and models != {fingerprint}
    if rebuild:
        log(f"index holds vectors of {sorted(models)}; re-embedding everything for {fingerprint}")
        stored = schema.empty_table().select(stored.schema.names)
    stored_meta = {row.pop("id"): row for row in stored.to_pylist()}
    chunk_rows = chunks.to_pylist()
    # Chunks whose text is unchanged keep their id; only their position may have moved.
    to_embed = [row for row in chunk_rows if row["id"] not in stored_meta]
    moved = [
        row["id"]
        for row in chunk_rows
        if row["id"] in stored_meta
        and any(stored_meta[row["id"]][k] != row[k] for k in ("doc_id", "ordinal", "page", "heading"))
    ]
    texts = [search_text(row["context"] or "", row["text"]) for row in to_embed]
    vectors = _embed_in_batches(encode or embedder.encode, embedder.dimension, texts, log)
    new_table = _with_vectors(to_embed, vectors, schema, fingerprint)
    if moved:
        reused = lance.read_keys(store.EMBEDDINGS, schema, "id", moved, ["id", "vector"])
        reused_vectors = dict(zip(reused.column("id").to_pylist(), reused.column("vector").to_pylist(), strict=True))
        moved_rows = [row for row in chunk_rows if row["id"] in reused_vectors]
        moved_table = _with_vectors(
            moved_rows, np.array([reused_vectors[r["id"]] for r in moved_rows], dtype=np.float32), schema, fingerprint
        )
        new_table = pa.concat_tables([new_table, moved_table])
    if rebuild:
        write = lance.replace(store.EMBEDDINGS, schema, new_table)
    else:
        live = {row["id"] for row in chunk_rows}
        deletes = sorted(key for key in stored_meta if key not in live)
        write = lance.apply(store.EMBEDDINGS, schema, "id", new_table, deletes)
    return EmbedResult(
        embedded=len(to_embed), reused=len(chunk_rows) - len(to_embed), rows=lance.count(store.EMBEDDINGS), rebuilt=rebuild, write=write
    )


def _embed_in_batches(encode: Encode, dimension: int, texts: list[str], log: Log, report_every: int = 1024) -> np.ndarray:
    parts = []
    for start in range(0, len(texts), report_every):
        parts.append(encode(texts[start : start + report_every]))
        log(f"embedded {min(start + report_every, len(texts))}/{len(texts)} chunks")
    return np.concatenate(parts) if parts else np.zeros((0, dimension), dtype=np.float32)


def _with_vectors(rows: list[dict], vectors: np.ndarray, schema: pa.Schema, fingerprint: str) -> pa.Table:
    base_schema = pa.schema([schema.field(name) for name in _CHUNK_COLUMNS])
    table = pa.Table.from_pylist(rows, base_schema)
    texts = [search_text(row["context"] or "", row["text"]) for row in rows]
    table = table.append_column(schema.field("search_text"), pa.array(texts, pa.string()))
    dimension = schema.field("vector").type.list_size
    table = table.append_column(schema.field("vector"), vector_array(vectors.reshape(-1, dimension)))
    return table.append_column(schema.field("embedding_model"), pa.array([fingerprint] * len(rows), pa.string()))
