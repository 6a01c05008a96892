"""embeddings and vector_index: chunk vectors in LanceDB, and the search structures over them."""

from typing import TYPE_CHECKING, Any

import dagster as dg
import numpy as np

from llmops_dagster.assets._metadata import check_result, markdown_table, table_metadata
from llmops_dagster.assets.chunks import CHUNKS
from llmops_dagster.core import checks, index, store
from llmops_dagster.core.pipeline import EmbedResult, embed_chunks
from llmops_dagster.resources import ChunkerResource, ComputeEngineResource, EmbedderResource, LanceDBResource, VectorIndexResource
from llmops_dagster.resources.compute import PipesComputeResource

if TYPE_CHECKING:
    from llmops_dagster.core.embedding import Embedder
    from llmops_dagster.settings import IndexSettings

EMBEDDINGS = dg.AssetKey("embeddings")
VECTOR_INDEX = dg.AssetKey("vector_index")
VECTORS_VALID = "vectors_valid"
INDEX_MATCHES_CHUNKS = "index_matches_chunks"
ANN_RECALL = "ann_recall"
FULL_TEXT_INDEX_READY = "full_text_index_ready"


@dg.asset(key=EMBEDDINGS, deps=[CHUNKS], group_name="index", kinds={"lancedb", "pytorch"})
def embeddings(
    context: dg.AssetExecutionContext,
    lancedb: LanceDBResource,
    embedder: EmbedderResource,
    chunker: ChunkerResource,
    engine: ComputeEngineResource,
    compute: PipesComputeResource,
) -> dg.MaterializeResult:
    """Unit-norm vectors of each chunk's context (title, heading path) and text, upserted by chunk id.

    Only chunks the table does not hold yet are embedded; rows of removed chunks are deleted. If the
    table holds vectors of another model or context template, everything is embedded again and
    replaced in one commit. With ``compute: databricks`` the step runs as a Databricks job (the
    ``llmops-pipes-embed`` entry point, through Dagster Pipes).
    """
    if compute.on_databricks:
        return compute.run(context, "embed").get_materialize_result()
    lance = lancedb.store()
    model = embedder.load()
    fingerprint = chunker.index_fingerprint()
    context.log.info(f"embedding for {fingerprint} ({model.precision}), engine {engine.engine}: {engine.location}")
    result = embed_chunks(lance, model, fingerprint, log=context.log.info, encode=engine.encoder())
    return dg.MaterializeResult(metadata=embeddings_metadata(result, model, chunker, engine, lance.uri))


def embeddings_metadata(
    result: EmbedResult, model: "Embedder", chunker: ChunkerResource, engine: ComputeEngineResource, uri: str
) -> dict[str, Any]:
    """What ``embeddings`` reports, in process or from the ``embed`` and ``ingest`` Pipes steps."""
    summary = (
        f"**{result.rows}** vectors from `{model.fingerprint}` ({model.dimension} dims, {model.device}, "
        f"{model.precision}), context template `{chunker.config().context_template!r}`; **{result.embedded}** embedded "
        f"this run, {result.reused} reused, {result.write.deleted} removed"
        + (" — full rebuild after a model or template change" if result.rebuilt else "")
    )
    return {
        **table_metadata(store.embeddings_schema(model.dimension), result.rows, result.write.version, uri, store.EMBEDDINGS, summary),
        "embedded_this_run": result.embedded,
        "rows_removed": result.write.deleted,
        "embedding_model": model.fingerprint,
        "index_fingerprint": chunker.index_fingerprint(),
        "device": model.device,
        "precision": model.precision,
        "engine": engine.engine,
    }


@dg.asset_check(asset=EMBEDDINGS, blocking=True, description="vectors have the model's dimension, unit norm and no NaN")
def vectors_valid(lancedb: LanceDBResource, embedder: EmbedderResource) -> dg.AssetCheckResult:
    table = lancedb.store().open(store.EMBEDDINGS)
    stats = checks.VectorStats(dimension=embedder.load().dimension)
    if table is not None:
        for batch in table.search().select(["vector"]).limit(None).to_batches():
            column = batch.column("vector")
            stats.update(np.asarray(column.values.to_numpy(zero_copy_only=False)).reshape(len(column), -1))
    return check_result(checks.vectors_valid(stats))


