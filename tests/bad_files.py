"""Writers for parser test inputs: good PDFs with real text, and one file of every bad kind.

Plain functions, no pytest fixtures: each writes one file at ``path`` (creating parent folders)
and returns the ``Path``. ``write_bad_corpus`` writes one file of every bad kind into a folder
and says which ``QuarantineReason`` value each one must get. Too-large is not a property of a file
alone, so it is covered by passing a small ``max_bytes`` to ``parse_file``.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmops_dagster.core.documents import QuarantineReason

PAGE_WIDTH, PAGE_HEIGHT = 595.27, 841.89  # A4 in points
MARGIN = 72
BODY_FONT, BODY_SIZE, LEADING = "Helvetica", 11, 15
HEADING_FONT, HEADING_SIZE = "Helvetica-Bold", 14


def _target(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_text_pdf(
    path: str | Path,
    pages: list[str],
    outline: bool = True,
    footer: str | None = "Test Handbook",
    title: str = "Test Handbook",
) -> Path:
    """A PDF with one page per entry of ``pages`` and a real text layer.

    Each page string holds paragraphs separated by blank lines; long paragraphs are wrapped.
    With ``outline``, the first line of every page is drawn as a heading and becomes an outline
    entry (bookmark) pointing at that page, the way the parser expects section headings.
    With ``footer``, every page ends with the running footer "<footer> Page N".
    """
    from reportlab.lib.utils import simpleSplit
    from reportlab.pdfgen import canvas

    path = _target(path)
    pdf = canvas.Canvas(str(path), pagesize=(PAGE_WIDTH, PAGE_HEIGHT), invariant=1)
    pdf.setTitle(title)
    width = PAGE_WIDTH - 2 * MARGIN
    for number, page_text in enumerate(pages, start=1):
        y = PAGE_HEIGHT - MARGIN
        body = page_text
        if outline:
            heading, _, body = page_text.partition("\n")
            heading = heading.strip()
            key = f"section-{number}"
            pdf.bookmarkPage(key, fit="XYZ", top=y + HEADING_SIZE)
            pdf.addOutlineEntry(heading, key, level=0)
            pdf.setFont(HEADING_FONT, HEADING_SIZE)
            pdf.drawString(MARGIN, y, heading)
            y -= 2 * LEADING
        for paragraph in [p for p in body.split("\n\n") if p.strip()]:
            text = " ".join(paragraph.split())
            for line in simpleSplit(text, BODY_FONT, BODY_SIZE, width):
                if y < MARGIN + 2 * LEADING:
                    raise ValueError(f"page {number} holds too much text for one page")
                pdf.setFont(BODY_FONT, BODY_SIZE)
                pdf.drawString(MARGIN, y, line)
                y -= LEADING
            y -= LEADING  # blank line between paragraphs
        if footer:
            pdf.setFont(BODY_FONT, 8)
            pdf.drawString(MARGIN, MARGIN / 2, f"{footer} Page {number}")
        pdf.showPage()
    if outline:
        pdf.showOutline()
    pdf.save()
    return path


def write_encrypted_pdf(path: str | Path) -> Path:
    """A PDF with text that needs the user password "secret" to be opened."""
    from reportlab.pdfgen import canvas

    path = _target(path)
    pdf = canvas.Canvas(str(path), encrypt="secret")
    pdf.drawString(MARGIN, PAGE_HEIGHT - MARGIN, "This text is only readable with the password.")
    pdf.showPage()
    pdf.save()
    return path


def write_scanned_pdf(path: str | Path, pages: int = 2) -> Path:
    """A PDF whose pages hold only drawn shapes and a raster image: no text layer at all."""
    from PIL import Image, ImageDraw
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    path = _target(path)
    # A "photographed page": dark stripes where lines of text would be, but only pixels.
    image = Image.new("L", (200, 260), color=255)
    draw = ImageDraw.Draw(image)
    for row in range(20, 240, 14):
        draw.rectangle([16, row, 184, row + 6], fill=40)
    pdf = canvas.Canvas(str(path), pagesize=(PAGE_WIDTH, PAGE_HEIGHT))
    for _ in range(pages):
        pdf.rect(MARGIN, MARGIN, PAGE_WIDTH - 2 * MARGIN, PAGE_HEIGHT - 2 * MARGIN, stroke=1, fill=0)
        pdf.circle(PAGE_WIDTH / 2, PAGE_HEIGHT - 150, 40, stroke=1, fill=1)
        pdf.drawImage(ImageReader(image), MARGIN + 20, MARGIN + 20, width=300, height=390)
        pdf.showPage()
    pdf.save()
    return path


def write_corrupt_pdf(path: str | Path) -> Path:
    """A .pdf that starts like a PDF and then is garbage: truncated, no xref, no trailer."""
    path = _target(path)
    garbage = bytes((index * 37 + 11) % 256 for index in range(2048))
    path.write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\n" + garbage)
    return path


def write_empty(path: str | Path) -> Path:
    """A file of 0 bytes (any supported suffix)."""
    path = _target(path)
    path.write_bytes(b"")
    return path


def write_blank_html(path: str | Path) -> Path:
    """An HTML page that is all boilerplate: navigation, header, footer, script and style, no body text."""
    path = _target(path)
    path.write_text(
        """<!DOCTYPE html>
