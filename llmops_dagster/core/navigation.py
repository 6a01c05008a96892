"""Navigation is not content: tables of contents, indexes, lists of figures and running page furniture.

Their lines repeat every section title next to a page number, so a search for a title finds the
contents page before the section itself. Parsers drop what these functions flag and count it by
kind (``NavigationKind``), so the documents' metadata says how much was left out and why.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from enum import StrEnum


class NavigationKind(StrEnum):
    CONTENTS = "contents"  # table of contents, list of figures or tables
    INDEX = "index"  # back-of-book index
    FURNITURE = "furniture"  # running headers and footers
    LINKS = "link_list"  # HTML blocks that are only links (menus, local tables of contents)


# "4.2 What kernels does Debian run? . . . . . 14" and "Figure 3 Overview ......... vii"
_DOT_LEADER = re.compile(r"(?:\.\s?){4,}\s*(?:\d{1,4}|[ivxlc]{1,6})\s*$", re.IGNORECASE)
# "4 Compatibility issues 13", "A.1 Glossary 102": a numbered title ending in a page number.
_NUMBERED_ENTRY = re.compile(r"^(?:\d+(?:\.\d+)*|[A-Z](?:\.\d+)*)\.?\s+\S.*\s\d{1,4}$")
# "apt, 37", "daemontools, 19, 49", "labplot,8", "fstab, 12–14"
_INDEX_ENTRY = re.compile(r"^\D.{0,80}?,\s*\d{1,4}(?:\s*[-–]\s*\d{1,4})?(?:\s*,\s*\d{1,4}(?:\s*[-–]\s*\d{1,4})?)*$")
_NAVIGATION_TITLES = {"contents", "table of contents", "index", "list of figures", "list of tables", "figures", "tables"}


def _title_of(lines: Sequence[str]) -> str:
    # The page's own title, minus a section letter ("Index P") or running number.
    first = re.sub(r"\s+(?:[A-Z]|\d+)$", "", lines[0].strip()) if lines else ""
    return first.lower()


def page_kind(lines: Sequence[str]) -> NavigationKind | None:
    """Whether a whole PDF page is a table of contents or an index, from the share of its lines that
    look like entries. A page titled "Contents" or "Index" needs a smaller share."""
    if len(lines) < 4:
        return None
    titled = _title_of(lines) in _NAVIGATION_TITLES
    contents = sum(1 for line in lines if _DOT_LEADER.search(line) or _NUMBERED_ENTRY.match(line))
    index = sum(1 for line in lines if _INDEX_ENTRY.match(line))
    needed = 0.25 if titled else 0.5
    if contents >= 4 and contents >= needed * len(lines):
        return NavigationKind.CONTENTS
    if index >= 6 and index >= needed * len(lines):
        return NavigationKind.INDEX
    return None


def running_headers(pages: Sequence[Sequence[str]], edge_lines: Sequence[set[int]]) -> set[str]:
    """Upper-case edge lines that start the same way on several pages, with a title that changes:
    "CHAPTER 1. DEFINITIONS AND OVERVIEW 1.3. OK, NOW I KNOW…" (LaTeX's running heads)."""
    starts: Counter[str] = Counter()
    found: dict[str, set[str]] = {}
    for lines, edges in zip(pages, edge_lines, strict=True):
        for index in edges:
            line = lines[index]
            if not _is_caps(line):
                continue
            key = _start(line)
            starts[key] += 1
            found.setdefault(key, set()).add(line)
    return {line for key, count in starts.items() if count >= 3 for line in found[key]}


def _is_caps(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    return len(letters) >= 6 and not any(c.islower() for c in letters) and len(line.split()) >= 2


def _start(line: str) -> str:
    return " ".join(re.sub(r"\d+", "#", line).split()[:2])


def link_runs(link_shares: Sequence[float], min_run: int = 3, share: float = 0.8) -> set[int]:
    """Indexes of HTML blocks in runs of at least ``min_run`` consecutive blocks whose text is almost
    all link text: menus, local tables of contents, "see also" lists of pages."""
    flagged: set[int] = set()
    run: list[int] = []
    for index, value in enumerate([*link_shares, 0.0]):
        if value >= share:
            run.append(index)
            continue
        if len(run) >= min_run:
            flagged.update(run)
        run = []
    return flagged


_LEADER_RUN = re.compile(r"(?:\.\s?){4,}\s*(?:\d{1,4}|[ivxlc]{1,6})\b", re.IGNORECASE)
_INDEX_RUN = re.compile(r"[^\W\d][\w\-./]*,\s*\d{1,4}(?:\s*,\s*\d{1,4})*\b")


def looks_like_navigation(text: str) -> bool:
    """A passage (lines already joined) that reads as a contents or index page: several dot leaders
    to page numbers, or mostly "term, page" entries."""
    if len(_LEADER_RUN.findall(text)) >= 3:
        return True
    entries = _INDEX_RUN.findall(text)
    return len(entries) >= 8 and sum(len(e) for e in entries) >= 0.5 * len(text)
