"""The extractive answer generator on the sample corpus, with the real embedding model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmops_dagster.core.answer import NO_ANSWER, AnswerConfig, extractive_answer, sentences
from llmops_dagster.core.chunking import ChunkConfig, Chunker
from llmops_dagster.core.documents import parse_file
from llmops_dagster.core.embedding import EmbedderConfig, load_embedder

CORPUS = Path(__file__).resolve().parents[1] / "sample_corpus"


@pytest.fixture(scope="module")
def retrieve():
    embedder = load_embedder(EmbedderConfig(precision="fp32", device="cpu"))
    chunker = Chunker(embedder.tokenizer, ChunkConfig(), embedder.max_tokens)
    texts = [c.text for p in sorted(CORPUS.iterdir()) if p.is_file() for c in chunker.chunk(p.name, parse_file(p, 1 << 30).blocks)]
    vectors = embedder.encode(texts)

    def top(question: str, k: int = 5) -> list[str]:
        scores = vectors @ embedder.encode([question])[0]
        return [texts[i] for i in np.argsort(-scores)[:k]]

    return embedder, top


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What happens to a quarantined file when its content changes?", "retried automatically"),
        ("How many tokens of overlap do chunks have by default?", "32"),
        ("Which command approves a version for prod?", "llmops approve"),
    ],
)
def test_answers_come_from_the_passages(retrieve, question: str, expected: str) -> None:
    embedder, top = retrieve
    passages = top(question)
    answer = extractive_answer(question, passages, embedder.encode)
    assert answer.found and expected in answer.text, answer
    assert answer.supporting and all(0 <= i < 3 for i in answer.supporting)
    assert all(sentence in " ".join(passages) for sentence in sentences(answer.text))


def test_the_answering_sentence_wins_even_in_a_lower_ranked_passage(retrieve) -> None:
    embedder, top = retrieve
    question = "How many quarantine reasons does the parser record?"
    answer_passage = next(p for p in top("seven quarantine reasons detail message", 10) if "seven quarantine reasons" in p)
    distractors = [p for p in top("embedding batch size and device", 5) if p != answer_passage][:2]
    answer = extractive_answer(question, [distractors[0], answer_passage, distractors[1]], embedder.encode)
    assert answer.found and "seven quarantine reasons" in answer.text, answer
    assert answer.supporting[0] == 1


def test_unrelated_question_gets_no_answer(retrieve) -> None:
    embedder, top = retrieve
    question = "What is the best recipe for sourdough bread?"
    answer = extractive_answer(question, top(question), embedder.encode)
    assert not answer.found and answer.text == NO_ANSWER and answer.supporting == ()


def test_empty_passages_and_config_validation(retrieve) -> None:
    embedder, _ = retrieve
    assert not extractive_answer("anything", [], embedder.encode).found
    with pytest.raises(ValueError):
        AnswerConfig(max_sentences=0)


def test_cached_encode_embeds_each_text_once_and_keeps_the_order() -> None:
    import numpy as np

    from llmops_dagster.core.answer import CachedEncode

    seen: list[str] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return np.array([[float(len(text)), 1.0] for text in texts], dtype=np.float32)

    cached = CachedEncode(encode, size=3)
    assert cached(["aa", "b", "aa"]).tolist() == [[2.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    assert cached(["b", "cccc"]).tolist() == [[1.0, 1.0], [4.0, 1.0]]
    assert seen == ["aa", "b", "cccc"]
    cached(["dd", "eee"])  # beyond the size: the least recently used ("aa") goes
    cached(["aa"])
    assert seen.count("aa") == 2
