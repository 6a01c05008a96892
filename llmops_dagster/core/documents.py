"""Turn landing files into text blocks (page, heading, text), or a specific reason they cannot be.

Pure Python: no Dagster import. Each parser returns a ``ParsedDocument`` or raises ``ParseError``
with one of ``QuarantineReason``; ``parse_file`` never lets any other exception escape, so one bad
file cannot fail a run.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from importlib.metadata import version
from pathlib import Path

from llmops_dagster.core import navigation
from llmops_dagster.core.navigation import NavigationKind

# Bumped when parsing changes what a file yields, so that stored documents are parsed again.
PARSE_VERSION = 2


class QuarantineReason(StrEnum):
    CORRUPT = "corrupt"
    ENCRYPTED = "encrypted"
    EMPTY = "empty"
    NO_TEXT_LAYER = "no_text_layer"
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too_large"
    UNSUPPORTED_TYPE = "unsupported_type"


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
    warnings: list[str] = field(default_factory=list)
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

LIGATURES = str.maketrans(
    {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st"}
)
# A word broken across lines: "exam-\nple" (ASCII, soft or Unicode hyphen, or pdfium's \x02).
_HYPHEN_BREAK = re.compile(r"(\w)[-\u00ad\u2010\x02][ \t]*\r?\n[ \t]*(?=[a-z])")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


def detect_format(path: Path) -> str | None:
    return FORMATS.get(path.suffix.lower())


def clean_text(text: str) -> str:
    """Normalise what extractors give back: ligatures, broken words, odd spaces, control bytes."""
    text = text.translate(LIGATURES).replace("\r\n", "\n").replace("\r", "\n")
    text = _HYPHEN_BREAK.sub(r"\1", text)
    text = text.replace("\u00ad", "").replace("\x02", "")
    text = _CONTROL.sub("", text)
    text = unicodedata.normalize("NFC", text)
    return _SPACES.sub(" ", text)


def paragraphs(text: str) -> list[str]:
    """Split on blank lines; join the lines inside a paragraph with single spaces."""
    result = []
    for raw in re.split(r"\n\s*\n", text):
        joined = " ".join(line.strip() for line in raw.splitlines() if line.strip())
        if joined:
            result.append(joined)
    return result


_WESTERN = ("cp1252", "latin_1", "iso8859_15")


def decode_text(data: bytes) -> str:
    """Decode bytes of unknown encoding, or raise ParseError(UNDECODABLE)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if data.count(b"\x00") > len(data) // 100:
        raise ParseError(QuarantineReason.UNDECODABLE, "binary content (NUL bytes) in a text file")
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None or best.chaos > 0.25:
        raise ParseError(QuarantineReason.UNDECODABLE, "no text encoding fits the bytes")
    # Short texts fit several single-byte code pages almost equally well; Western European is
    # the likeliest, so it wins near-ties (cp775 or cp1250 would turn "très" into "trĶs"/"trčs").
    for match in matches:
        if match.encoding in _WESTERN and match.chaos <= best.chaos + 0.05:
            return str(match)
    return str(best)


def _require_text(blocks: list[Block], what: str) -> list[Block]:
    if not any(block.text.strip() for block in blocks):
        raise ParseError(QuarantineReason.EMPTY, f"{what} holds no text")
    return blocks


def parse_text(data: bytes) -> ParsedDocument:
    text = clean_text(decode_text(data))
    blocks = [Block(text=p) for p in paragraphs(text)]
    # A short first paragraph is the text's title; a long one is just its first paragraph.
    title = blocks[0].text if blocks and len(blocks[0].text) <= 120 else ""
    return ParsedDocument("text", _require_text(blocks, "text file"), title=title, parser="text")


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
    text = clean_text(decode_text(data))
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
    return ParsedDocument("markdown", _require_text(blocks, "Markdown file"), title=title, parser="markdown")


_HTML_DROP = ("script", "style", "nav", "header", "footer", "aside", "noscript", "form", "svg", "iframe", "template")
# Navigation that documentation generators put in ordinary elements (DocBook, Sphinx, Texinfo, LaTeX2HTML).
_HTML_BOILERPLATE = (
    '[role="navigation"], [role="banner"], [role="contentinfo"], [aria-hidden="true"], .navheader, .navfooter, '
    "div.toc, .section-toc, div.nav-panel, div.header, div.navigation, div.related, div.sphinxsidebar, div.footer, "
    "a.headerlink"
)
_HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
# Elements that start a new paragraph; text in anything else (b, a, span, code...) is inline.
_HTML_BLOCKS = _HTML_HEADINGS | {
    "p", "li", "pre", "blockquote", "dd", "dt", "figcaption", "caption", "div", "section",
    "article", "main", "body", "html", "ul", "ol", "dl", "table", "tr", "address", "details", "summary", "figure",
}


