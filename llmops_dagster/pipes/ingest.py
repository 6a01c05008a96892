"""Ingestion as one Pipes process, the first task of the bundle's training job: landing zone →
documents and quarantine → chunks → embeddings → vector index, through the core functions the
ingestion and index assets call, each step reporting that asset's own metadata back (for the assets
the launching Dagster step materializes)."""

from __future__ import annotations

from collections.abc import Sequence

from llmops_dagster.pipes._session import arguments, environment, logger, open_pipes, report, resources


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("ingest", argv)
    with open_pipes() as pipes:
        from llmops_dagster.assets.chunks import chunks_metadata
        from llmops_dagster.assets.index import embeddings_metadata, vector_index_metadata
        from llmops_dagster.assets.ingestion import documents_metadata, quarantine_metadata
        from llmops_dagster.core import index, store
        from llmops_dagster.core.pipeline import chunk_documents, embed_chunks, ingest

        log = logger(pipes)
        settings = environment(args, pipes)
        built = resources(settings)
        landing, chunker, engine = built["landing"], built["chunker"], built["engine"]
        lance = built["lancedb"].store()
        marker = {"compute": "pipes"}

        ingested = ingest(landing.root, lance, landing.max_file_bytes, log=log.info)
        report(pipes, {**documents_metadata(ingested, lance.uri), **marker}, asset="documents")
        report(pipes, {**quarantine_metadata(ingested, lance.uri), **marker}, asset="quarantine")

        splitter, fingerprint = chunker.load()
        chunked = chunk_documents(lance, splitter, fingerprint, log=log.info)
        report(pipes, {**chunks_metadata(chunked, fingerprint, lance.uri), **marker}, asset="chunks")

        model, index_fingerprint = built["embedder"].load(), chunker.index_fingerprint()
        log.info(f"embedding for {index_fingerprint} ({model.precision}), engine {engine.engine}: {engine.location}")
        embedded = embed_chunks(lance, model, index_fingerprint, log=log.info, encode=engine.encoder())
        report(pipes, {**embeddings_metadata(embedded, model, chunker, engine, lance.uri), **marker}, asset="embeddings")

        table = lance.open(store.EMBEDDINGS)
        if table is None:
            raise RuntimeError(f"{settings.name}: no embeddings table after embedding; is the landing zone {landing.root} empty?")
        index_settings = built["vector_index"].settings()
        state = index.ensure_indexes(table, index_settings.ann_params())
        for action in state.actions:
            log.info(action)
        report(pipes, {**vector_index_metadata(state, table.version, index_settings), **marker}, asset="vector_index")


if __name__ == "__main__":
    main()
