"""Embedding at scale as a Pipes process: the environment's chunks not yet in the index are
embedded and upserted by ``core.pipeline.embed_chunks``, the function the ``embeddings`` asset
calls, and the asset's own metadata is reported back."""

from __future__ import annotations

from collections.abc import Sequence

from llmops_dagster.pipes._session import arguments, environment, logger, open_pipes, report, resources


def main(argv: Sequence[str] | None = None) -> None:
    args = arguments("embed", argv)
    with open_pipes() as pipes:
        from llmops_dagster.assets.index import embeddings_metadata
        from llmops_dagster.core.pipeline import embed_chunks

        log = logger(pipes)
        built = resources(environment(args, pipes))
        engine, chunker = built["engine"], built["chunker"]
        lance, model = built["lancedb"].store(), built["embedder"].load()
        fingerprint = chunker.index_fingerprint()
        log.info(f"embedding for {fingerprint} ({model.precision}), engine {engine.engine}: {engine.location}")
        result = embed_chunks(lance, model, fingerprint, log=log.info, encode=engine.encoder())
        report(pipes, {**embeddings_metadata(result, model, chunker, engine, lance.uri), "compute": "pipes"})


if __name__ == "__main__":
    main()