def _html_block_texts(body: object) -> Iterator[tuple[str, str, float]]:
    """(enclosing block tag, text, share of the text inside links) in document order; inline markup
    is joined without extra spaces."""
    from bs4 import Comment, Declaration, Doctype, ProcessingInstruction

    current, parts, linked = None, [], 0
    for string in body.find_all(string=True):  # type: ignore[attr-defined]
        if isinstance(string, Comment | Declaration | Doctype | ProcessingInstruction):
            continue
        block = string.parent
        in_link = False
        while block is not None and block.name not in _HTML_BLOCKS:
            in_link = in_link or (block.name == "a" and block.has_attr("href"))
            block = block.parent
        if block is not current:
            if current is not None:
                yield current.name, "".join(parts), _share(linked, parts)
            current, parts, linked = block, [], 0
        parts.append(str(string))
        linked += len(string.strip()) if in_link else 0
    if current is not None:
        yield current.name, "".join(parts), _share(linked, parts)


def _share(linked: int, parts: list[str]) -> float:
    total = sum(len(part.strip()) for part in parts)
    return linked / total if total else 0.0


class HeadingPath:
    """The headings above the current position, by level (h1-h6, #-######, or outline depth)."""

    def __init__(self) -> None:
        self._levels: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> None:
        self._levels = [(lvl, text) for lvl, text in self._levels if lvl < level] + [(level, title)]

    @property
    def section(self) -> tuple[str, ...]:
        return tuple(text for _, text in self._levels)

    @property
    def leaf(self) -> str:
        return self._levels[-1][1] if self._levels else ""


def parse_html(data: bytes) -> ParsedDocument:
    from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning

    # Decode ourselves so that undeclared encodings are detected the same way as for text.
    with warnings.catch_warnings():
        # XHTML pages parse fine as HTML; bs4 would warn on every one of them.
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(decode_text(data), "lxml")
    for element in soup(_HTML_DROP):
        element.decompose()
    for element in soup.select(_HTML_BOILERPLATE):
        element.decompose()
    for cell in soup.find_all(["td", "th"]):  # a table row is one block, its cells kept apart
        cell.append(" ")
    title = " ".join(soup.title.get_text(" ", strip=True).split()) if soup.title else ""
    if soup.title:
        soup.title.decompose()
    blocks: list[Block] = []
    shares: list[float] = []
    path = HeadingPath()
    for tag, raw, link_share in _html_block_texts(soup.body or soup):
        text = " ".join(clean_text(raw).split())
        if not text:
            continue
        if tag in _HTML_HEADINGS:
            path.enter(int(tag[1]), text)
            title = title or text
        else:
            blocks.append(Block(text=text, heading=path.leaf, section=path.section))
            shares.append(link_share)
    links = navigation.link_runs(shares)
    kept = [block for index, block in enumerate(blocks) if index not in links]
    if blocks and not kept:
        raise ParseError(QuarantineReason.EMPTY, f"HTML page holds only navigation ({len(links)} link blocks)")
    dropped = {NavigationKind.LINKS.value: len(links)} if links else {}
    return ParsedDocument("html", _require_text(kept, "HTML page"), title=title, parser="html", dropped=dropped)


@dataclass(frozen=True)
class OutlineEntry:
    page_index: int
    title: str
    section: tuple[str, ...]  # the bookmark's path in the outline, this title last


def _pdf_outline(pdf: object) -> list[OutlineEntry]:
    """The document outline in page order, each entry with its path; empty if it has none."""
    import pypdfium2 as pdfium

    entries = []
    path = HeadingPath()
    try:
        for bookmark in pdf.get_toc(max_depth=15):  # type: ignore[attr-defined]
            destination = bookmark.get_dest()
            title = clean_text(bookmark.get_title() or "").strip()
            index = destination.get_index() if destination is not None else None
            if not title:
                continue
            path.enter(bookmark.level, title)
            if index is not None:
                entries.append(OutlineEntry(index, title, path.section))
    except pdfium.PdfiumError:  # a broken outline must not lose the text
        return []
    return sorted(entries, key=lambda entry: entry.page_index)


