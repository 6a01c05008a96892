"""The test environment's whole graph, materialized with real Dagster, LanceDB and transformers."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import dagster as dg
import pytest

from llmops_dagster.core import store
from llmops_dagster.core.documents import PARSE_VERSION
from llmops_dagster.core.embedding import load_embedder
from llmops_dagster.core.index import AnnParams, search
from llmops_dagster.definitions import build_defs, environment_assets
from llmops_dagster.resources import build_resources
from llmops_dagster.settings import EnvSettings, load_settings

from bad_files import write_bad_corpus

pytestmark = pytest.mark.slow
TABLES = (store.DOCUMENTS, store.QUARANTINE, store.CHUNKS, store.EMBEDDINGS)
# The model stages have their own module (test_model_assets.py); these tests are about the index.
INDEX_GROUPS = dg.AssetSelection.groups("ingestion", "index")


def materialize(settings: EnvSettings, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        environment_assets(settings.name), selection=INDEX_GROUPS, resources=build_resources(settings), instance=instance
    )
    assert result.success
    failed = [(e.asset_check_key.name, e.description) for e in result.get_asset_check_evaluations() if not e.passed]
    assert not failed
    return result


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.path[-1] == asset:
            return {key: value.value for key, value in materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialized")


def versions(settings: EnvSettings) -> dict[str, int | None]:
    lance = store.LanceStore(settings.lancedb_uri)
    return {name: lance.version(name) for name in TABLES}


def sources(settings: EnvSettings, table: str) -> set[str]:
    lance = store.LanceStore(settings.lancedb_uri)
    schema = store.CHUNKS_SCHEMA if table == store.CHUNKS else store.embeddings_schema(384)
    return set(lance.read(table, schema, ["source"]).column("source").to_pylist())


def top_sources(settings: EnvSettings, query: str, mode: str = "hybrid") -> list[str]:
    table = store.LanceStore(settings.lancedb_uri).open(store.EMBEDDINGS)
    embedder = load_embedder(settings.embedding)
    return [p.source for p in search(table, query, 3, mode, AnnParams(), embedder)]


@pytest.fixture
def landing(sample_landing: Path) -> tuple[Path, dict[str, str]]:
    bad = write_bad_corpus(sample_landing / "incoming")
    return sample_landing, {f"incoming/{path}": reason for path, reason in bad.items()}


def test_whole_graph_then_incremental_changes(llmops_home: Path, landing: tuple[Path, dict[str, str]]) -> None:
    root, bad = landing
    settings = load_settings("test").with_landing(root)
    instance = dg.DagsterInstance.ephemeral()

    # 1. Everything lands somewhere, with the reason for every bad file.
    first = materialize(settings, instance)
    docs = metadata(first, "documents")
    assert docs["dagster/row_count"] == 4
    assert metadata(first, "quarantine")["dagster/row_count"] == len(bad)
    assert docs["landing_files"] == 4 + len(bad)
    assert isinstance(docs["dagster/column_schema"], dg.TableSchema)
    lance = store.LanceStore(settings.lancedb_uri)
    reasons = {r["path"]: r["reason"] for r in lance.read(store.QUARANTINE, store.QUARANTINE_SCHEMA).to_pylist()}
    assert reasons == bad
    chunk_count = metadata(first, "chunks")["dagster/row_count"]
    assert metadata(first, "embeddings")["dagster/row_count"] == chunk_count
    assert top_sources(settings, "reciprocal rank fusion", "text")[0] == "vector-search-primer.html"
    pdf_pages = lance.read(store.CHUNKS, store.CHUNKS_SCHEMA, ["page"], where="source = 'operations-guide.pdf'")
    assert set(pdf_pages.column("page").to_pylist()) <= set(range(1, 7))

    # 2. No change: nothing parsed, nothing embedded, no table gets a new version.
    before = versions(settings)
    second = materialize(settings, instance)
    assert metadata(second, "documents")["parsed_this_run"] == 0
    assert metadata(second, "embeddings")["embedded_this_run"] == 0
    assert versions(settings) == before

    # 3. One file changes: only it is parsed; untouched chunks keep their ids and vectors.
    ids_before = set(lance.read(store.CHUNKS, store.CHUNKS_SCHEMA, ["id"]).column("id").to_pylist())
    notes = root / "chunking-notes.md"
    notes.write_text(notes.read_text() + "\n\n## Zebra appendix\n\nStriped zebras graze near the quokka enclosure.\n")
    third = materialize(settings, instance)
    assert metadata(third, "documents")["parsed_this_run"] == 1
    embedded = metadata(third, "embeddings")["embedded_this_run"]
    assert 1 <= embedded < chunk_count
    ids_after = set(lance.read(store.CHUNKS, store.CHUNKS_SCHEMA, ["id"]).column("id").to_pylist())
    assert len(ids_before & ids_after) >= chunk_count - embedded
    assert top_sources(settings, "zebras quokka enclosure")[0] == "chunking-notes.md"

    # 4. One file is deleted: it leaves documents, chunks and the index.
    (root / "vector-search-primer.html").unlink()
    fourth = materialize(settings, instance)
    assert metadata(fourth, "documents")["deleted"] == 1
    assert "vector-search-primer.html" not in sources(settings, store.CHUNKS)
    assert "vector-search-primer.html" not in sources(settings, store.EMBEDDINGS)
    assert "vector-search-primer.html" not in top_sources(settings, "reciprocal rank fusion", "text")

    # 5. A quarantined file is fixed in place: it moves to documents and leaves quarantine.
    fixed = next(path for path, reason in bad.items() if reason == "undecodable")
    (root / fixed).write_text("Repaired notes about the landing zone.\n")
    materialize(settings, instance)
    quarantined = {r["path"] for r in lance.read(store.QUARANTINE, store.QUARANTINE_SCHEMA, ["path"]).to_pylist()}
    documents = {r["path"] for r in lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path"]).to_pylist()}
    assert fixed in documents and fixed not in quarantined

    # 6. Another context template: every chunk gets its new context and the index is rebuilt in one
    #    commit, never holding vectors of two templates.
    plain = dataclasses.replace(settings, chunking=dataclasses.replace(settings.chunking, context_template="{heading}"))
    index_before = lance.version(store.EMBEDDINGS)
    sixth = materialize(plain, instance)
    assert metadata(sixth, "embeddings")["embedded_this_run"] == lance.count(store.CHUNKS)
    assert metadata(sixth, "embeddings")["index_fingerprint"] != metadata(first, "embeddings")["index_fingerprint"]
    stored = lance.read(store.EMBEDDINGS, store.embeddings_schema(384), ["embedding_model", "context", "heading"]).to_pylist()
    assert {row["embedding_model"] for row in stored} == {metadata(sixth, "embeddings")["index_fingerprint"]}
    assert all(row["context"] == row["heading"] for row in stored)
    # Every table version after the change (the rebuild, then its full-text index) holds one template only.
    table = lance.open(store.EMBEDDINGS)
    for version in range(index_before + 1, table.version + 1):
        table.checkout(version)
        fingerprints = set(table.to_arrow().column("embedding_model").to_pylist())
        assert fingerprints == {metadata(sixth, "embeddings")["index_fingerprint"]}, version


def test_headings_are_searchable_and_navigation_is_counted(llmops_home: Path, sample_landing: Path) -> None:
    settings = load_settings("test").with_landing(sample_landing)
    result = materialize(settings, dg.DagsterInstance.ephemeral())
    assert metadata(result, "documents")["navigation/furniture"] > 0, "the sample PDF's running footer is left out"
    lance = store.LanceStore(settings.lancedb_uri)
    rows = lance.read(store.EMBEDDINGS, store.embeddings_schema(384), ["id", "source", "heading", "context", "search_text", "text"]).to_pylist()
    pdf = [row for row in rows if row["source"] == "operations-guide.pdf" and row["heading"]]
    assert pdf and all(row["heading"] in row["context"] and row["search_text"].endswith(row["text"]) for row in pdf)
    # A heading's words alone find a passage of that section (or of one below it), though its text
    # may not repeat them.
    table = lance.open(store.EMBEDDINGS)
    contexts = {row["id"]: row["context"] for row in rows}
    for heading in {row["heading"] for row in pdf if len(row["heading"].split()) >= 4}:
        assert heading in contexts[search(table, heading, 1, "text", AnnParams())[0].id], heading


def test_tables_of_an_older_release_are_rewritten_and_reparsed(llmops_home: Path, sample_landing: Path) -> None:
    """A documents table without heading paths or navigation counts, parsed by an older release,
    is brought to today's schema and its files are parsed again, with nothing lost or duplicated."""
    import lancedb
    import pyarrow as pa

    settings = load_settings("test").with_landing(sample_landing)
    materialize(settings, dg.DagsterInstance.ephemeral())
    lance = store.LanceStore(settings.lancedb_uri)
    rows = lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA).to_pylist()
    old_block = pa.struct([("text", pa.string()), ("page", pa.int32()), ("heading", pa.string())])
    old_schema = pa.schema(
        [f if f.name != "blocks" else pa.field("blocks", pa.list_(old_block)) for f in store.DOCUMENTS_SCHEMA if f.name != "navigation"]
    )
    for row in rows:
        row.pop("navigation")
        row["parser"] = row["parser"].split(";")[0]
        row["blocks"] = [{k: v for k, v in block.items() if k != "section"} for block in row["blocks"]]
    lancedb.connect(settings.lancedb_uri).create_table(store.DOCUMENTS, pa.Table.from_pylist(rows, old_schema), mode="overwrite")
    # Chunks cut from the older release's text: same content hash, so only their stamp says so.
    lancedb.connect(settings.lancedb_uri).open_table(store.CHUNKS).update(values={"chunker": "old"})

    result = materialize(settings, dg.DagsterInstance.ephemeral())
    assert metadata(result, "documents")["parsed_this_run"] == len(rows)
    assert metadata(result, "chunks")["documents_chunked"] == len(rows)
    assert metadata(result, "embeddings")["embedded_this_run"] == 0, "the same text: the vectors are kept"
    chunkers = set(lance.read(store.CHUNKS, store.CHUNKS_SCHEMA, ["chunker"]).column("chunker").to_pylist())
    assert len(chunkers) == 1 and chunkers.pop().endswith(f"; llmops parse v{PARSE_VERSION}")
    stored = lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA).to_pylist()
    assert sorted(r["path"] for r in stored) == sorted(r["path"] for r in rows)
    assert all(block["section"] is not None for r in stored for block in r["blocks"])
    assert lance.open(store.DOCUMENTS).schema.names == store.DOCUMENTS_SCHEMA.names


