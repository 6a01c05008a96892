"""Embedding at scale as a Pipes process: the environment's chunks not yet in the index are
embedded and upserted by ``core.pipeline.embed_chunks``, the function the in-process asset calls."""

from __future__ import annotations

from collections.abc import Sequence

from llmops_dagster.pipes._session import arguments, environment, open_pipes, resources


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("embed", argv)
    with open_pipes() as pipes:
        from llmops_dagster.core import store
        from llmops_dagster.core.pipeline import embed_chunks

        built = resources(environment(args, pipes))
        engine, chunker = built["engine"], built["chunker"]
        lance, model = built["lancedb"].store(), built["embedder"].load()
        fingerprint = chunker.index_fingerprint()
        pipes.log.info(f"embedding for {fingerprint} ({model.precision}), engine {engine.engine}: {engine.location}")
        result = embed_chunks(lance, model, fingerprint, log=pipes.log.info, encode=engine.encoder())
        pipes.report_asset_materialization(
            metadata={
                "dagster/row_count": result.rows,
                "table_version": result.write.version,
                "table": store.EMBEDDINGS,
                "embedded_this_run": result.embedded,
                "reused": result.reused,
                "rows_removed": result.write.deleted,
                "rebuilt": result.rebuilt,
                "embedding_model": model.fingerprint,
                "index_fingerprint": fingerprint,
                "device": model.device,
                "precision": model.precision,
                "engine": engine.engine,
                "compute": "pipes",
            }
        )


if __name__ == "__main__":
    main()