<html><head><title></title>
<style>body { color: #222; } nav a { margin: 0 1em; }</style>
<script>window.analytics = ["pageview"]; console.log("loaded");</script>
</head>
<body>
  <header><div class="brand">Brand Portal</div></header>
  <nav><ul><li><a href="/">Home</a></li><li><a href="/docs/">Docs</a></li></ul></nav>
  <script>document.write("injected");</script>
  <footer><p>Copyright Brand Portal</p></footer>
</body></html>
""",
        encoding="utf-8",
    )
    return path


def write_undecodable_text(path: str | Path) -> Path:
    """Binary bytes (invalid UTF-8, many NULs) under a text name, like a misnamed executable."""
    path = _target(path)
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8 + b"\x00\xff\xfe\x00" * 64)
    return path


LATIN1_TEXT = (
    "Café au lait für René und Jürgen.\n\n"
    "Die Größe der Dateien wird geprüft, bevor sie übernommen werden. "
    "Über die Qualität der Ergebnisse entscheidet später die Prüfung der Antworten.\n"
)
# Note: French Latin-1 text ("très", "à côté") is *not* used here: the core's charset detection
# currently mis-reads it as cp1257 (see test_documents.py::test_french_latin1_text_decodes).


def write_latin1_text(path: str | Path, encoding: str = "latin-1") -> Path:
    """Text with é, ü, ö, ß encoded as latin-1 (or cp1252): not valid UTF-8. Content: ``LATIN1_TEXT``."""
    path = _target(path)
    path.write_bytes(LATIN1_TEXT.encode(encoding))
    return path


def write_unsupported(path: str | Path) -> Path:
    """A file of a type the parser does not handle; the bytes follow the suffix (.png or zip/.docx)."""
    path = _target(path)
    if path.suffix.lower() == ".png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17)
    else:  # .docx and other Office files are zip archives
        path.write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + b"[Content_Types].xml" + b"\x00" * 64)
    return path


def write_broken_link(path: str | Path) -> Path:
    """A link to a file that does not exist (a moved share, a deleted target)."""
    path = _target(path)
    path.symlink_to(f"../moved-away/{path.name}")
    return path


def write_link_loop(path: str | Path) -> Path:
    """A link to itself: it cannot be followed, and a scan must not fail on it."""
    path = _target(path)
    path.symlink_to(path.name)
    return path


def write_named_pipe(path: str | Path) -> Path:
    """A named pipe with a document's name: opening it to read would wait for a writer forever."""
    path = _target(path)
    os.mkfifo(path)
    return path


def write_unreadable(path: str | Path) -> Path:
    """A Markdown file nobody may read (only a user other than root is kept out of it)."""
    path = _target(path)
    path.write_text("# Private\n\nNot for the pipeline.")
    path.chmod(0)
    return path


# root reads a file whatever its mode, so ``write_unreadable`` only yields an unreadable file for other users.
UNREADABLE_POSSIBLE = os.geteuid() != 0


def write_bad_corpus(directory: str | Path) -> dict[str, str]:
    """One file of every bad kind under ``directory`` (an unreadable one only where the user can be
    kept out of it); returns {relative POSIX path: QuarantineReason value}."""
    directory = Path(directory)
    writers = {
        "corrupt.pdf": (write_corrupt_pdf, QuarantineReason.CORRUPT),
        "locked/encrypted.pdf": (write_encrypted_pdf, QuarantineReason.ENCRYPTED),
        "empty.txt": (write_empty, QuarantineReason.EMPTY),
        "empty.pdf": (write_empty, QuarantineReason.EMPTY),
        "blank.html": (write_blank_html, QuarantineReason.EMPTY),
        "scans/scanned.pdf": (write_scanned_pdf, QuarantineReason.NO_TEXT_LAYER),
        "binary.txt": (write_undecodable_text, QuarantineReason.UNDECODABLE),
        "report.docx": (write_unsupported, QuarantineReason.UNSUPPORTED_TYPE),
        "diagram.png": (write_unsupported, QuarantineReason.UNSUPPORTED_TYPE),
        "links/handbook.md": (write_broken_link, QuarantineReason.BROKEN_LINK),
        "links/loop.md": (write_link_loop, QuarantineReason.BROKEN_LINK),
        "feed.md": (write_named_pipe, QuarantineReason.UNSUPPORTED_TYPE),
    }
    if UNREADABLE_POSSIBLE:
        writers["private/secret.md"] = (write_unreadable, QuarantineReason.UNREADABLE)
    expected = {}
    for relative, (writer, reason) in writers.items():
        writer(directory / relative)
        expected[relative] = reason.value
    return expected
