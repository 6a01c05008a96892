"""Groundedness and citation validity, on passages from the sample corpus."""

from __future__ import annotations

import pytest

from llmops_dagster.core.answer import NO_ANSWER
from llmops_dagster.core.answer_quality import citation_numbers, citation_validity, cited_sentences, content_words, groundedness

# Two passages of sample_corpus/chunking-notes.md and one of release-checklist.txt, as retrieval returns them.
PASSAGES = [
    "The fix is simple: count with the tokenizer of the embedding model that will embed the chunks. That makes the budget exact, "
    "and it makes it model-specific, which is a feature. Changing the embedding model should change the chunking too.",
    "The default model, all-MiniLM-L6-v2, has 512 position embeddings but was trained on sequences of at most 256 tokens, "
    "and that is the limit it is used with.",
    "A release is finished when the new champion has served prod traffic for a full day without a rollback.",
]


def test_a_copied_answer_is_grounded() -> None:
    answer = "Changing the embedding model should change the chunking too. A release is finished when the new champion has served prod traffic."
    assert groundedness(answer, PASSAGES) == pytest.approx(1.0)


def test_an_invented_answer_is_not() -> None:
    invented = "Bananas ripen faster beside apples because ethylene gas speeds the conversion of starch into sugar."
    assert groundedness(invented, PASSAGES) < 0.1
    # Half copied, half invented: in between.
    mixed = "The default model was trained on sequences of at most 256 tokens. Bananas ripen faster beside apples."
    assert 0.3 < groundedness(mixed, PASSAGES) < 0.8
    # A wrong number is a content word the passages do not support.
    assert groundedness("The model was trained on 1024 tokens.", PASSAGES) < groundedness("The model was trained on 256 tokens.", PASSAGES)


def test_no_answer_is_not_counted() -> None:
    assert groundedness(NO_ANSWER, PASSAGES) is None
    assert groundedness("", PASSAGES) is None
    assert groundedness(None, PASSAGES) is None
    assert groundedness("It is what it is.", PASSAGES) is None  # stopwords only: nothing to support
    assert groundedness("The default model has 512 position embeddings.", []) == 0.0


def test_content_words_reuse_the_answer_metric_normalisation() -> None:
    # normalize_answer drops case, punctuation and articles; stopwords and citations go; plurals fold.
    assert content_words("The Chunks [2] overlap, by 32 tokens!") == ["chunk", "overlap", "32", "token"]


def test_valid_citations() -> None:
    answer = "Count tokens with the tokenizer of the embedding model [1]. The default model was trained on at most 256 tokens [2]."
    assert citation_validity(answer, PASSAGES) == 1.0
    # After the full stop, and several passages at once.
    assert citation_validity("A release is finished after a full day of prod traffic without a rollback. [3]", PASSAGES) == 1.0
    assert citation_validity("The embedding model limits the tokens of the chunks [1, 2].", PASSAGES) == 1.0
    assert citation_validity("The embedding model sets the budget of the chunks [1, 2].", PASSAGES) == 0.5  # 2 covers too little


def test_out_of_range_and_unsupported_citations() -> None:
    assert citation_validity("The default model was trained on at most 256 tokens [7].", PASSAGES) == 0.0
    assert citation_validity("The default model was trained on at most 256 tokens [0].", PASSAGES) == 0.0
    # Passage 3 is about releases, not about the model's training length.
    assert citation_validity("The default model was trained on at most 256 tokens [3].", PASSAGES) == 0.0
    mixed = "The default model was trained on at most 256 tokens [2]. A release is finished after a full day without a rollback [1]."
    assert citation_validity(mixed, PASSAGES) == 0.5


def test_nothing_cited() -> None:
    assert citation_validity("The default model was trained on at most 256 tokens.", PASSAGES) is None
    assert citation_validity(None, PASSAGES) is None


def test_citation_parsing() -> None:
    assert citation_numbers("see [1, 3-4] and [2;5]") == [1, 3, 4, 2, 5]
    assert cited_sentences("First claim here [1]. Second claim. [2] Third claim [3].") == [
        ("First claim here .", [1]),
        ("Second claim.", [2]),
        ("Third claim .", [3]),
    ]
