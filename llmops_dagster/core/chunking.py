"""Token-aware chunking with the embedding model's own tokenizer.

Chunks never cross a heading, prefer paragraph then sentence boundaries, and are never longer than
``chunk_tokens`` tokens as the model counts them, so nothing is silently truncated at embed time.
Chunk ids hash the source path and the chunk text, so editing one section of a file keeps the ids
(and the stored vectors) of the chunks that did not change.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from llmops_dagster.core.documents import Block

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=[\"'(\[]?[A-Z0-9])")


class Tokenizer(Protocol):
    def __call__(self, text: list[str], **kwargs: object) -> dict: ...


@dataclass(frozen=True)
class ChunkConfig:
    chunk_tokens: int = 200
    overlap_tokens: int = 32

    def __post_init__(self) -> None:
        if self.chunk_tokens < 16:
            raise ValueError(f"chunk_tokens must be at least 16, got {self.chunk_tokens}")
        if not 0 <= 2 * self.overlap_tokens < self.chunk_tokens:
            raise ValueError(f"overlap_tokens must be in [0, chunk_tokens/2), got {self.overlap_tokens}")

    def fingerprint(self, tokenizer_name: str) -> str:
        return f"{tokenizer_name}:{self.chunk_tokens}:{self.overlap_tokens}"


@dataclass(frozen=True)
class Chunk:
    id: str
    ordinal: int
    text: str
    n_tokens: int
    page: int | None
    page_end: int | None
    heading: str


@dataclass(frozen=True)
class _Unit:
    text: str
    n_tokens: int
    page: int | None


class Chunker:
    def __init__(self, tokenizer: Tokenizer, config: ChunkConfig, model_max_tokens: int) -> None:
        # [CLS] and [SEP] take two of the model's positions.
        if config.chunk_tokens + 2 > model_max_tokens:
            raise ValueError(
                f"chunk_tokens={config.chunk_tokens} does not fit the embedding model's "
                f"{model_max_tokens}-token window (at most {model_max_tokens - 2})"
            )
        self.tokenizer = tokenizer
        self.config = config

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.tokenizer(texts, add_special_tokens=False, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def _split_long(self, text: str, page: int | None) -> list[_Unit]:
        """Cut a single over-long sentence at token boundaries, keeping the original characters."""
        encoded = self.tokenizer([text], add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        offsets = encoded["offset_mapping"][0]
        size = self.config.chunk_tokens
        pieces = []
        for start in range(0, len(offsets), size):
            window = offsets[start : start + size]
            piece = text[window[0][0] : window[-1][1]].strip()
            if piece:
                pieces.append(piece)
        # A piece on its own may tokenize differently at its edges than inside the sentence.
        return [_Unit(piece, n, page) for piece, n in zip(pieces, self.count_tokens(pieces), strict=True)]

    def _units(self, blocks: list[Block]) -> list[_Unit]:
        """Paragraphs that fit whole; otherwise their sentences; otherwise token windows."""
        counts = self.count_tokens([block.text for block in blocks])
        units: list[_Unit] = []
        for block, count in zip(blocks, counts, strict=True):
            if count <= self.config.chunk_tokens:
                units.append(_Unit(block.text, count, block.page))
                continue
            sentences = [s for s in _SENTENCE_END.split(block.text) if s.strip()]
            for sentence, n in zip(sentences, self.count_tokens(sentences), strict=True):
                if n <= self.config.chunk_tokens:
                    units.append(_Unit(sentence, n, block.page))
                else:
                    units.extend(self._split_long(sentence, block.page))
        return units

    def _pack(self, units: list[_Unit]) -> Iterator[list[_Unit]]:
        """Greedy packing with a tail of whole units carried over as overlap."""
        limit, overlap = self.config.chunk_tokens, self.config.overlap_tokens
        current: list[_Unit] = []
        size = 0
        fresh = False  # does `current` hold anything not yet emitted?
        for unit in units:
            # +1 approximates the separator between units; the exact count is taken afterwards.
            if current and size + unit.n_tokens + 1 > limit:
                yield current
                carried: list[_Unit] = []
                carried_size = 0
                for previous in reversed(current):
                    if carried_size + previous.n_tokens > overlap or carried_size + previous.n_tokens + unit.n_tokens + 1 > limit:
                        break
                    carried.insert(0, previous)
                    carried_size += previous.n_tokens + 1
                current, size = carried, carried_size
            current.append(unit)
            size += unit.n_tokens + 1
            fresh = True
        if current and fresh:
            yield current

    def _sections(self, blocks: list[Block]) -> Iterator[list[Block]]:
        section: list[Block] = []
        for block in blocks:
            if section and block.heading != section[-1].heading:
                yield section
                section = []
            section.append(block)
        if section:
            yield section

    def _finalise(self, groups: list[tuple[str, list[_Unit]]]) -> Iterator[tuple[str, str, int, int | None, int | None]]:
        """Join units and make sure the joined text still fits; split again if it does not.

        Yields (heading, text, exact token count, first page, last page).
        """
        texts = [" ".join(unit.text for unit in units) for _, units in groups]
        for (heading, units), text, n in zip(groups, texts, self.count_tokens(texts), strict=True):
            pages = [unit.page for unit in units if unit.page is not None]
            first, last = (min(pages), max(pages)) if pages else (None, None)
            if n <= self.config.chunk_tokens:
                yield heading, text, n, first, last
            else:
                for piece in self._split_long(text, first):
                    yield heading, piece.text, piece.n_tokens, first, last

    def chunk(self, source: str, blocks: list[Block]) -> list[Chunk]:
        groups: list[tuple[str, list[_Unit]]] = []
        for section in self._sections([b for b in blocks if b.text.strip()]):
            for packed in self._pack(self._units(section)):
                groups.append((section[0].heading, packed))
        seen: dict[str, int] = {}
        chunks = []
        for ordinal, (heading, text, n, first, last) in enumerate(self._finalise(groups)):
            occurrence = seen.get(text, 0)
            seen[text] = occurrence + 1
            chunks.append(Chunk(chunk_id(source, text, occurrence), ordinal, text, n, first, last, heading))
        return chunks


def chunk_id(source: str, text: str, occurrence: int = 0) -> str:
    return hashlib.sha256(f"{source}\0{occurrence}\0{text}".encode()).hexdigest()[:32]


