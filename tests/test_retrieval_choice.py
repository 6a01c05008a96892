"""Navigation detection, fusion, the naive baseline, location-level relevance and candidate selection:
the pieces that make retrieval beat fixed windows on real manuals, as pure functions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmops_dagster.core import navigation, selection
from llmops_dagster.core.baseline import Bm25Baseline, windows
from llmops_dagster.core.evaluation import EvalItem, as_locations, beats_baseline, evaluate_retriever, evaluation_set, location_ranking
from llmops_dagster.core.index import Fusion, Passage
from llmops_dagster.core.questions import Question, parse_line
from llmops_dagster.core.rag import RagConfig

CONTENTS_PAGE = [
    "Contents",
    "1 Definitions and overview 1",
    "1.1 What is this FAQ? . . . . . . . . . . . . . . . . . 1",
    "1.2 What is Debian GNU/Linux? . . . . . . . . . . . . 1",
    "1.3 OK, now I know what Debian is... what is Linux?! . . . . 2",
    "2 Getting and installing Debian GNU/Linux 5",
    "2.1 What is the latest version of Debian? . . . . . . 5",
]
INDEX_PAGE = [
    "Index P",
    "packages",
    "apt, 37",
    "apt-doc, 36, 37",
    "apt-file, 39",
    "daemontools, 19, 49",
    "dbndns, 19",
    "labplot,8",
    "login, 49, 50",
    "maint-guide, 33",
    "mlmmj, 19",
    "openrc, 49",
]
PROSE_PAGE = [
    "Debian GNU/Linux is a particular distribution of the Linux operating system, and numerous",
    "packages that run on it. In principle, users could obtain the Linux kernel via the Internet",
    "or from elsewhere, and compile it themselves. They could then obtain source code for many",
    "applications in the same way, compile the programs, then install them into their systems.",
    "Release 12 came out in 2023, with 59100 packages.",
]


def test_contents_and_index_pages_are_navigation_and_prose_is_not() -> None:
    assert navigation.page_kind(CONTENTS_PAGE) == navigation.NavigationKind.CONTENTS
    assert navigation.page_kind(INDEX_PAGE) == navigation.NavigationKind.INDEX
    assert navigation.page_kind(PROSE_PAGE) is None
    assert navigation.looks_like_navigation(" ".join(CONTENTS_PAGE))
    assert navigation.looks_like_navigation(" ".join(INDEX_PAGE))
    assert not navigation.looks_like_navigation(" ".join(PROSE_PAGE))


def test_running_heads_need_three_pages_and_capitals() -> None:
    pages = [[f"CHAPTER {n}. DEFINITIONS {n}.{n}. SECTION TITLE {n}", "body text"] for n in range(1, 4)]
    edges = [{0, 1}] * 3
    assert navigation.running_headers(pages, edges) == {page[0] for page in pages}
    assert navigation.running_headers(pages[:2], edges[:2]) == set()


def test_link_runs_flag_three_or_more_link_blocks_in_a_row() -> None:
    assert navigation.link_runs([0.0, 1.0, 0.9, 1.0, 0.1, 1.0, 1.0]) == {1, 2, 3}


def test_fusion_weights_and_methods() -> None:
    vector = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    text = [("c", 12.0), ("b", 11.0), ("d", 1.0)]
    equal = [key for key, _ in Fusion("rrf", 0.5).fuse(vector, text)]
    assert equal == ["c", "b", "a", "d"], "in both lists first, then the lists' tops"
    assert [key for key, _ in Fusion("rrf", 0.0).fuse(vector, text)][:3] == ["a", "b", "c"], "weight 0 is vector order"
    assert [key for key, _ in Fusion("score", 1.0).fuse(vector, text)][:2] == ["c", "b"], "weight 1 is text order"
    with pytest.raises(ValueError, match="fusion"):
        Fusion("max")
    with pytest.raises(ValueError, match="text_weight"):
        RagConfig(text_weight=1.5)


DOCUMENTS = [
    {
        "path": "faq.pdf",
        "blocks": [
            {"text": "Debian is a free operating system. " * 40, "page": 9, "heading": "What is Debian?"},
            {"text": "Install it from a network image with the installer.", "page": 12, "heading": "How do I install Debian?"},
        ],
    },
    {"path": "notes.html", "blocks": [{"text": "Kernel modules are loaded at boot.", "page": None, "heading": "Modules"}]},
]


def test_windows_are_200_words_per_page_with_headings_printed() -> None:
    parts = windows(DOCUMENTS)
    first = [w for w in parts if w.source == "faq.pdf" and w.page == 9]
    assert len(first) == 2 and len(first[0].text.split()) == 200
    assert first[0].text.startswith("What is Debian? Debian is a free")
    assert {w.page for w in parts if w.source == "faq.pdf"} == {9, 12}
    assert [w.headings for w in parts if w.source == "notes.html"] == [("Modules",)]


def test_bm25_baseline_and_location_relevance() -> None:
    items, _ = evaluation_set(
        [],
        [
            Question("How do I install Debian?", source="faq.pdf", page=12),
            Question("When are kernel modules loaded?", source="notes.html", section="Modules"),
        ],
        {"faq.pdf", "notes.html"},
    )
    assert [item.level for item in items] == ["location", "location"]
    with Bm25Baseline(windows(DOCUMENTS)) as bm25:
        report = evaluate_retriever(bm25.retrieve, items)["all"]
    assert report["recall@1"] == 1.0 and report["mrr@10"] == 1.0


def test_location_ranking_counts_a_page_span_and_a_miss() -> None:
    relevant = frozenset({"guide.pdf#page=4"})
    passages = [Passage("x", "", "guide.pdf", 1, "", 0.0, 2), Passage("y", "", "guide.pdf", 3, "", 0.0, 5)]
    assert location_ranking(passages, relevant) == ["\0miss0", "guide.pdf#page=4"]
    chunk_item = EvalItem("q", frozenset({"c1"}), "chunk", "held_out")
    located = as_locations([chunk_item], {"c1": Passage("c1", "", "guide.pdf", 4, "Setup", 0.0, 5)})
    assert located[0].relevant == frozenset({"guide.pdf#page=4"}) and located[0].level == "location"


def test_the_baseline_verdict_allows_the_tolerance_and_no_more() -> None:
    assert beats_baseline({"recall@5": 0.95, "mrr@10": 0.8}, {"recall@5": 0.96, "mrr@10": 0.79}, 0.02, "naive BM25").passed
    verdict = beats_baseline({"recall@5": 0.90, "mrr@10": 0.8}, {"recall@5": 0.96, "mrr@10": 0.79}, 0.02, "naive BM25")
    assert not verdict.passed and "recall@5 0.900 vs 0.960" in verdict.description


def test_gold_questions_may_name_a_page_or_section_of_their_source() -> None:
    assert parse_line('{"question": "q", "source": "a.pdf", "page": 3}', "f:1").page == 3
    for bad, reason in (
        ('{"question": "q", "page": 3}', "need a"),
        ('{"question": "q", "source": "a", "page": 0}', "positive"),
        ('{"question": "q", "source": "a", "page": true}', "positive"),
    ):
        with pytest.raises(ValueError, match=reason):
            parse_line(bad, "f:1")


def items(count: int) -> list[EvalItem]:
    return [EvalItem(f"question {i}", frozenset({"x"}), "source", "gold") for i in range(count)]


def test_split_is_stable_and_disjoint() -> None:
    halves = selection.split(items(100))
    assert halves == selection.split(items(100))
    assert not {i.query for i in halves["select"]} & {i.query for i in halves["report"]}
    assert 30 < len(halves["select"]) < 70
    tiny = selection.split(items(1))
    assert tiny["select"] == tiny["report"] == items(1)


def test_selection_keeps_the_configured_retrieval_unless_another_wins_by_more_than_noise() -> None:
    configured = RagConfig()
    scores = {("text",): 0.90, ("vector",): 0.50}

    def evaluate(config: RagConfig, chosen) -> dict[str, float]:
        value = scores.get(selection.retrieval_key(config), 0.85 if config == configured else 0.7)
        return {"recall@5": value, "mrr@10": value, "queries": float(len(chosen))}

    chosen = selection.select(configured, items(40), evaluate)
    assert chosen.winner == replace(configured, mode="text") and chosen.gain == pytest.approx(0.05)
    assert len(chosen.candidates) == len(selection.candidates(configured)) and chosen.candidates[0].config.mode == "text"
    scores[("text",)] = 0.86  # within 0.5/40 of the configured retrieval: noise
    assert selection.select(configured, items(40), evaluate).winner == configured
    assert "kept the configured retrieval" in selection.select(configured, items(40), evaluate).summary()


def test_k_is_chosen_by_answer_f1_only_where_gold_answers_exist() -> None:
    configured = RagConfig(k=5)
    chosen = selection.Selection(configured, configured, [], 0.01)
    f1 = {3: 0.50, 5: 0.40, 8: 0.30}
    answered = [EvalItem(f"q{i}", frozenset({"x"}), "source", "gold", answer="a") for i in range(20)]
    picked = selection.select_k(chosen, answered, lambda config, its: f1[config.k])
    assert picked.winner.k == 3 and picked.answer_f1_by_k == f1 and "k=3 by answer F1" in picked.summary()
    f1[3] = 0.42  # within 0.5/20 of k=5: noise
    kept = selection.select_k(chosen, answered, lambda config, its: f1[config.k])
    assert kept.winner.k == 5 and kept.k_margin == pytest.approx(0.025)
    assert "kept the configured k=5: no k beat it by more than noise (0.025) in answer F1 (k=3: 0.420" in kept.summary()
    assert selection.from_json(selection.to_json(kept)) == kept
    tied = selection.select_k(chosen, answered, lambda config, its: 0.366)  # no k scores higher: kept, not "chosen"
    assert tied.winner.k == 5 and "; kept the configured k=5: no k beat it" in tied.summary()
    unanswered = [replace(item, answer=None) for item in answered]
    assert selection.select_k(chosen, unanswered, lambda config, its: 1.0) == chosen


def test_maxsim_prefers_the_passage_that_matches_every_part_and_leaves_torch_as_it_was() -> None:
    import torch

    from llmops_dagster.core.embedding import default_model_path
    from llmops_dagster.core.rerank import load_reranker

    reranker = load_reranker(str(default_model_path()))
    passages = [("a", "Debian releases come out every two years."), ("b", "To roll back a bad release, move the champion alias back.")]
    scores = reranker.scores("How is a bad release rolled back?", passages)
    assert scores[1] > scores[0]
    assert reranker.scores("anything", []) == []
    assert torch.is_grad_enabled(), "training in the same process needs gradients"
