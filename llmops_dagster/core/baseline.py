"""The naive baseline every model must beat: fixed windows of raw document text, searched by BM25.

No chunking rules, no context, no embeddings: 200-word windows of each page's text (each document's,
when it has no pages), headings printed where they stand, as a plain text extraction would give
them. A RAG model that loses to this on its own documents should not become champion. The same
windows searched by exact cosine similarity (``ExactVectorBaseline``) give the dense variant.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WINDOW_WORDS = 200


@dataclass(frozen=True)
class Window:
    id: str
    source: str
    page: int | None
    text: str
    headings: tuple[str, ...]  # the headings printed in, or standing over, this window

    @property
    def page_end(self) -> int | None:
        return self.page


def windows(documents: Iterable[dict], words: int = WINDOW_WORDS) -> list[Window]:
    """Windows over documents given as rows with ``path`` and ``blocks`` (text, page, heading)."""
    result: list[Window] = []
    for document in documents:
        for page, tokens in _pages(document["blocks"]):
            for start in range(0, len(tokens), words):
                part = tokens[start : start + words]
                text = " ".join(word for word, _ in part)
                headings = tuple(dict.fromkeys(heading for _, heading in part if heading))
                result.append(Window(f"{document['path']}#{len(result)}", document["path"], page, text, headings))
    return result


def _pages(blocks: list[dict]) -> Iterator[tuple[int | None, list[tuple[str, str]]]]:
    """(page, [(word, heading over it)]) in reading order, each heading printed once where it starts."""
    page_words: dict[int | None, list[tuple[str, str]]] = {}
    heading = None
    for block in blocks:
        words = page_words.setdefault(block["page"], [])
        if block["heading"] and block["heading"] != heading:
            heading = block["heading"]
            words.extend((word, heading) for word in heading.split())
        words.extend((word, heading or "") for word in block["text"].split())
    yield from page_words.items()


class Bm25Baseline:
    """BM25 over the windows, with LanceDB's full-text index in a scratch folder."""

    def __init__(self, parts: list[Window]) -> None:
        import lancedb
        import pyarrow as pa
        from lancedb.index import FTS

        self._scratch = tempfile.TemporaryDirectory(prefix="llmops-baseline-")
        self._windows = {window.id: window for window in parts}
        data = pa.table({"id": [w.id for w in parts], "text": [w.text for w in parts]})
        self._table = lancedb.connect(str(Path(self._scratch.name))).create_table("windows", data)
        if parts:
            self._table.create_index("text", config=FTS())

    def retrieve(self, query: str, k: int) -> list[Window]:
        if not self._windows:
            return []
        rows = self._table.search(query, query_type="fts", fts_columns="text").limit(k).select(["id"]).to_arrow()
        return [self._windows[key] for key in rows.column("id").to_pylist()]

    def close(self) -> None:
        self._scratch.cleanup()

    def __enter__(self) -> Bm25Baseline:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ExactVectorBaseline:
    """The windows embedded as they are and searched exactly by cosine similarity."""

    def __init__(self, parts: list[Window], encode: Callable[[list[str]], np.ndarray]) -> None:
        self._windows, self._encode = parts, encode
        self._vectors = encode([w.text for w in parts]) if parts else np.zeros((0, 1), dtype=np.float32)

    def retrieve(self, query: str, k: int) -> list[Window]:
        if not self._windows:
            return []
        scores = self._vectors @ self._encode([query])[0]
        return [self._windows[i] for i in np.argsort(-scores, kind="stable")[:k]]
