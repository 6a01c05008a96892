"""Retrieval quality on gold questions: hybrid against text-only and vector-only search, in one run.

    .venv/bin/python bench/quality.py [--landing DIR]

Indexes DIR (default: the sample corpus) in a temporary LanceDB folder with the project's own
pipeline, then evaluates the gold questions in DIR/questions/*.jsonl (relevant = the named source
file) with vector, text and hybrid retrieval through ``RagPipeline``, the code the model serves
with. Prints recall@1/5/10, MRR@10, nDCG@10 and answer token-F1 per mode, and the ratio of hybrid's
MRR@10 to the better of the two single modes (≥ 1.0 means hybrid is no worse).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmops_dagster.core import index, store  # noqa: E402
from llmops_dagster.core.chunking import ChunkConfig, Chunker  # noqa: E402
from llmops_dagster.core.embedding import EmbedderConfig, load_embedder, model_fingerprint  # noqa: E402
from llmops_dagster.core.evaluation import evaluate, evaluation_set  # noqa: E402
from llmops_dagster.core.pipeline import chunk_documents, embed_chunks, ingest  # noqa: E402
from llmops_dagster.core.questions import landing_questions  # noqa: E402
from llmops_dagster.core.rag import QueryEncoder, RagConfig, RagPipeline  # noqa: E402

METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, default=REPO / "sample_corpus")
    args = parser.parse_args()
    questions, rejected = landing_questions(args.landing)
    if not questions:
        sys.exit(f"no gold questions in {args.landing / 'questions'}")
    embedder = load_embedder(EmbedderConfig())
    with tempfile.TemporaryDirectory(prefix="llmops-quality-") as scratch:
        lance = store.LanceStore(scratch)
        ingest(args.landing, lance, 1 << 30)
        config = ChunkConfig()
        chunk_documents(lance, Chunker(embedder.tokenizer, config, embedder.max_tokens), config.fingerprint(model_fingerprint(str(embedder.model_path))))
        embed_chunks(lance, embedder)
        table = lance.open(store.EMBEDDINGS)
        index.ensure_indexes(table, index.AnnParams())
        sources = set(lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path"]).column("path").to_pylist())
        items, skipped = evaluation_set([], questions, sources)
        pipeline = RagPipeline(QueryEncoder(embedder), table, index.AnnParams(), RagConfig())
        print(f"{args.landing}: {table.count_rows()} chunks, {len(items)} gold questions ({len(rejected) + len(skipped)} skipped)")
        print(f"{'mode':<8}" + "".join(f"{m:>11}" for m in (*METRICS, "answer F1")))
        results = {}
        for mode in ("vector", "text", "hybrid"):
            report = evaluate(pipeline, items, mode, answers=True)["gold"]
            results[mode] = report
            print(f"{mode:<8}" + "".join(f"{report[m]:>11.3f}" for m in METRICS) + f"{report.get('answer_f1', float('nan')):>11.3f}")
    best_single = max(results["vector"]["mrr@10"], results["text"]["mrr@10"])
    print(f"hybrid MRR@10 / best of vector and text: {results['hybrid']['mrr@10'] / best_single:.3f}")


if __name__ == "__main__":
    main()
