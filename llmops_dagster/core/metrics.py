"""Retrieval and answer metrics. Pure functions over ranked ids and strings.

Each query has one or more relevant ids; ``ranked`` is the system's ranking, best first.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

RETRIEVAL_METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")  # what retrieval_report gives
def metric_name(name: str) -> str:
    """A metric as a column or tag name: ``recall@5`` → ``recall_at_5``."""
    return name.replace("@", "_at_")


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def recall_at_k(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    """Share of the relevant ids found in the top k."""
    if not relevant:
        raise ValueError("a query needs at least one relevant id")
    return len(set(ranked[:k]) & relevant) / len(relevant)


def reciprocal_rank(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    """1/rank of the first relevant id in the top k, else 0."""
    for rank, item in enumerate(ranked[:k], 1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: set[str], k: int = 10) -> float:
    """Binary-relevance nDCG@k."""
    if not relevant:
        raise ValueError("a query needs at least one relevant id")
    gain = sum(1.0 / math.log2(rank + 1) for rank, item in enumerate(ranked[:k], 1) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(relevant)) + 1))
    return gain / ideal


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def retrieval_report(rankings: Sequence[Sequence[str]], relevant: Sequence[set[str]], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean recall@k for each k, MRR@10 and nDCG@10 over a query set."""
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings for {len(relevant)} queries")
    if not rankings:
        raise ValueError("the query set is empty")
    count = len(rankings)
    report = {f"recall@{k}": sum(recall_at_k(r, g, k) for r, g in zip(rankings, relevant, strict=True)) / count for k in ks}
    report["mrr@10"] = sum(reciprocal_rank(r, g, 10) for r, g in zip(rankings, relevant, strict=True)) / count
    report["ndcg@10"] = sum(ndcg_at_k(r, g, 10) for r, g in zip(rankings, relevant, strict=True)) / count
    report["queries"] = float(count)
    return report