# pdfium reports a hyphen at a line end as \x02 and drops the line break: "exam\x02ple".
_PDFIUM_BREAK = re.compile(r"(\w+)\x02(\w+)")
_PDF_CONTROL = re.compile(r"[\x00\x01\x03-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _join_line_hyphens(pages: list[str]) -> list[str]:
    """Drop a line-end hyphen ("exam-ple") unless the document spells the word with one elsewhere
    ("well-known", "value-of"); keep it before digits and capitals ("UTF-8", "Challenge-Response")."""
    if not any("\x02" in page for page in pages):
        return pages
    rest = _PDFIUM_BREAK.sub(" ", "\n".join(pages)).lower()
    words = Counter(re.findall(r"\w+", rest))
    pairs = Counter(re.findall(r"(?<!\w)(?=(\w+-\w+)(?!\w))", rest))  # "a-b-c" counts "a-b" and "b-c"

    def join(match: re.Match[str]) -> str:
        head, tail = match.group(1), match.group(2)
        if head[-1].isdigit() or tail[0].isdigit():
            return f"{head}-{tail}"
        joined, hyphenated = words[(head + tail).lower()], pairs[f"{head}-{tail}".lower()]
        if joined or hyphenated:
            return head + tail if joined >= hyphenated else f"{head}-{tail}"
        if tail[0].isupper() and not (head.isupper() and tail.isupper()):
            return f"{head}-{tail}"
        return head + tail

    return [_PDFIUM_BREAK.sub(join, page) for page in pages]


def _page_lines(text: str) -> list[str]:
    # A glyph with no Unicode value comes back as a control byte; a space keeps its neighbours apart.
    text = _PDF_CONTROL.sub(" ", text)
    return [" ".join(line.split()) for line in clean_text(text).split("\n") if line.strip()]


def _edges(lines: list[str]) -> set[int]:
    return {i for i in range(len(lines)) if i < 2 or i >= len(lines) - 2}


def _furniture(pages: list[list[str]]) -> set[str]:
    """Running headers and footers: edge lines that recur (digits ignored) on most pages, or on a few
    pages with a number that changes (per-chapter and odd/even headers with the page number)."""
    if len(pages) < 3:
        return set()
    counts: Counter[str] = Counter()
    numbers: dict[str, set[str]] = {}
    for lines in pages:
        for line in {lines[i] for i in _edges(lines)}:
            key = re.sub(r"\d+", "#", line)
            counts[key] += 1
            numbers.setdefault(key, set()).add(line)
    return {
        key
        for key, count in counts.items()
        if count >= max(3, len(pages) // 2) or (count >= 3 and len(numbers[key]) >= 3)
    }


def _heading_key(text: str) -> str:
    # Outlines often leave out the section number that the page prints: "Data types" / "6.1 Data types".
    text = re.sub(r"^(?:\d+|[A-Z])(?:\.\d+)*\.?\s+", "", text.strip())
    return re.sub(r"\W+", "", text).lower()


_HEADING_LINES = 3  # the most lines a wrapped heading may take


@dataclass
class _Section:
    heading: str = ""
    path: tuple[str, ...] = ()


def _pdf_page_blocks(
    lines: list[str], page: int, section: _Section, titles: dict[str, OutlineEntry]
) -> tuple[list[Block], _Section]:
    """Lines → paragraphs. A paragraph ends after a short line that closes a sentence, or at a heading.
    A heading may wrap over a few lines ("4.5 Can I use … Can" / "I use Red Hat packages …")."""
    if not lines:
        return [], section
    typical = sorted(len(line) for line in lines)[len(lines) // 2]
    blocks: list[Block] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            blocks.append(Block(text=" ".join(current), page=page, heading=section.heading, section=section.path))
            current.clear()

    index = 0
    while index < len(lines):
        line = lines[index]
        for span in range(1, min(_HEADING_LINES, len(lines) - index) + 1):
            candidate = " ".join(lines[index : index + span])
            entry = titles.get(_heading_key(candidate))
            if entry is not None:
                flush()
                section = _Section(candidate, entry.section[:-1] + (candidate,))
                index += span
                break
        else:
            current.append(line)
            if line.endswith((".", "!", "?", ":")) and len(line) < 0.8 * typical:
                flush()
            index += 1
    flush()
    return blocks, section


def parse_pdf(data: bytes) -> ParsedDocument:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as error:
        message = str(error).lower()
        if "password" in message or "security" in message:
            raise ParseError(QuarantineReason.ENCRYPTED, "password-protected PDF") from None
        raise ParseError(QuarantineReason.CORRUPT, f"not a readable PDF ({error})") from None
    try:
        page_count = len(pdf)
        if page_count == 0:
            raise ParseError(QuarantineReason.EMPTY, "PDF has no pages")
        outline = _pdf_outline(pdf)
        title = (pdf.get_metadata_dict().get("Title") or "").strip()
        raw_pages = []
        for index in range(page_count):
            page = pdf[index]
            textpage = page.get_textpage()
            raw_pages.append(textpage.get_text_bounded())
            textpage.close()
            page.close()
    except pdfium.PdfiumError as error:
        raise ParseError(QuarantineReason.CORRUPT, f"PDF page could not be read ({error})") from None
    finally:
        pdf.close()
    pages = [_page_lines(text) for text in _join_line_hyphens(raw_pages)]
    edges = [_edges(lines) for lines in pages]
    furniture = _furniture(pages)
    running = navigation.running_headers(pages, edges)
    dropped: Counter[str] = Counter()
    blocks: list[Block] = []
    section = _Section()
    for index, lines in enumerate(pages):
        kept = []
        for i, line in enumerate(lines):
            if i in edges[index] and (re.sub(r"\d+", "#", line) in furniture or line in running):
                dropped[NavigationKind.FURNITURE.value] += 1
            else:
                kept.append(line)
        kind = navigation.page_kind(kept)
        if kind is not None:
            dropped[kind.value] += len(kept)
            continue
        # Outline entries that point at this page but whose line we cannot find still set the heading,
        # for the text after the previous heading found on this page.
        keys = {_heading_key(" ".join(kept[i : i + n])) for n in range(1, _HEADING_LINES + 1) for i in range(len(kept))}
        missing = [entry for entry in outline if entry.page_index == index and _heading_key(entry.title) not in keys]
        # Only titles whose bookmark points at this page (or the one before) start a section here.
        titles = {key: e for e in outline if index - 1 <= e.page_index <= index if (key := _heading_key(e.title))}
        if missing and not any(_heading_key(line) in titles for line in kept[:3]):
            section = _Section(missing[0].title, missing[0].section)
        page_blocks, section = _pdf_page_blocks(kept, index + 1, section, titles)
        blocks.extend(page_blocks)
    if not blocks and not dropped:
        raise ParseError(QuarantineReason.NO_TEXT_LAYER, f"none of {page_count} page(s) has a text layer (scanned?)")
    if not blocks:
        raise ParseError(QuarantineReason.EMPTY, f"PDF holds only navigation ({dict(dropped)})")
    return ParsedDocument(
        "pdf", blocks, title=title, pages=page_count, parser=f"pypdfium2 {version('pypdfium2')}", dropped=dict(dropped)
    )


PARSERS = {"pdf": parse_pdf, "html": parse_html, "markdown": parse_markdown, "text": parse_text}


def parse_bytes(data: bytes, fmt: str) -> ParsedDocument:
    if not data.strip():
        raise ParseError(QuarantineReason.EMPTY, "file is empty")
    return PARSERS[fmt](data)


def parse_file(path: Path, max_bytes: int) -> ParsedDocument:
    """Parse one landing file. Raises ParseError, or FileNotFoundError if the file vanished."""
    fmt = detect_format(path)
    if fmt is None:
        raise ParseError(QuarantineReason.UNSUPPORTED_TYPE, f"'{path.suffix or path.name}' is not PDF, HTML, Markdown or text")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ParseError(QuarantineReason.CORRUPT, f"cannot be read ({error.strerror})") from None
    if size > max_bytes:
        raise ParseError(QuarantineReason.TOO_LARGE, f"{size} bytes is over the {max_bytes}-byte limit")
    try:
        return parse_bytes(path.read_bytes(), fmt)
    except (ParseError, FileNotFoundError):
        raise
    except UnicodeDecodeError as error:
        raise ParseError(QuarantineReason.UNDECODABLE, str(error)) from None
    except Exception as error:  # any parser crash is a property of the file, not of the run
        raise ParseError(QuarantineReason.CORRUPT, f"{type(error).__name__}: {error}") from None
