import math

import pytest

from llmops_dagster.core.metrics import ndcg_at_k, normalize_answer, recall_at_k, reciprocal_rank, retrieval_report, token_f1


def test_recall_counts_relevant_ids_in_the_top_k() -> None:
    ranked = ["a", "b", "c", "d"]
    assert recall_at_k(ranked, {"c"}, 2) == 0.0
    assert recall_at_k(ranked, {"c"}, 3) == 1.0
    assert recall_at_k(ranked, {"a", "d", "z"}, 4) == pytest.approx(2 / 3)


def test_reciprocal_rank_and_ndcg() -> None:
    assert reciprocal_rank(["x", "y", "a"], {"a"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x"] * 10 + ["a"], {"a"}) == 0.0  # beyond the cut-off
    assert ndcg_at_k(["a", "x"], {"a"}) == 1.0
    assert ndcg_at_k(["x", "a"], {"a"}) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["b", "a"], {"a", "b"}) == 1.0


def test_report_averages_over_queries() -> None:
    report = retrieval_report([["a", "b"], ["x", "y"]], [{"a"}, {"y"}])
    assert report["recall@1"] == 0.5
    assert report["recall@5"] == 1.0
    assert report["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert report["queries"] == 2
    with pytest.raises(ValueError, match="empty"):
        retrieval_report([], [])
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at_k(["a"], set(), 1)


def test_token_f1_is_squad_style() -> None:
    assert normalize_answer("The  Champion, alias!") == "champion alias"
    assert token_f1("the champion alias", "Champion alias") == 1.0
    assert token_f1("champion", "champion alias") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("nothing", "champion") == 0.0
    assert token_f1("", "") == 1.0
