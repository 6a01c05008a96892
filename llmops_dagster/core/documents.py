"""Turn landing files into text blocks (page, heading, text), or a specific reason they cannot be.

Pure Python: no Dagster import. The parsers live in ``core/parsers/``, one module per format; each
returns a ``ParsedDocument`` or raises ``ParseError`` with one of ``QuarantineReason``.
``parse_file`` picks the parser by extension and never lets any other exception escape, so one bad
file cannot fail a run.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Bumped when parsing changes what a file yields, so that stored documents are parsed again.
PARSE_VERSION = 4


class QuarantineReason(StrEnum):
    CORRUPT = "corrupt"
    ENCRYPTED = "encrypted"
    EMPTY = "empty"
    NO_TEXT_LAYER = "no_text_layer"
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too_large"
    UNSUPPORTED_TYPE = "unsupported_type"
    BROKEN_LINK = "broken_link"
    UNREADABLE = "unreadable"


class ParseError(Exception):
    def __init__(self, reason: QuarantineReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Block:
    """A paragraph-sized run of text with where it came from."""

    text: str
    page: int | None = None
    heading: str = ""
    section: tuple[str, ...] = ()  # the heading path, outermost first; its last entry is ``heading``


@dataclass
class ParsedDocument:
    format: str
    blocks: list[Block]
    title: str = ""
    pages: int | None = None
    parser: str = ""
    warnings: list[str] = field(default_factory=list)  # what parsing had to repair, e.g. bytes that are not UTF-8
    dropped: dict[str, int] = field(default_factory=dict)  # navigation left out, by NavigationKind

    @property
    def text(self) -> str:
        return "\n\n".join(block.text for block in self.blocks)


FORMATS = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
}


def detect_format(path: Path) -> str | None:
    return FORMATS.get(path.suffix.lower())


def parse_bytes(data: bytes, fmt: str) -> ParsedDocument:
    from llmops_dagster.core.parsers import html, markdown, pdf, text

    parsers = {"pdf": pdf.parse_pdf, "html": html.parse_html, "markdown": markdown.parse_markdown, "text": text.parse_text}
    if not data.strip():
        raise ParseError(QuarantineReason.EMPTY, "file is empty")
    return parsers[fmt](data)


def _readable(read: Callable[[], T]) -> T:
    """``read()``, with an OS error other than a vanished file as an ``unreadable`` ParseError."""
    try:
        return read()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ParseError(QuarantineReason.UNREADABLE, f"cannot be read ({error.strerror})") from None


def parse_file(path: Path, max_bytes: int) -> ParsedDocument:
    """Parse one landing entry. Raises ParseError, or FileNotFoundError if the file vanished."""
    from llmops_dagster.core.landing import is_broken_link, special_kind

    if is_broken_link(path):
        try:
            path.stat()
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise ParseError(QuarantineReason.BROKEN_LINK, f"a link to {os.readlink(path)}, which leads back to itself") from None
        raise ParseError(QuarantineReason.BROKEN_LINK, f"a link to {os.readlink(path)}, which does not exist")
    stat = _readable(path.stat)
    kind = special_kind(stat.st_mode)
    if kind == "folder":
        try:
            os.listdir(path)
        except OSError as error:
            raise ParseError(QuarantineReason.UNREADABLE, f"a folder whose files cannot be listed ({error.strerror})") from None
    if kind is not None:  # never opened: reading a named pipe waits for a writer forever
        raise ParseError(QuarantineReason.UNSUPPORTED_TYPE, f"a {kind}, not a regular file")
    fmt = detect_format(path)
    if fmt is None:
        raise ParseError(QuarantineReason.UNSUPPORTED_TYPE, f"'{path.suffix or path.name}' is not PDF, HTML, Markdown or text")
    if stat.st_size > max_bytes:
        raise ParseError(QuarantineReason.TOO_LARGE, f"{stat.st_size} bytes is over the {max_bytes}-byte limit")
    data = _readable(path.read_bytes)
    try:
        return parse_bytes(data, fmt)
    except ParseError:
        raise
    except UnicodeDecodeError as error:
        raise ParseError(QuarantineReason.UNDECODABLE, str(error)) from None
    except Exception as error:  # any parser crash is a property of the file, not of the run
        raise ParseError(QuarantineReason.CORRUPT, f"{type(error).__name__}: {error}") from None
