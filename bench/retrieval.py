"""Vector search at scale: LanceDB ANN and hybrid search against exact NumPy search, in one run.

    .venv/bin/python bench/retrieval.py [--rows 100000 1000000] [--queries 200] [--index IVF_SQ]

Builds a table of clustered unit vectors (384 dimensions, like all-MiniLM-L6-v2) with the
project's own index code, then for a fixed set of held-out query vectors measures p50/p95 latency
and recall@10 of: exact NumPy search (the baseline), LanceDB's ANN search with the project's
default nprobes/refine_factor, and hybrid (ANN + BM25, RRF) search. Prints index build time too.
The last line, ``ratio: X.XX``, is exact search's p50 over ANN search's p50 at the largest size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

os.environ.setdefault("LANCEDB_LOG", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmops_dagster.core import index, store  # noqa: E402

DIMENSION = 384
WORDS = np.array("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split())


def clustered(rows: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    vectors = centers[rng.integers(len(centers), size=rows)] + 0.6 * rng.normal(size=(rows, DIMENSION))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def build_table(path: Path, vectors: np.ndarray, rng: np.random.Generator):
    schema = store.embeddings_schema(DIMENSION)
    lance = store.LanceStore(str(path))
    for start in range(0, len(vectors), 100_000):
        part = vectors[start : start + 100_000]
        n = len(part)
        words = WORDS[rng.integers(len(WORDS), size=(n, 3))]
        data = {
            "id": [f"c{start + i}" for i in range(n)],
            "doc_id": ["d"] * n,
            "source": [f"doc{(start + i) % 1000}.md" for i in range(n)],
            "ordinal": np.arange(start, start + n, dtype=np.int32),
            "text": [" ".join(row) for row in words],
            "n_tokens": np.full(n, 3, dtype=np.int32),
            "page": pa.nulls(n, pa.int32()),
            "page_end": pa.nulls(n, pa.int32()),
            "heading": [""] * n,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), DIMENSION),
            "embedding_model": ["bench"] * n,
        }
        lance.apply(store.EMBEDDINGS, schema, "id", pa.table(data), [])
    return lance.open(store.EMBEDDINGS)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--index", default="IVF_SQ", choices=index.ANN_INDEX_TYPES)
    parser.add_argument("--nprobes", type=int, default=32)
    parser.add_argument("--refine-factor", type=int, default=10)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(200, DIMENSION))
    queries = clustered(args.queries, rng, centers)
    print(f"{'rows':>9} {'method':<26}{'p50 ms':>8}{'p95 ms':>8}{'recall@10':>11}{'build s':>9}")
    speedup = float("nan")
    for rows in args.rows:
        vectors = clustered(rows, rng, centers)
        exact_ids, exact_times = [], []
        for query in queries:
            started = time.perf_counter()
            top = np.argpartition(-(vectors @ query), 10)[:10]
            exact_times.append(time.perf_counter() - started)
            exact_ids.append({f"c{i}" for i in top})
        p50, p95 = percentiles(exact_times)
        exact_p50 = p50
        print(f"{rows:>9} {'exact (NumPy, baseline)':<26}{p50:>8.2f}{p95:>8.2f}{1.0:>11.3f}{'-':>9}")

        table = build_table(Path(tempfile.mkdtemp(prefix="llmops-retrieval-")), vectors, rng)
        params = index.AnnParams(ann_min_rows=1, nprobes=args.nprobes, refine_factor=args.refine_factor, ann_index_type=args.index)
        started = time.perf_counter()
        index.ensure_indexes(table, params)
        build = time.perf_counter() - started

        for method in ("ann", "hybrid"):
            hits, times = [], []
            for query, truth in zip(queries, exact_ids, strict=True):
                started = time.perf_counter()
                if method == "ann":
                    found = index._vector_query(table, query, 10, params).select(["id", "_distance"]).to_arrow()
                else:
                    found = (
                        table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
                        .vector(query).text(" ".join(rng.choice(WORDS, 2))).distance_type("cosine")
                        .nprobes(params.nprobes).refine_factor(params.refine_factor).limit(10).select(["id"]).to_arrow()
                    )
                times.append(time.perf_counter() - started)
                hits.append(len(set(found.column("id").to_pylist()) & truth) / 10)
            p50, p95 = percentiles(times)
            label = f"LanceDB {args.index}" if method == "ann" else "LanceDB hybrid (RRF)"
            recall = f"{np.mean(hits):.3f}" if method == "ann" else "n/a"
            print(f"{rows:>9} {label:<26}{p50:>8.2f}{p95:>8.2f}{recall:>11}{build:>9.1f}")
            if method == "ann":
                speedup = exact_p50 / p50
    print(f"ratio: {speedup:.2f}")


if __name__ == "__main__":
    main()