@dg.asset_check(asset=EMBEDDINGS, blocking=True, description="index rows = chunks, one embedding model")
def index_matches_chunks(lancedb: LanceDBResource, embedder: EmbedderResource, chunker: ChunkerResource) -> dg.AssetCheckResult:
    lance = lancedb.store()
    model = embedder.load()
    chunk_ids = set(lance.read(store.CHUNKS, store.CHUNKS_SCHEMA, ["id"]).column("id").to_pylist())
    stored = lance.read(store.EMBEDDINGS, store.embeddings_schema(model.dimension), ["id", "embedding_model"])
    models = set(stored.column("embedding_model").to_pylist())
    expected = chunker.index_fingerprint()
    return check_result(checks.index_matches_chunks(chunk_ids, set(stored.column("id").to_pylist()), models, expected))


@dg.asset(key=VECTOR_INDEX, deps=[EMBEDDINGS], group_name="index", kinds={"lancedb"})
def vector_index(context: dg.AssetExecutionContext, lancedb: LanceDBResource, vector_index: VectorIndexResource) -> dg.MaterializeResult:
    """Full-text (BM25) index for hybrid search, plus an IVF ANN index once the table is large.

    Indexes are built once and then kept current by folding in new rows; nothing is rebuilt when
    nothing changed.
    """
    table = lancedb.store().open(store.EMBEDDINGS)
    if table is None:
        raise dg.Failure("the embeddings table does not exist yet; materialize embeddings first")
    settings = vector_index.settings()
    state = index.ensure_indexes(table, settings.ann_params())
    for action in state.actions:
        context.log.info(action)
    return dg.MaterializeResult(metadata=vector_index_metadata(state, table.version, settings))


def vector_index_metadata(state: index.IndexState, table_version: int, settings: "IndexSettings") -> dict[str, Any]:
    """What ``vector_index`` reports, in process or from the ``ingest`` Pipes step."""
    summary = markdown_table(
        ["rows", "full-text index", "ANN index", "unindexed rows", "changes"],
        [[state.rows, "yes" if state.fts_index else "no", state.ann_index or f"none (exact below {settings.ann_min_rows})",
          state.unindexed_rows, "; ".join(state.actions) or "none"]],
    )
    return {
        "dagster/row_count": state.rows,
        "table_version": table_version,
        "full_text_index": state.fts_index,
        "ann_index": state.ann_index or "none",
        "ann_partitions": state.ann_partitions or 0,
        "summary": dg.MetadataValue.md(summary),
    }


@dg.asset_check(asset=VECTOR_INDEX, blocking=True, description="ANN recall@10 against exact search on a sample")
def ann_recall(lancedb: LanceDBResource, vector_index: VectorIndexResource) -> dg.AssetCheckResult:
    table, settings = lancedb.store().open(store.EMBEDDINGS), vector_index.settings()
    ann_index = index.describe(table).ann_index if table is not None else None
    if ann_index is None:
        return check_result(checks.ann_recall_ok(None, settings.ann_min_recall, 0, None))
    report = index.measure_recall(table, settings.ann_params(), sample=settings.recall_sample)
    verdict = checks.ann_recall_ok(report.recall_at_k, settings.ann_min_recall, report.queries, ann_index)
    verdict.metadata.update({"ann_p50_ms": round(report.ann_p50_ms, 2), "exact_p50_ms": round(report.exact_p50_ms, 2)})
    return check_result(verdict)


@dg.asset_check(asset=VECTOR_INDEX, description="the full-text index exists and covers every row")
def full_text_index_ready(lancedb: LanceDBResource) -> dg.AssetCheckResult:
    table = lancedb.store().open(store.EMBEDDINGS)
    state = index.describe(table) if table is not None else None
    if state is None or not state.fts_index:
        return dg.AssetCheckResult(passed=False, description="no full-text index: text and hybrid search will fail")
    return dg.AssetCheckResult(
        passed=state.unindexed_rows == 0,
        description=f"full-text index over {state.rows} rows, {state.unindexed_rows} unindexed",
        metadata={"rows": state.rows, "unindexed_rows": state.unindexed_rows},
    )
