"""How far an answer stands on its passages: groundedness and citation validity.

Both are lexical, weight-free and deterministic, so monitoring can score every logged answer and the
offline evaluation of generators can score every candidate, in microseconds each. Text is normalised
as ``metrics.normalize_answer`` does for token F1 (lower case, no punctuation, no articles); a short
stopword list and a light plural folding then leave the content words that carry a claim.

- ``groundedness``: the share of the answer's content words that occur in the passages (all passages
  together). A sentence copied from a passage scores 1.0; an invented one scores low.
- ``citation_validity``: answers cite passages as ``[1]`` or ``[2, 3]`` (1-based, in rank order).
  A citation is valid when its number names a passage and that passage alone covers at least
  ``min_support`` of the content words of the sentence that cites it.

No-answer text (empty, or the extractive generator's ``NO_ANSWER``) has nothing to judge: ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

from llmops_dagster.core.answer import NO_ANSWER
from llmops_dagster.core.metrics import normalize_answer

# Function words only: what a passage supports is the claim, and these occur everywhere.
# ("a", "an" and "the" are already gone after normalize_answer.)
STOPWORDS = frozenset(
    """
    about above after again against all also am and any are as at be been before being below between both but by can
    could did do does doing down during each either else ever few for from further had has have having he her here hers
    herself him himself his how i if in into is it its itself just may me might more most must my myself no nor not now
    of off on once only or other our ours ourselves out over own same shall she should so some such than that then there
    these they this those through to too under until up upon us very was we were what when where which while who whom why
    will with would yet you your yours yourself yourselves their theirs them themselves one ones
    """.split()
)
DEFAULT_MIN_SUPPORT = 0.5

_CITATION = re.compile(r"\[(\s*\d+(?:\s*(?:[,;]|-|–)\s*\d+)*\s*)\]")
_LEADING_CITATIONS = re.compile(r"^(?:\s*\[\s*\d+(?:\s*(?:[,;]|-|–)\s*\d+)*\s*\])+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NO_ANSWER = normalize_answer(NO_ANSWER)


def fold(word: str) -> str:
    """A light plural folding, so "chunks" supports "chunk" and "policies" supports "policy"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def strip_citations(text: str) -> str:
    return _CITATION.sub(" ", text)


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry content: normalised, citations and stopwords removed, folded."""
    return [fold(word) for word in normalize_answer(strip_citations(text)).split() if word not in STOPWORDS]


@lru_cache(maxsize=8192)
def passage_words(passage: str) -> frozenset[str]:
    """A passage's content words as a set; cached, as the same passages answer many questions."""
    return frozenset(content_words(passage))


def is_no_answer(answer: str | None, no_answer_texts: Iterable[str] = (NO_ANSWER,)) -> bool:
    if answer is None or not answer.strip():
        return True
    normalised = normalize_answer(answer)
    return normalised == _NO_ANSWER or normalised in {normalize_answer(text) for text in no_answer_texts}


def groundedness(answer: str | None, passages: Sequence[str], no_answer_texts: Iterable[str] = (NO_ANSWER,)) -> float | None:
    """Share of the answer's content words found in the passages; ``None`` for no answer, or an
    answer with no content words (nothing to support)."""
    if is_no_answer(answer, no_answer_texts):
        return None
    words = content_words(answer)  # type: ignore[arg-type]
    if not words:
        return None
    supported = set().union(*(passage_words(passage) for passage in passages))
    return sum(1 for word in words if word in supported) / len(words)


def cited_sentences(answer: str) -> list[tuple[str, list[int]]]:
    """(sentence, cited numbers) for each sentence of the answer. A citation written after the full
    stop ("... tokens. [2]") belongs to the sentence before it."""
    parts: list[tuple[str, list[int]]] = []
    for piece in _SENTENCE_END.split(answer.strip()):
        lead = _LEADING_CITATIONS.match(piece)
        if lead and parts:
            sentence, numbers = parts[-1]
            parts[-1] = (sentence, numbers + citation_numbers(lead.group()))
            piece = piece[lead.end() :]
        if piece.strip():
            parts.append((" ".join(strip_citations(piece).split()), citation_numbers(piece)))
    return parts


def citation_numbers(text: str) -> list[int]:
    """The passage numbers cited in ``text``, ranges expanded: "[1, 3-4]" → [1, 3, 4]."""
    numbers: list[int] = []
    for group in _CITATION.findall(text):
        for item in re.split(r"[,;]", group):
            bounds = [int(n) for n in re.split(r"-|–", item) if n.strip()]
            if len(bounds) == 2 and bounds[0] <= bounds[1] and bounds[1] - bounds[0] < 100:
                numbers.extend(range(bounds[0], bounds[1] + 1))
            else:
                numbers.extend(bounds)
    return numbers


def citation_validity(answer: str | None, passages: Sequence[str], min_support: float = DEFAULT_MIN_SUPPORT) -> float | None:
    """Share of the answer's citations that name an existing passage (1-based) which supports the
    citing sentence; ``None`` when the answer cites nothing."""
    if not answer:
        return None
    words_of = [passage_words(passage) for passage in passages]
    cited = valid = 0
    for sentence, numbers in cited_sentences(answer):
        words = content_words(sentence)
        for number in numbers:
            cited += 1
            if 1 <= number <= len(passages) and support(words, words_of[number - 1]) >= min_support:
                valid += 1
    return valid / cited if cited else None


def support(words: Sequence[str], supporting: frozenset[str] | set[str]) -> float:
    """Share of ``words`` in ``passage_words``; a sentence with no content words (a bare citation)
    is supported by any passage, as there is nothing in it to contradict."""
    if not words:
        return 1.0
    return sum(1 for word in words if word in supporting) / len(words)
