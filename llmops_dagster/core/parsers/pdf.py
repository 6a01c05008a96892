"""PDF with pypdfium2: faithful word spacing, joined line-end hyphens, outline bookmarks as the heading
path, and running heads, contents and index pages left out."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version

from llmops_dagster.core import navigation
from llmops_dagster.core.documents import Block, ParsedDocument, ParseError, QuarantineReason
from llmops_dagster.core.navigation import NavigationKind
from llmops_dagster.core.parsers.common import HeadingPath, clean_text


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
