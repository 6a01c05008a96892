"""The default answer generator: extractive, from the retrieved passages, no weights to download.

Sentences of the top passages are scored by cosine similarity to the question (same embedding model
as retrieval) plus a small bonus for the rank of their passage. The best sentences, in their
original order, form the answer. Below ``min_score`` the generator says it found no answer rather
than guess; the no-answer rate is something monitoring can watch.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

NO_ANSWER = "No answer found in the indexed documents."
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")

Encode = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class AnswerConfig:
    max_sentences: int = 3
    max_passages: int = 3
    min_score: float = 0.3
    rank_bonus: float = 0.05  # per rank step: earlier passages win ties

    def __post_init__(self) -> None:
        if self.max_sentences < 1 or self.max_passages < 1:
            raise ValueError("max_sentences and max_passages must be at least 1")


@dataclass(frozen=True)
class Answer:
    text: str
    score: float
    supporting: tuple[int, ...]  # indices into the passages given, best first
    found: bool


class CachedEncode:
    """An encode function that remembers the vectors of texts it has seen (least recently used go
    first), so that a passage's sentences are embedded once however many questions retrieve it.
    Request threads of the server share one; the model runs outside its lock."""

    def __init__(self, encode: Encode, size: int = 20000) -> None:
        self._encode, self._size = encode, size
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            known = {text: self._vectors[text] for text in texts if text in self._vectors}
        missing = list(dict.fromkeys(text for text in texts if text not in known))
        if missing:
            known.update(zip(missing, self._encode(missing), strict=True))
        with self._lock:
            for text in texts:
                self._vectors[text] = known[text]
                self._vectors.move_to_end(text)
            while len(self._vectors) > self._size:
                self._vectors.popitem(last=False)
        return np.stack([known[text] for text in texts])


def split_sentences(text: str) -> list[str]:
    """``text`` cut after each ., ! or ? that a capital, a digit or an opening quote follows."""
    return [part.strip() for part in _SENTENCE.split(text)]


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` that can answer something: three words or more."""
    return [part for part in split_sentences(text) if len(part.split()) >= 3]


def extractive_answer(question: str, passages: Sequence[str], encode: Encode, config: AnswerConfig = AnswerConfig()) -> Answer:
    """Pick the passages' sentences that best answer ``question``."""
    candidates: list[tuple[int, int, str]] = []  # (passage index, position, sentence)
    for index, passage in enumerate(passages[: config.max_passages]):
        candidates.extend((index, position, sentence) for position, sentence in enumerate(sentences(passage)))
    if not candidates:
        return Answer(NO_ANSWER, 0.0, (), False)
    vectors = encode([question, *(sentence for _, _, sentence in candidates)])
    similarity = vectors[1:] @ vectors[0]
    scores = similarity - config.rank_bonus * np.array([index for index, _, _ in candidates], dtype=np.float32)
    best = np.argsort(-scores, kind="stable")[: config.max_sentences]
    top_score = float(similarity[best[0]])
    if top_score < config.min_score:
        return Answer(NO_ANSWER, top_score, (), False)
    keep = [i for i in best if similarity[i] >= config.min_score]
    chosen = sorted(keep, key=lambda i: (candidates[i][0], candidates[i][1]))
    supporting = tuple(dict.fromkeys(candidates[i][0] for i in keep))
    return Answer(" ".join(candidates[i][2] for i in chosen), top_score, supporting, True)
