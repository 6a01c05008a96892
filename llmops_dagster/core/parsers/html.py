"""HTML: navigation and page chrome dropped, h1-h6 kept as the heading path, link lists left out."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

from llmops_dagster.core import navigation
from llmops_dagster.core.documents import Block, ParsedDocument, ParseError, QuarantineReason
from llmops_dagster.core.navigation import NavigationKind
from llmops_dagster.core.parsers.common import HeadingPath, clean_text, decode_text, require_text

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


def parse_html(data: bytes) -> ParsedDocument:
    repairs: list[str] = []
    from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning

    # Decode ourselves so that undeclared encodings are detected the same way as for text.
    with warnings.catch_warnings():
        # XHTML pages parse fine as HTML; bs4 would warn on every one of them.
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(decode_text(data, repairs), "lxml")
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
    return ParsedDocument("html", require_text(kept, "HTML page"), title=title, parser="html", dropped=dropped, warnings=repairs)
