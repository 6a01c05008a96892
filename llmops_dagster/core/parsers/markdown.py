"""Markdown: front matter and inline markup removed, headings (ATX and setext) kept as the heading path."""

from __future__ import annotations

import re

from llmops_dagster.core.documents import Block, ParsedDocument
from llmops_dagster.core.parsers.common import HeadingPath, clean_text, decode_text, paragraphs, require_text

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


_MD_SETEXT = re.compile(r"^(=+|-+)\s*$")


_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


# Emphasis markers only count at word edges: chunk_tokens and 2*3*4 keep their characters.
_MD_EMPHASIS = re.compile(r"(?<![\w*`])(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1(?![\w*`])")


_MD_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


def _markdown_inline(line: str) -> str:
    line = _MD_LINK.sub(r"\1", line)
    line = _MD_EMPHASIS.sub(r"\2", line)
    return _MD_LIST.sub("", line)


def parse_markdown(data: bytes) -> ParsedDocument:
    repairs: list[str] = []
    text = clean_text(decode_text(data, repairs))
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            text = text[end + 4 :]
    blocks: list[Block] = []
    title, buffer = "", []
    path = HeadingPath()
    in_fence = False

    def flush() -> None:
        for paragraph in paragraphs("\n".join(buffer)):
            blocks.append(Block(text=paragraph, heading=path.leaf, section=path.section))
        buffer.clear()

    lines = text.split("\n")
    for index, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            buffer.append("")
            continue
        if in_fence:
            buffer.append(line)
            continue
        match = _MD_HEADING.match(line)
        next_line = lines[index + 1] if index + 1 < len(lines) else ""
        if match or (line.strip() and _MD_SETEXT.match(next_line) and (not buffer or not buffer[-1].strip())):
            flush()
            level = len(match.group(1)) if match else (1 if next_line.startswith("=") else 2)
            path.enter(level, _markdown_inline(match.group(2) if match else line.strip()))
            title = title or path.leaf
            continue
        if _MD_SETEXT.match(line) and path.leaf and not buffer:
            continue
        buffer.append(_markdown_inline(line) if line.strip() else "")
    flush()
    return ParsedDocument("markdown", require_text(blocks, "Markdown file"), title=title, parser="markdown", warnings=repairs)
