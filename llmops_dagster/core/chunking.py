"""Token-aware chunking with the embedding model's own tokenizer.

Chunks never cross a heading, prefer paragraph then sentence boundaries, and are never longer than
``chunk_tokens`` tokens as the model counts them, so nothing is silently truncated at embed time.
Chunk ids hash the source path, the chunk's context and its text, so editing one section of a file
keeps the ids (and the stored vectors) of the chunks that did not change.

Each chunk also carries a context: the document title and heading path, rendered by a template
(``{title}``, ``{section}``, ``{heading}``). What is embedded and full-text indexed is the context
followed by the text (``search_text``); the passage shown to people is the clean text. In a manual
the heading often holds the words a question uses, and the body never repeats them.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from llmops_dagster.core.documents import Block

T = TypeVar("T")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+(?=[\"'(\[]?[A-Z0-9])")


class Tokenizer(Protocol):
    def __call__(self, text: list[str], **kwargs: object) -> dict: ...


CONTEXT_FIELDS = ("title", "section", "heading")
SECTION_SEPARATOR = " › "


@dataclass(frozen=True)
class ChunkConfig:
    chunk_tokens: int = 200
    overlap_tokens: int = 32
    context_template: str = "{title}\n{section}"  # empty: chunks are embedded and indexed without context
    context_tokens: int = 48  # the most tokens a rendered context may take

    def __post_init__(self) -> None:
        if self.chunk_tokens < 16:
            raise ValueError(f"chunk_tokens must be at least 16, got {self.chunk_tokens}")
        if not 0 <= 2 * self.overlap_tokens < self.chunk_tokens:
            raise ValueError(f"overlap_tokens must be in [0, chunk_tokens/2), got {self.overlap_tokens}")
        if self.context_tokens < 0:
            raise ValueError(f"context_tokens must not be negative, got {self.context_tokens}")
        unknown = {name for _, name, _, _ in string.Formatter().parse(self.context_template) if name is not None} - set(CONTEXT_FIELDS)
        if unknown:
            raise ValueError(f"context_template may use {{{'}, {'.join(CONTEXT_FIELDS)}}}, not {{{'}, {'.join(sorted(unknown))}}}")

    @property
    def context_budget(self) -> int:
        return self.context_tokens if self.context_template.strip() else 0

    def fingerprint(self, tokenizer_name: str) -> str:
        base = f"{tokenizer_name}:{self.chunk_tokens}:{self.overlap_tokens}"
        return f"{base}:{context_fingerprint(self)}" if self.context_budget else base


def context_fingerprint(config: ChunkConfig) -> str:
    """Names the context template; part of the index fingerprint, so two templates never share an index."""
    if not config.context_budget:
        return ""
    digest = hashlib.sha256(f"{config.context_template}\0{config.context_tokens}".encode()).hexdigest()[:8]
    return f"ctx-{digest}"


def index_fingerprint(model_fingerprint: str, config: ChunkConfig) -> str:
    """What an index's vectors depend on: the embedding model and, when there is one, the context template."""
    context = context_fingerprint(config)
    return f"{model_fingerprint}+{context}" if context else model_fingerprint


def model_of_index(fingerprint: str) -> str:
    """The embedding model part of an index fingerprint."""
    return fingerprint.split("+ctx-", 1)[0]


def search_text(context: str, text: str) -> str:
    return f"{context}\n\n{text}" if context else text


@dataclass(frozen=True)
class Chunk:
    id: str
    ordinal: int
    text: str
    n_tokens: int
    page: int | None
    page_end: int | None
    heading: str
    context: str = ""


@dataclass(frozen=True)
class _Unit:
    text: str
    n_tokens: int
    page: int | None


class Chunker:
    def __init__(self, tokenizer: Tokenizer, config: ChunkConfig, model_max_tokens: int) -> None:
        # [CLS] and [SEP] take two of the model's positions; the context is embedded before the text.
        if config.chunk_tokens + config.context_budget + 2 > model_max_tokens:
            raise ValueError(
                f"chunk_tokens={config.chunk_tokens} plus context_tokens={config.context_budget} does not fit the "
                f"embedding model's {model_max_tokens}-token window (at most {model_max_tokens - 2} together)"
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

    def context(self, title: str, section: tuple[str, ...]) -> str:
        """The rendered context, shortened to the token budget: the middle of the heading path goes
        first, then the title, then the heading is cut."""
        budget = self.config.context_budget
        if not budget:
            return ""
        paths = [section, section[-1:]] if len(section) > 1 else [section]
        candidates = [(title, path) for path in paths] + [("", path) for path in paths]
        rendered = ""
        for candidate_title, path in candidates:
            rendered = self._render(candidate_title, path)
            if self.count_tokens([rendered])[0] <= budget:
                return rendered
        encoded = self.tokenizer([rendered], add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        offsets = encoded["offset_mapping"][0][:budget]
        return rendered[: offsets[-1][1]].strip() if offsets else ""

    def _render(self, title: str, section: tuple[str, ...]) -> str:
        text = self.config.context_template.format(
            title=title.strip(), section=SECTION_SEPARATOR.join(section), heading=section[-1] if section else ""
        )
        # A missing title or heading leaves no empty line or dangling separator behind.
        lines = (line.strip(" ›-—:|") for line in text.splitlines())
        return "\n".join(line.strip() for line in lines if line.strip())

    def _sections(self, blocks: list[Block]) -> Iterator[list[Block]]:
        section: list[Block] = []
        for block in blocks:
            if section and (block.heading, block.section) != (section[-1].heading, section[-1].section):
                yield section
                section = []
            section.append(block)
        if section:
            yield section

    def _finalise(self, groups: list[tuple[T, list[_Unit]]]) -> Iterator[tuple[T, str, int, int | None, int | None]]:
        """Join units and make sure the joined text still fits; split again if it does not.

        Yields (the group's label, text, exact token count, first page, last page).
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

    def chunk(self, source: str, blocks: list[Block], title: str = "") -> list[Chunk]:
        groups: list[tuple[tuple[str, str], list[_Unit]]] = []
        for section in self._sections([b for b in blocks if b.text.strip()]):
            heading = section[0].heading
            context = self.context(title, section[0].section or ((heading,) if heading else ()))
            for packed in self._pack(self._units(section)):
                groups.append(((heading, context), packed))
        seen: dict[tuple[str, str], int] = {}
        chunks = []
        for ordinal, ((heading, context), text, n, first, last) in enumerate(self._finalise(groups)):
            occurrence = seen.get((context, text), 0)
            seen[(context, text)] = occurrence + 1
            chunks.append(Chunk(chunk_id(source, search_text(context, text), occurrence), ordinal, text, n, first, last, heading, context))
        return chunks


def chunk_id(source: str, text: str, occurrence: int = 0) -> str:
    """Stable id of a chunk: source, occurrence and what is embedded (context and text)."""
    return hashlib.sha256(f"{source}\0{occurrence}\0{text}".encode()).hexdigest()[:32]


