"""Full against incremental ingestion on a generated 500-page PDF corpus, in one run.

    .venv/bin/python bench/ingest.py [--pages 500] [--pages-per-file 10]

Generates PDFs (reportlab, seeded), runs the ingestion steps the assets run (parse → chunk →
embed → index) on an empty store, then changes one file and runs them again. Prints pages/s and
chunks/s for the full run and the incremental run's cost as a fraction of the full run. The last
line, ``ratio: X.XX``, is the full run's time over the incremental run's (the full rebuild is the
baseline an incremental pipeline saves).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmops_dagster.core import index, pipeline  # noqa: E402
from llmops_dagster.core.chunking import ChunkConfig, Chunker, index_fingerprint  # noqa: E402
from llmops_dagster.core.embedding import EmbedderConfig, load_embedder, model_fingerprint  # noqa: E402
from llmops_dagster.core.store import EMBEDDINGS, LanceStore  # noqa: E402

WORDS = (
    "pipeline asset sensor chunk vector index embedding model registry champion challenger landing "
    "quarantine document page heading token window overlap recall latency partition cluster query "
    "answer passage source version table commit schema metadata check threshold rollback approval "
    "environment staging production notebook spark executor batch driver memory network storage"
).split()


def paragraph(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(3, 6)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 18))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def write_pdf(path: Path, pages: int, seed: int) -> None:
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate

    rng = random.Random(seed)
    styles = getSampleStyleSheet()
    story = []
    for page in range(pages):
        story.append(Paragraph(f"Section {seed}.{page + 1}", styles["Heading2"]))
        story += [Paragraph(paragraph(rng), styles["BodyText"]) for _ in range(4)]
        story.append(PageBreak())
    SimpleDocTemplate(str(path)).build(story)


def run_steps(root: Path, lance: LanceStore, chunker: Chunker, fingerprint: str, embedder) -> dict:
    timings = {}
    started = time.perf_counter()
    ingested = pipeline.ingest(root, lance, 1 << 30)
    timings["parse"] = time.perf_counter() - started
    step = time.perf_counter()
    chunked = pipeline.chunk_documents(lance, chunker, fingerprint)
    timings["chunk"] = time.perf_counter() - step
    step = time.perf_counter()
    embedded = pipeline.embed_chunks(lance, embedder, index_fingerprint(embedder.fingerprint, chunker.config))
    timings["embed"] = time.perf_counter() - step
    step = time.perf_counter()
    index.ensure_indexes(lance.open(EMBEDDINGS), index.AnnParams())
    timings["index"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started
    return {"timings": timings, "parsed": len(ingested.diff.to_parse), "chunks": chunked.chunks, "embedded": embedded.embedded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--pages-per-file", type=int, default=10)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    root = work / "landing"
    root.mkdir()
    files = args.pages // args.pages_per_file
    for number in range(files):
        write_pdf(root / f"doc-{number:03d}.pdf", args.pages_per_file, seed=number)

    embedder = load_embedder(EmbedderConfig())
    from llmops_dagster.core.embedding import load_tokenizer

    tokenizer, window = load_tokenizer(str(embedder.model_path))
    config = ChunkConfig()
    chunker = Chunker(tokenizer, config, window)
    fingerprint = config.fingerprint(model_fingerprint(str(embedder.model_path)))
    lance = LanceStore(str(work / "lancedb"))

    full = run_steps(root, lance, chunker, fingerprint, embedder)
    write_pdf(root / "doc-000.pdf", args.pages_per_file, seed=10_000)  # one file changes
    incremental = run_steps(root, lance, chunker, fingerprint, embedder)
    unchanged = run_steps(root, lance, chunker, fingerprint, embedder)

    total = full["timings"]["total"]
    print(f"corpus: {files} PDFs, {args.pages} pages, {full['chunks']} chunks; embedder {embedder.precision} on {embedder.device}")
    print(f"{'run':<26}{'files parsed':>13}{'embedded':>10}{'seconds':>9}{'pages/s':>9}{'chunks/s':>10}{'vs full':>9}")
    for name, result, pages in (
        ("full", full, args.pages),
        ("incremental (1 changed)", incremental, args.pages_per_file),
        ("no change", unchanged, 0),
    ):
        seconds = result["timings"]["total"]
        print(
            f"{name:<26}{result['parsed']:>13}{result['embedded']:>10}{seconds:>9.2f}"
            f"{pages / seconds:>9.1f}{result['embedded'] / seconds:>10.1f}{seconds / total:>9.1%}"
        )
    print("step seconds (full):", {k: round(v, 2) for k, v in full["timings"].items()})
    print("step seconds (incremental):", {k: round(v, 2) for k, v in incremental["timings"].items()})
    print(f"ratio: {total / incremental['timings']['total']:.2f}")


if __name__ == "__main__":
    main()
