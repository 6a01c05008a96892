"""Plain text files: decoded whatever their encoding, split into paragraphs."""

from __future__ import annotations

from llmops_dagster.core.documents import Block, ParsedDocument
from llmops_dagster.core.parsers.common import clean_text, decode_text, paragraphs, require_text


def parse_text(data: bytes) -> ParsedDocument:
    repairs: list[str] = []
    text = clean_text(decode_text(data, repairs))
    blocks = [Block(text=p) for p in paragraphs(text)]
    # A short first paragraph is the text's title; a long one is just its first paragraph.
    title = blocks[0].text if blocks and len(blocks[0].text) <= 120 else ""
    return ParsedDocument("text", require_text(blocks, "text file"), title=title, parser="text", warnings=repairs)
