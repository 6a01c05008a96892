"""Embedding throughput and quality: our transformers path against sentence-transformers, same run.

    .venv/bin/python bench/embed.py [--corpus DIR] [--texts N] [--repeats R]

Chunks the corpus with the project's chunker, embeds the same texts with
``SentenceTransformer.encode`` (the baseline) and with our ``Embedder`` at fp32, bf16, int8 and
"auto" (the default path), and prints chunks/s, the ratio to the baseline, retrieval quality as the
mean top-10 overlap with the fp32 results (queries: the first sentence of each chunk), and
batch-independence: the lowest cosine between a text embedded alone and padded in a mixed batch.
The last line, ``ratio: X.XX``, is the default path's speed over the baseline's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmops_dagster.core.chunking import ChunkConfig, Chunker  # noqa: E402
from llmops_dagster.core.documents import ParseError, detect_format, parse_file  # noqa: E402
from llmops_dagster.core.embedding import (  # noqa: E402
    Embedder,
    EmbedderConfig,
    batch_independence,
    default_model_path,
    load_tokenizer,
)
from llmops_dagster.core.quantization import first_sentence  # noqa: E402


def corpus_chunks(root: Path) -> list[str]:
    tokenizer, window = load_tokenizer(str(default_model_path()))
    chunker = Chunker(tokenizer, ChunkConfig(), window)
    texts = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and detect_format(path):
            try:
                texts += [c.text for c in chunker.chunk(str(path), parse_file(path, 1 << 30).blocks)]
            except ParseError:
                continue
    return texts


def timed(encode, texts: list[str], repeats: int) -> tuple[np.ndarray, float]:
    encode(texts[:16])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        vectors = encode(texts)
        best = min(best, time.perf_counter() - started)
    return np.asarray(vectors, dtype=np.float32), len(texts) / best


def top10(queries: np.ndarray, corpus: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ corpus.T), axis=1)[:, :10]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[1] / "sample_corpus")
    parser.add_argument("--texts", type=int, default=512, help="texts per timing (chunks are cycled to reach it)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    chunks = corpus_chunks(args.corpus)
    texts = [chunks[i % len(chunks)] for i in range(max(args.texts, len(chunks)))]
    queries = [first_sentence(c) for c in chunks[:200]]
    print(f"{len(chunks)} distinct chunks from {args.corpus}, {len(texts)} texts per timing, "
          f"{len(queries)} queries; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")

    model_path = str(default_model_path())
    baseline = SentenceTransformer(model_path, device="cpu")
    _, base_rate = timed(lambda t: baseline.encode(t, batch_size=64, normalize_embeddings=True), texts, args.repeats)

    rows = [("sentence-transformers encode (baseline)", base_rate, None, None)]
    reference = None
    mixed = [text for pair in zip(queries[:16], chunks[:16], strict=False) for text in pair]
    for precision in ("fp32", "bf16", "int8", "auto"):
        embedder = Embedder(EmbedderConfig(precision=precision, device="cpu"))
        _, rate = timed(embedder.encode, texts, args.repeats)
        ranked = top10(embedder.encode(queries), embedder.encode(chunks))
        if reference is None:
            reference = ranked
        name = f"llmops {precision}" + (f" (= {embedder.precision})" if precision == "auto" else "")
        rows.append((name, rate, overlap(ranked, reference), batch_independence(embedder.encode, mixed)))
    verdict = embedder.int8_verdict()

    print(f"\n{'path':<42}{'chunks/s':>10}{'× baseline':>12}{'top-10 vs fp32':>16}{'alone vs batch':>16}")
    for name, rate, quality, alone in rows:
        shown = "-" if quality is None else f"{quality:.3f}"
        cosine = "-" if alone is None else f"{alone:.5f}"
        print(f"{name:<42}{rate:>10.1f}{rate / base_rate:>12.2f}{shown:>16}{cosine:>16}")
    print(
        f"\nint8 gate on this machine: probe top-10 overlap {verdict['overlap']:.3f} "
        f"(needs {verdict['min_overlap']:.2f}), batch cosine {verdict['batch_cosine']:.5f}: "
        f"{'passes' if verdict['passes'] else 'fails'}; precision='auto' picks {embedder.precision}"
    )
    print(f"ratio: {rows[-1][1] / base_rate:.2f}")


if __name__ == "__main__":
    main()