def test_interrupted_run_is_completed_without_duplicates(llmops_home: Path, sample_landing: Path) -> None:
    """A run that stopped after the first steps leaves readable tables; the next run finishes the job."""
    settings = load_settings("test").with_landing(sample_landing)
    instance = dg.DagsterInstance.ephemeral()
    defs = build_defs(settings)
    job = defs.resolve_job_def("ingest")
    partial = job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(["test", "documents"]), dg.AssetKey(["test", "quarantine"]), dg.AssetKey(["test", "chunks"])]
    )
    assert partial.success
    lance = store.LanceStore(settings.lancedb_uri)
    assert lance.count(store.CHUNKS) > 0 and lance.open(store.EMBEDDINGS) is None
    materialize(settings, instance)
    ids = lance.read(store.EMBEDDINGS, store.embeddings_schema(384), ["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == lance.count(store.CHUNKS)


def test_landing_files_in_hidden_and_questions_folders_are_not_documents(llmops_home: Path, tmp_path: Path) -> None:
    root = tmp_path / "landing"
    (root / "questions").mkdir(parents=True)
    (root / "questions" / "gold.jsonl").write_text('{"question": "q"}\n')
    (root / ".partial.pdf").write_bytes(b"%PDF-1.4 half an upload")
    shutil.copy(Path(__file__).parents[1] / "sample_corpus" / "release-checklist.txt", root)
    settings = load_settings("test").with_landing(root)
    result = materialize(settings, dg.DagsterInstance.ephemeral())
    assert metadata(result, "documents")["landing_files"] == 1
    assert metadata(result, "quarantine")["dagster/row_count"] == 0
