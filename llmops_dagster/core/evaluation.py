"""Offline evaluation of RAG pipelines, and the gate verdicts built on it.

The evaluation set is the held-out mined pairs (relevant = chunk ids) plus the gold questions of
the landing zone (relevant = the named source file, or its page or section when the question names
one; token-F1 where a gold answer is given). Rankings are compared at the level the gold names:
chunk ids for pairs, source files or locations for gold questions. Every system is evaluated
through ``RagPipeline``, the code the model serves with.

Systems that do not share chunk ids (the naive baseline's fixed windows) are compared at the
location level: a page of a paged document, else a section, else the file (``as_locations``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from llmops_dagster.core.checks import Verdict
from llmops_dagster.core.metrics import metric_name, retrieval_report, token_f1
from llmops_dagster.core.questions import Question
from llmops_dagster.core.rag import QueryEncoder, RagConfig, RagPipeline
from llmops_dagster.core.training import Pair

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from llmops_dagster.core.store import LanceStore

EVAL_DEPTH = 10
GATE_METRICS = ("recall@5", "mrr@10")
EVALUATION_SET_FILE = "evaluation/evaluation_set.json"  # in the MLflow run: the questions its selection and gate share


@dataclass(frozen=True)
class GateSettings:
    """What the gate asks of a challenger: minimum metrics, tolerances against the champion and the
    naive baseline, and the smoke question it must answer after loading."""

    min_recall_at_5: float = 0.6
    min_mrr_at_10: float = 0.5
    champion_tolerance: float = 0.02  # the challenger may trail the champion by this much on each gate metric
    baseline_tolerance: float = 0.02  # ... and the naive BM25 baseline by this much
    min_groundedness: float | None = None  # answers' share supported by their passages; None: reported, not gated
    smoke_question: str = "What do these documents describe?"

    def __post_init__(self) -> None:
        for name in ("min_recall_at_5", "min_mrr_at_10", "champion_tolerance", "baseline_tolerance"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.min_groundedness is not None and not 0 <= self.min_groundedness <= 1:
            raise ValueError("min_groundedness must be between 0 and 1, or null")

    def minimums(self) -> dict[str, float]:
        return {"recall@5": self.min_recall_at_5, "mrr@10": self.min_mrr_at_10}


@dataclass(frozen=True)
class EvalItem:
    query: str
    relevant: frozenset[str]
    level: str  # chunk | source | location
    query_set: str  # held_out | gold
    answer: str | None = None

    def to_row(self) -> dict:
        return {**asdict(self), "relevant": sorted(self.relevant)}

    @staticmethod
    def from_row(row: dict) -> EvalItem:
        return EvalItem(**{**row, "relevant": frozenset(row["relevant"])})


class Located(Protocol):
    """Where a retrieved passage comes from; chunks and baseline windows both have this shape."""

    source: str
    page: int | None
    page_end: int | None


def location_key(source: str, page: int | None = None, section: str | None = None) -> str:
    if page is not None:
        return f"{source}#page={page}"
    if section:
        return f"{source}#section={section}"
    return source


def passage_locations(passage: Located) -> set[str]:
    keys = {passage.source}
    if passage.page is not None:
        keys |= {location_key(passage.source, n) for n in range(passage.page, (passage.page_end or passage.page) + 1)}
    headings = getattr(passage, "headings", None) or (getattr(passage, "heading", ""),)
    keys |= {location_key(passage.source, section=heading) for heading in headings if heading}
    return keys


def location_ranking(passages: Iterable[Located], relevant: frozenset[str]) -> list[str]:
    """The relevant locations in the order passages reach them; a passage that reaches none is a miss."""
    ranking: list[str] = []
    for rank, passage in enumerate(passages):
        hits = sorted(passage_locations(passage) & relevant)
        ranking.extend(hits or [f"\0miss{rank}"])
    return list(dict.fromkeys(ranking))


def as_locations(items: Sequence[EvalItem], chunks: dict[str, Located]) -> list[EvalItem]:
    """Chunk-level items restated as locations (a relevant chunk's first page, else its section), so
    systems with other passage boundaries can be scored on the same questions."""
    restated = []
    for item in items:
        if item.level != "chunk":
            restated.append(item)
            continue
        keys = frozenset(
            location_key(chunk.source, chunk.page, getattr(chunk, "heading", "") or None)
            for chunk_id in item.relevant
            if (chunk := chunks.get(chunk_id)) is not None
        )
        restated.append(replace(item, relevant=keys, level="location"))
    return restated


def evaluation_set(held_out: Sequence[Pair], gold: Sequence[Question], known_sources: set[str]) -> tuple[list[EvalItem], list[str]]:
    """Items to evaluate, and why any gold question was left out (its source is not indexed)."""
    items = [EvalItem(pair.query, pair.relevant, "chunk", "held_out") for pair in held_out]
    skipped = []
    for question in gold:
        if question.source is not None and question.source not in known_sources:
            skipped.append(f"{question.origin}: source '{question.source}' is not an indexed document")
            continue
        relevant = frozenset({location_key(question.source, question.page, question.section)}) if question.source else frozenset()
        level = "location" if question.page is not None or question.section else "source"
        items.append(EvalItem(question.question, relevant, level, "gold", question.answer))
    return items, skipped


def landing_evaluation_set(held_out: Sequence[Pair], landing: Path, lance: LanceStore) -> tuple[list[EvalItem], list[str]]:
    """The evaluation set of an environment: its held-out pairs plus the landing zone's gold
    questions; and why any gold question was skipped."""
    from llmops_dagster.core import store
    from llmops_dagster.core.questions import landing_questions

    gold, rejected = landing_questions(landing)
    sources = set(lance.read(store.DOCUMENTS, store.DOCUMENTS_SCHEMA, ["path"]).column("path").to_pylist())
    items, skipped = evaluation_set(held_out, gold, sources)
    return items, [*map(str, rejected), *skipped]


def run_evaluation_set(
    client: MlflowClient,
    run_id: str | None,
    build: Callable[[], tuple[list[EvalItem], list[str]]],
    warn: Callable[[str], None] = lambda _: None,
) -> tuple[list[EvalItem], int]:
    """The evaluation set of MLflow run ``run_id``: the one a step of the run already kept there,
    else ``build()``'s, kept now (``EVALUATION_SET_FILE``); and how many gold questions it skipped.

    Retrieval selection (``rag_model``) and the gate (``evaluation``) of one run, or a retried step,
    so score the same questions even if the landing zone changes in between, and the set is built
    once. Without a run (``run_id`` None) it is built each time. Skip reasons go to ``warn``.
    """
    kept = logged_evaluation_set(client, run_id) if run_id else None
    if kept is not None:
        items, skipped = kept
    else:
        items, skipped = build()
        if run_id:
            payload = {"items": [item.to_row() for item in items], "skipped": skipped}
            client.log_text(run_id, json.dumps(payload, sort_keys=True), EVALUATION_SET_FILE)
    for problem in skipped:
        warn(f"gold question skipped: {problem}")
    return items, len(skipped)


def logged_evaluation_set(client: MlflowClient, run_id: str) -> tuple[list[EvalItem], list[str]] | None:
    """The evaluation set kept in MLflow run ``run_id``, or None where it has none."""
    from mlflow.exceptions import MlflowException

    try:
        path = client.download_artifacts(run_id, EVALUATION_SET_FILE)
    except (MlflowException, OSError):
        return None
    payload = json.loads(Path(path).read_text())
    return [EvalItem.from_row(row) for row in payload["items"]], list(payload["skipped"])


def ranking(passages: Sequence[Located], item: EvalItem) -> list[str]:
    """A system's passages as the ids the item's relevance is stated in."""
    if item.level == "chunk":
        return [p.id for p in passages]  # type: ignore[attr-defined]
    if item.level == "location":
        return location_ranking(passages, item.relevant)
    return list(dict.fromkeys(p.source for p in passages))


def score_rankings(rankings: Sequence[Sequence[str]], items: Sequence[EvalItem]) -> dict[str, dict[str, float]]:
    """Metrics per query set (``held_out``, ``gold``) and over ``all``; items without relevance are skipped."""
    report: dict[str, dict[str, float]] = {}
    scored = [(r, item) for r, item in zip(rankings, items, strict=True) if item.relevant]
    for query_set in ("all", "held_out", "gold"):
        chosen = [(r, item) for r, item in scored if query_set == "all" or item.query_set == query_set]
        if chosen:
            report[query_set] = retrieval_report([r for r, _ in chosen], [set(item.relevant) for _, item in chosen])
    return report


def evaluate_retriever(retrieve: Callable[[str, int], Sequence[Located]], items: Sequence[EvalItem]) -> dict[str, dict[str, float]]:
    """Metrics of any retriever (a baseline) over the items; see ``evaluate`` for the pipeline's."""
    return score_rankings([ranking(retrieve(item.query, EVAL_DEPTH), item) for item in items], items)


class _Precomputed:
    """The pipeline's query encoder with every evaluation query encoded in one batch up front."""

    def __init__(self, encoder: QueryEncoder, queries: list[str]) -> None:
        self.embedder = encoder.embedder
        self.encoder = encoder
        self.cache = dict(zip(queries, encoder.encode(queries), strict=True)) if queries else {}

    def encode(self, texts: list[str]) -> np.ndarray:
        if all(text in self.cache for text in texts):
            return np.stack([self.cache[text] for text in texts])
        return self.encoder.encode(texts)


def with_cached_queries(pipeline: RagPipeline, queries: Iterable[str], config: RagConfig | None = None) -> RagPipeline:
    """The pipeline (with ``config`` instead of its own, if given) with these queries encoded once, up
    front, and their candidate lists kept for every pipeline derived from it (they share the encoder)."""
    if isinstance(pipeline.encoder, _Precomputed):
        encoder, memo = pipeline.encoder, pipeline.memo
    else:
        encoder, memo = _Precomputed(pipeline.encoder, list(dict.fromkeys(queries))), {}
    return pipeline.variant(encoder, config, memo)


def evaluate(pipeline: RagPipeline, items: Sequence[EvalItem], mode: str, answers: bool = False) -> dict[str, dict[str, float]]:
    """Metrics per query set (``held_out``, ``gold``) and over ``all``; answer F1 when ``answers``."""
    if mode != "text":
        pipeline = with_cached_queries(pipeline, (item.query for item in items))
    if pipeline.config.rerank != "none":
        from llmops_dagster.core.rerank import load_reranker

        load_reranker(str(pipeline.encoder.embedder.model_path)).prepare([item.query for item in items])
    scored = [item for item in items if item.relevant]
    report = score_rankings([ranking(pipeline.retrieve(item.query, EVAL_DEPTH, mode), item) for item in scored], scored)
    gold = [item for item in items if item.query_set == "gold"]
    if answers and gold:
        report.setdefault("gold", {}).update(answer_report(pipeline, gold, mode))
    return report


def answer_report(pipeline: RagPipeline, items: Sequence[EvalItem], mode: str) -> dict[str, float]:
    """How the pipeline's generator answers these questions:
    - ``answer_f1``: token F1 against the gold answers, where given (``answered`` of them);
    - ``groundedness``: the share of an answer's content found in the passages it cites (all of
      them when it cites none), over the answers given;
    - ``citation_validity``: the share of citations naming a passage that supports the sentence,
      over answers that cite by number (extractive answers quote, so they have none);
    - ``no_answer_rate``, ``generation_errors`` (failed after retries), and per answer the mean
      ``answer_latency_ms``, ``prompt_tokens`` and ``completion_tokens``."""
    from llmops_dagster.core.answer_quality import citation_validity, groundedness
    from llmops_dagster.core.generation import strip_citations

    f1, grounded, valid, latency, prompt, completion = [], [], [], [], [], []
    no_answer = errors = 0
    for item in items:
        prediction = pipeline.answer(item.query, mode=mode)
        generation = prediction.generation
        texts = [p.text for p in prediction.passages]
        latency.append(prediction.latency_ms)
        if generation is not None:
            prompt.append(generation.usage.prompt_tokens)
            completion.append(generation.usage.completion_tokens)
            errors += generation.error is not None
        if item.answer:  # [n] markers are not words of the answer
            f1.append(token_f1(strip_citations(prediction.answer) if prediction.found else "", item.answer))
        if not prediction.found:
            no_answer += 1
            continue
        cited = [texts[n - 1] for n in (generation.cited if generation else ()) if 0 < n <= len(texts)]
        score = groundedness(prediction.answer, cited or texts)
        if score is not None:
            grounded.append(score)
        validity = citation_validity(prediction.answer, texts)
        if validity is not None:
            valid.append(validity)

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    report = {
        "answer_f1": mean(f1),
        "answered": float(len(f1)),
        "groundedness": mean(grounded),
        "citation_validity": mean(valid),
        "no_answer_rate": no_answer / len(items),
        "generation_errors": float(errors),
        "answer_latency_ms": mean(latency),
        "prompt_tokens": mean(prompt),
        "completion_tokens": mean(completion),
    }
    return {name: value for name, value in report.items() if value is not None}


def answers_grounded(answers: dict[str, float], minimum: float | None, label: str) -> Verdict:
    """The challenger's answers on the gold questions are grounded in their passages at least
    ``minimum`` (``evaluation.min_groundedness``; None: reported, not gated)."""
    value = answers.get("groundedness")
    metadata: dict[str, float | str] = {"generator": label, **{k: round(v, 4) for k, v in answers.items()}}
    if minimum is None:
        shown = f"{value:.3f}" if value is not None else "n/a (no answers)"
        return Verdict(True, f"groundedness {shown} ({label}); not gated: evaluation.min_groundedness is unset", metadata)
    metadata["min_groundedness"] = minimum
    if value is None:
        return Verdict(False, f"{label} gave no answer to any gold question, so groundedness cannot reach {minimum}", metadata)
    if value < minimum:
        return Verdict(False, f"groundedness {value:.3f} < {minimum} ({label})", metadata)
    return Verdict(True, f"groundedness {value:.3f} ≥ {minimum} ({label})", metadata)


def meets_thresholds(metrics: dict[str, float], thresholds: GateSettings) -> Verdict:
    minimums = thresholds.minimums()
    metadata = {name: round(metrics.get(name, 0.0), 4) for name in minimums} | {f"min_{k}": v for k, v in minimums.items()}
    below = [f"{name} {metrics.get(name, 0.0):.3f} < {minimum}" for name, minimum in minimums.items() if metrics.get(name, 0.0) < minimum]
    if below:
        return Verdict(False, "below the environment's thresholds: " + "; ".join(below), metadata)
    return Verdict(True, "meets thresholds: " + ", ".join(f"{n} {metrics[n]:.3f} ≥ {m}" for n, m in minimums.items()), metadata)


def no_worse_than_champion(
    challenger: dict[str, float], champion: dict[str, float] | None, tolerance: float, champion_label: str | None, not_comparable: str | None = None
) -> Verdict:
    if not_comparable:
        return Verdict(False, not_comparable, {"champion": champion_label or "none"})
    if champion is None:
        return Verdict(True, "no champion yet: nothing to compare with", {"champion": "none"})
    metadata: dict[str, float | str] = {"champion": champion_label or "", "tolerance": tolerance}
    worse = []
    for name in GATE_METRICS:
        delta = challenger.get(name, 0.0) - champion.get(name, 0.0)
        metadata[f"delta_{name}"] = round(delta, 4)
        if delta < -tolerance:
            worse.append(f"{name} {challenger.get(name, 0.0):.3f} vs champion {champion.get(name, 0.0):.3f}")
    if worse:
        return Verdict(False, f"worse than {champion_label} beyond {tolerance}: " + "; ".join(worse), metadata)
    return Verdict(True, f"no worse than {champion_label} (tolerance {tolerance})", metadata)


def beats_baseline(challenger: dict[str, float], baseline: dict[str, float], tolerance: float, label: str) -> Verdict:
    """The challenger against the naive baseline on the same questions: it may trail by ``tolerance``
    at most on each gate metric."""
    metadata: dict[str, float | str] = {"baseline": label, "tolerance": tolerance}
    behind = []
    for name in GATE_METRICS:
        ours, theirs = challenger.get(name, 0.0), baseline.get(name, 0.0)
        metadata[f"challenger_{metric_name(name)}"] = round(ours, 4)
        metadata[f"baseline_{metric_name(name)}"] = round(theirs, 4)
        if ours < theirs - tolerance:
            behind.append(f"{name} {ours:.3f} vs {theirs:.3f}")
    if behind:
        return Verdict(False, f"loses to the {label} beyond {tolerance}: " + "; ".join(behind), metadata)
    summary = ", ".join(f"{n} {challenger.get(n, 0.0):.3f} vs {baseline.get(n, 0.0):.3f}" for n in GATE_METRICS)
    return Verdict(True, f"no worse than the {label} (tolerance {tolerance}): {summary}", metadata)
