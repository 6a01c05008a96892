"""Parsers: every format gives text blocks, every bad file gives ParseError with the right reason."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from llmops_dagster.core.documents import (
    Block,
    ParsedDocument,
    ParseError,
    QuarantineReason,
    detect_format,
    parse_bytes,
    parse_file,
)
from llmops_dagster.core.parsers.common import clean_text, decode_text, paragraphs
from llmops_dagster.core.parsers.html import parse_html
from llmops_dagster.core.parsers.markdown import parse_markdown

from bad_files import (
    LATIN1_TEXT,
    UNREADABLE_POSSIBLE,
    write_bad_corpus,
    write_blank_html,
    write_corrupt_pdf,
    write_empty,
    write_encrypted_pdf,
    write_latin1_text,
    write_scanned_pdf,
    write_text_pdf,
    write_undecodable_text,
    write_unsupported,
)

CORPUS = Path(__file__).resolve().parent.parent / "sample_corpus"
MAX_BYTES = 50 * 1024 * 1024

OUTLINE = [
    (1, "1. Environments"),
    (2, "2. Landing zone and quarantine"),
    (2, "3. Incremental ingestion"),
    (3, "4. Chunking"),
    (4, "5. Embeddings and the vector index"),
    (5, "6. Promotion and rollback"),
    (5, "7. Troubleshooting"),
]


def reason_of(path: Path, max_bytes: int = MAX_BYTES) -> QuarantineReason:
    with pytest.raises(ParseError) as caught:
        parse_file(path, max_bytes)
    return caught.value.reason


def no_markup_left(doc: ParsedDocument) -> None:
    for block in doc.blocks:
        assert block.text == block.text.strip() and block.text
        assert "\n" not in block.text and "  " not in block.text


# --- the sample corpus: each format parses -------------------------------------------------------


@pytest.fixture(scope="module")
def guide() -> ParsedDocument:
    return parse_file(CORPUS / "operations-guide.pdf", MAX_BYTES)


def test_pdf_parses_with_pages_title_and_parser(guide: ParsedDocument) -> None:
    assert guide.format == "pdf"
    assert guide.pages == 6
    assert guide.title == "llmops-dagster Operations Guide"
    assert guide.parser.startswith("pypdfium2 ")
    assert len(guide.blocks) > 20
    assert "three environments: test, staging and prod" in guide.text
    no_markup_left(guide)


def test_pdf_blocks_keep_their_page_numbers(guide: ParsedDocument) -> None:
    pages = [block.page for block in guide.blocks]
    assert all(isinstance(page, int) and 1 <= page <= guide.pages for page in pages)
    assert pages == sorted(pages), "blocks come in page order"
    assert set(pages) == set(range(1, 7)), "every page contributes text"
    assert guide.blocks[0].page == 1 and guide.blocks[-1].page == 6


def test_pdf_headings_come_from_the_outline(guide: ParsedDocument) -> None:
    headings = [block.heading for block in guide.blocks]
    # Section order is the outline order, and each section starts on the page its bookmark points at.
    in_order = [h for i, h in enumerate(headings) if h and (i == 0 or headings[i - 1] != h)]
    assert in_order == [title for _, title in OUTLINE]
    for page, title in OUTLINE:
        first = next(block for block in guide.blocks if block.heading == title)
        assert first.page == page, title
    # The heading line itself is not repeated as body text.
    assert not any(block.text == title for _, title in OUTLINE for block in guide.blocks)
    # Text before the first bookmark has no heading.
    assert guide.blocks[0].heading == ""


def test_pdf_running_footers_are_removed(guide: ParsedDocument) -> None:
    assert not re.search(r"Operations Guide Page \d", guide.text)
    assert not any(re.search(r"Page \d+$", block.text) for block in guide.blocks)
    # The title line on page 1 is not furniture: it occurs once.
    assert guide.blocks[0].text.startswith("llmops-dagster Operations Guide")


def test_html_drops_boilerplate_and_keeps_headings() -> None:
    doc = parse_file(CORPUS / "vector-search-primer.html", MAX_BYTES)
    assert doc.format == "html"
    assert doc.pages is None
    assert doc.title == "Vector Search Primer: Similarity, Indexes and Hybrid Ranking"
    text = doc.text
    # header, nav, footer, script and style must not leak into the text
    for boilerplate in (
        "Example Docs Portal",
        "Sign in",
        "Register",
        "Home",
        "Contact",
        "Copyright",
        "All rights reserved",
        "Cookie settings",
        "siteAnalytics",
        "pageview",
        "font-family",
        "max-width",
        "boilerplate",
    ):
        assert boilerplate not in text, boilerplate
    headings = {block.heading for block in doc.blocks}
    assert {
        "Vector Search Primer",
        "Cosine similarity",
        "Why normalisation matters",
        "Exact and approximate nearest neighbours",
        "IVF partitions and nprobes",
        "Product quantisation and the refine factor",
        "Keyword search with BM25",
        "Hybrid search and reciprocal rank fusion",
        "Measuring recall@k",
    } <= headings
    assert all(block.page is None for block in doc.blocks)
    # Body content of paragraphs, list items and code survives, entities decoded.
    assert "Reciprocal rank fusion (RRF) avoids the problem" in text
    assert "It needs no training and no score calibration, only ranked lists." in text
    assert "def recall_at_k(ann_ids, exact_ids, k=10):" in text
    assert "set(a[:k]) & set(e[:k])" in text
    no_markup_left(doc)


def test_markdown_front_matter_removed_headings_kept_markup_stripped() -> None:
    doc = parse_file(CORPUS / "chunking-notes.md", MAX_BYTES)
    assert doc.format == "markdown"
    assert doc.title == "Practical notes on chunking documents for retrieval"
    text = doc.text
    # front matter
    for front in ("title:", "date: 2025-03-14", "tags: [chunking"):
        assert front not in text
    assert not text.startswith("---")
    # headings are block headings, not body text
    headings = [block.heading for block in doc.blocks]
    for heading in (
        "Practical notes on chunking documents for retrieval",
        "Think in tokens, not characters",
        "The 256-token window of MiniLM",
        "Why truncation silently loses text",
        "Overlap, in whole sentences",
        "Respect the structure of the document",
        "Keep page numbers per chunk",
        "Stable chunk ids",
        "A short checklist",
    ):
        assert heading in headings
    assert not any(block.text.startswith("#") for block in doc.blocks)
    # links keep their text, lose their target; emphasis and code markers go
    assert "see environments.yaml and the operations guide." in text
    assert "Sentence-Transformers documentation" in text
    assert "](" not in text and "https://www.sbert.net" not in text
    assert "**" not in text and "`" not in text
    assert "it makes it model-specific, which is a feature" in text
    assert "The default model, all-MiniLM-L6-v2, has 512" in text
    # list markers go, list text stays
    assert "chunk_tokens: 200 is the budget for the text of one chunk." in text
    assert not any(re.match(r"^(?:[-*+]|\d+[.)])\s", block.text) for block in doc.blocks)
    no_markup_left(doc)


def test_text_utf8_with_accents_and_dashes() -> None:
    doc = parse_file(CORPUS / "release-checklist.txt", MAX_BYTES)
    assert doc.format == "text"
    assert doc.title == "Release checklist — promoting a RAG model version"
    assert "revised by René and Jürgen" in doc.text
    assert "A release is “done” when" in doc.text
    assert all(block.heading == "" and block.page is None for block in doc.blocks)
    # Paragraphs are split on blank lines and joined within.
    assert doc.blocks[0].text == "Release checklist — promoting a RAG model version"
    assert "llmops rollback --env prod" in [block.text for block in doc.blocks]
    no_markup_left(doc)


def test_generated_pdf_pages_outline_and_footers(tmp_path: Path) -> None:
    pages = [
        "Introduction\nThe handbook explains the installation. It has two paragraphs of text.\n\n"
        "The second paragraph is right here and it ends with a full stop.",
        "Installation\nInstall the package with pip. Then configure the settings file carefully.",
        "Usage\nRun the command line tool. It prints a short report about the landing zone.",
        "Support\nAsk the platform team when something is unclear.",
    ]
    doc = parse_file(write_text_pdf(tmp_path / "handbook.pdf", pages), MAX_BYTES)
    assert doc.pages == 4
    assert doc.title == "Test Handbook"
    by_heading = {}
    for block in doc.blocks:
        by_heading.setdefault(block.heading, set()).add(block.page)
    assert by_heading == {"Introduction": {1}, "Installation": {2}, "Usage": {3}, "Support": {4}}
    assert "Test Handbook Page" not in doc.text
    assert "Install the package with pip." in doc.text


def test_generated_pdf_without_outline_has_no_headings(tmp_path: Path) -> None:
    pages = ["First line\nBody one.", "Second line\nBody two.", "Third line\nBody three."]
    doc = parse_file(write_text_pdf(tmp_path / "plain.pdf", pages, outline=False), MAX_BYTES)
    assert [block.heading for block in doc.blocks] == ["", "", ""]
    assert [block.page for block in doc.blocks] == [1, 2, 3]
    assert "Body three." in doc.text


# --- bad files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "writer", "reason"),
    [
        ("corrupt.pdf", write_corrupt_pdf, QuarantineReason.CORRUPT),
        ("encrypted.pdf", write_encrypted_pdf, QuarantineReason.ENCRYPTED),
        ("empty.pdf", write_empty, QuarantineReason.EMPTY),
        ("empty.txt", write_empty, QuarantineReason.EMPTY),
        ("empty.md", write_empty, QuarantineReason.EMPTY),
        ("empty.html", write_empty, QuarantineReason.EMPTY),
        ("blank.html", write_blank_html, QuarantineReason.EMPTY),
        ("scanned.pdf", write_scanned_pdf, QuarantineReason.NO_TEXT_LAYER),
        ("binary.txt", write_undecodable_text, QuarantineReason.UNDECODABLE),
        ("binary.md", write_undecodable_text, QuarantineReason.UNDECODABLE),
        ("binary.html", write_undecodable_text, QuarantineReason.UNDECODABLE),
        ("report.docx", write_unsupported, QuarantineReason.UNSUPPORTED_TYPE),
        ("diagram.png", write_unsupported, QuarantineReason.UNSUPPORTED_TYPE),
    ],
)
def test_bad_file_gets_its_reason(tmp_path: Path, name: str, writer, reason: QuarantineReason) -> None:
    path = writer(tmp_path / name)
    assert path == tmp_path / name and path.is_file()
    with pytest.raises(ParseError) as caught:
        parse_file(path, MAX_BYTES)
    assert caught.value.reason is reason
    assert caught.value.detail
    assert str(caught.value).startswith(f"{reason.value}: ")


def test_encrypted_pdf_really_needs_its_password(tmp_path: Path) -> None:
    import pypdfium2 as pdfium

    path = write_encrypted_pdf(tmp_path / "locked.pdf")
    with pytest.raises(pdfium.PdfiumError):
        pdfium.PdfDocument(path.read_bytes())
    pdf = pdfium.PdfDocument(path.read_bytes(), password="secret")
    assert "only readable with the password" in pdf[0].get_textpage().get_text_bounded()
    pdf.close()


def test_too_large_is_checked_before_parsing(tmp_path: Path) -> None:
    good = CORPUS / "release-checklist.txt"
    size = good.stat().st_size
    assert reason_of(good, max_bytes=size - 1) is QuarantineReason.TOO_LARGE
    assert parse_file(good, max_bytes=size).blocks  # the limit is inclusive
    # Too-large wins over whatever else is wrong with the file.
    assert reason_of(write_corrupt_pdf(tmp_path / "big.pdf"), max_bytes=100) is QuarantineReason.TOO_LARGE


def test_unsupported_type_wins_over_size_and_content(tmp_path: Path) -> None:
    path = tmp_path / "notes.docx"
    path.write_text("plain readable text")
    assert reason_of(path, max_bytes=1) is QuarantineReason.UNSUPPORTED_TYPE
    no_suffix = tmp_path / "README"
    no_suffix.write_text("plain readable text")
    assert reason_of(no_suffix) is QuarantineReason.UNSUPPORTED_TYPE


def test_bad_corpus_matches_its_expectations(tmp_path: Path) -> None:
    expected = write_bad_corpus(tmp_path)
    not_here = {QuarantineReason.TOO_LARGE.value} | (set() if UNREADABLE_POSSIBLE else {QuarantineReason.UNREADABLE.value})
    assert set(expected.values()) == {r.value for r in QuarantineReason} - not_here
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if not p.is_dir() or p.is_symlink()}
    assert on_disk == set(expected)
    got = {relative: reason_of(tmp_path / relative).value for relative in expected}
    assert got == expected


def test_whitespace_only_files_are_empty(tmp_path: Path) -> None:
    for name in ("blank.txt", "blank.md", "blank.pdf", "blank.html"):
        path = tmp_path / name
        path.write_bytes(b" \n\t\r\n  \n")
        assert reason_of(path) is QuarantineReason.EMPTY, name


def test_markdown_with_only_front_matter_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "meta.md"
    path.write_text("---\ntitle: nothing here\n---\n\n")
    assert reason_of(path) is QuarantineReason.EMPTY


# --- encodings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_latin1_text_decodes(tmp_path: Path, encoding: str) -> None:
    path = write_latin1_text(tmp_path / "legacy.txt", encoding=encoding)
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    doc = parse_file(path, MAX_BYTES)
    assert doc.text == "\n\n".join(paragraphs(LATIN1_TEXT))
    assert "René und Jürgen" in doc.text and "Größe" in doc.text


def test_cp1252_punctuation_decodes() -> None:
    text = "Release “done” — when the champion has served traffic for a full day. Größe geprüft, René."
    assert decode_text(text.encode("cp1252")) == text


def test_french_latin1_text_decodes() -> None:
    text = "Le résumé est très élégant, à côté de la crème brûlée."
    assert decode_text(text.encode("latin-1")) == text


@pytest.mark.parametrize("length", ["short", "long"])
def test_utf8_with_a_stray_byte_stays_utf8_with_the_repair_recorded(tmp_path: Path, length: str) -> None:
    """One damaged byte in a UTF-8 file: every other character keeps its meaning, the byte becomes
    U+FFFD, and the document says so, whether the file is short or long."""
    good = "Zürich — naïve café, 東京 and Größe." if length == "short" else " ".join(["Zürich — naïve café, 東京 and Größe."] * 200)
    data = good.encode("utf-8").replace(b"caf\xc3\xa9", b"caf\xa4", 1)
    path = tmp_path / "notes.md"
    path.write_bytes(data)
    doc = parse_file(path, MAX_BYTES)
    assert doc.text.startswith("Zürich — naïve caf\ufffd, 東京 and Größe.")
    assert doc.warnings == ["1 byte sequence that is not UTF-8 replaced by U+FFFD"]
    for parse, name in ((parse_html, "page.html"), (parse_markdown, "notes.md")):
        assert parse(b"<p>" + data + b"</p>" if name.endswith("html") else data).warnings, name


def test_clean_utf8_and_legacy_code_pages_record_no_repair(tmp_path: Path) -> None:
    for data in ("Zürich — naïve café".encode(), "Le résumé est très élégant, à côté.".encode("latin-1")):
        repairs: list[str] = []
        decode_text(data, repairs)
        assert repairs == []


def test_utf8_bom_and_utf16_are_honoured(tmp_path: Path) -> None:
    text = "Zürich — naïve café\n\nSecond paragraph."
    for name, data in {
        "bom.txt": b"\xef\xbb\xbf" + text.encode("utf-8"),
        "utf16.txt": text.encode("utf-16"),
        "utf16be.md": b"\xfe\xff" + text.encode("utf-16-be"),
    }.items():
        path = tmp_path / name
        path.write_bytes(data)
        doc = parse_file(path, MAX_BYTES)
        assert doc.text == "Zürich — naïve café\n\nSecond paragraph.", name
        assert "\ufeff" not in doc.text


def test_undecodable_even_without_nul_bytes() -> None:
    rng = random.Random(7)
    noise = bytes(rng.randrange(0x80, 0x100) for _ in range(4000))
    with pytest.raises(ParseError) as caught:
        parse_bytes(noise, "text")
    assert caught.value.reason is QuarantineReason.UNDECODABLE


def test_odd_length_utf16_is_undecodable_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "broken16.txt"
    path.write_bytes(b"\xff\xfe" + "abc".encode("utf-16-le") + b"\x00")
    assert reason_of(path) is QuarantineReason.UNDECODABLE



def test_a_file_of_nul_bytes_is_undecodable_not_empty(tmp_path: Path) -> None:
    # NUL is valid UTF-8: the file decoded, lost every character to cleaning and read as empty.
    path = tmp_path / "zeros.txt"
    path.write_bytes(b"\x00" * 4096)
    with pytest.raises(ParseError) as caught:
        parse_file(path, MAX_BYTES)
    assert caught.value.reason is QuarantineReason.UNDECODABLE
    assert "only NUL bytes" in str(caught.value)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_decodes(tmp_path: Path, encoding: str) -> None:
    # Its accented letters are not valid UTF-8, so it used to fall to the NUL-byte check as binary.
    path = tmp_path / "windows.txt"
    path.write_bytes("Zürich — naïve café\n\nSecond paragraph.".encode(encoding))
    assert parse_file(path, MAX_BYTES).text == "Zürich — naïve café\n\nSecond paragraph."


@pytest.mark.parametrize(
    ("name", "data", "text"),
    [
        # UTF-8 whose NULs cleaning drops: padding left by a crash, a stray NUL in a short note.
        ("padded.md", b"# Notes\n\nImportant text here.\n" + b"\x00" * 600, "Important text here."),
        ("short.txt", b"Short note.\x00", "Short note."),
        # ASCII-only UTF-16 and UTF-32 without a byte-order mark are UTF-8 with NULs, an odd length too.
        ("odd16.txt", "Plain words here.".encode("utf-16-le") + b"\n", "Plain words here."),
        ("plain32.txt", "Plain words here.".encode("utf-32-le"), "Plain words here."),
    ],
)
def test_text_with_some_nul_bytes_is_still_read(tmp_path: Path, name: str, data: bytes, text: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert text in parse_file(path, MAX_BYTES).text


def test_sixteen_bit_numbers_are_not_mistaken_for_utf16(tmp_path: Path) -> None:
    # Every other byte NUL, as in UTF-16 text, but what they decode to is mostly control characters.
    path = tmp_path / "samples.txt"
    path.write_bytes(b"".join(value.to_bytes(2, "little") for value in random.Random(3).choices(range(1, 256), k=2000)))
    assert reason_of(path) is QuarantineReason.UNDECODABLE

# --- clean_text and helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("exam-\nple", "example"),
        ("a long exam-\n  ple here", "a long example here"),
        ("exam-\r\nple", "example"),
        ("exam\u00ad\nple", "example"),  # soft hyphen at a line break
        ("exam\u2010\nple", "example"),  # Unicode hyphen
        ("exam\x02\nple", "example"),  # pdfium's hyphen marker
        ("co\u00adoperate", "cooperate"),  # soft hyphen inside a line
        ("\ufb01nd the \ufb02ow", "find the flow"),
        ("e\ufb00ort, \ufb03x, \ufb04e, \ufb05op, \ufb06ep", "effort, ffix, ffle, stop, step"),
        ("con\ufb01guration", "configuration"),
        ("a\u00a0b\u2009c\t\td   e", "a b c d e"),
        ("x\x00y\x07z\x7f", "xyz"),
        ("cafe\u0301", "café"),  # NFC
        ("line one\r\nline two\rline three", "line one\nline two\nline three"),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_clean_text_keeps_real_hyphens() -> None:
    # A hyphen before a capital or a digit, or not at a line break, is a real one.
    assert clean_text("llmops-dagster") == "llmops-dagster"
    assert clean_text("pre-\nRelease") == "pre-\nRelease"
    assert clean_text("page-\n2") == "page-\n2"
    assert clean_text("list:\n- item") == "list:\n- item"


def test_clean_text_is_idempotent() -> None:
    raw = "The con\ufb01gu-\nration of co\u00adoperating \ufb02ows\u00a0works.\r\n"
    once = clean_text(raw)
    assert once == "The configuration of cooperating flows works.\n"
    assert clean_text(once) == once


def test_paragraphs_split_on_blank_lines() -> None:
    assert paragraphs("a\nb\n\n  \n c \n\n\n\nd") == ["a b", "c", "d"]
    assert paragraphs("\n\n \n") == []


def test_detect_format_is_case_insensitive() -> None:
    assert detect_format(Path("A.PDF")) == "pdf"
    assert detect_format(Path("page.HTM")) == "html"
    assert detect_format(Path("notes.markdown")) == "markdown"
    assert detect_format(Path("readme.rst")) == "text"
    assert detect_format(Path("image.png")) is None
    assert detect_format(Path("Makefile")) is None


# --- more structure -------------------------------------------------------------------------------


def test_markdown_fenced_code_is_kept_verbatim_and_not_read_as_headings() -> None:
    data = b"# Title\n\nIntro.\n\n```python\n# not a heading\nx = a_b * c_d\n```\n\nAfter the code.\n"
    doc = parse_markdown(data)
    assert {block.heading for block in doc.blocks} == {"Title"}
    assert "# not a heading x = a_b * c_d" in doc.text
    assert doc.blocks[-1].text == "After the code."


def test_markdown_setext_heading_after_a_paragraph() -> None:
    doc = parse_markdown(b"Intro paragraph.\n\nSection\n-------\n\nBody text.\n")
    assert [(b.heading, b.text) for b in doc.blocks] == [("", "Intro paragraph."), ("Section", "Body text.")]


def test_markdown_setext_heading_on_the_first_line() -> None:
    doc = parse_markdown(b"Title\n=====\n\nBody text.\n")
    assert [(b.heading, b.text) for b in doc.blocks] == [("Title", "Body text.")]


def test_markdown_keeps_intraword_underscores() -> None:
    doc = parse_markdown(b"# Settings\n\nSet chunk_tokens and overlap_tokens; 2*3*4 is 24.\n")
    assert doc.blocks[0].text == "Set chunk_tokens and overlap_tokens; 2*3*4 is 24."


def test_html_headings_group_following_blocks() -> None:
    html = (
        b"<html><head><title>T</title></head><body>"
        b"<p>Before any heading.</p><h2>First</h2><p>One.</p><ul><li>Item.</li></ul>"
        b"<h3>Second</h3><p>Two <b>bold</b> and <a href='#'>linked</a>.</p></body></html>"
    )
    doc = parse_html(html)
    # (Inline tags may leave a space before punctuation; that is cosmetic and not pinned here.)
    assert [(b.heading, re.sub(r"\s+([.,;:!?])", r"\1", b.text)) for b in doc.blocks] == [
        ("", "Before any heading."),
        ("First", "One."),
        ("First", "Item."),
        ("Second", "Two bold and linked."),
    ]
    assert doc.title == "T"


def test_html_without_block_elements_falls_back_to_loose_text() -> None:
    doc = parse_html(b"<html><body><span>Just a line</span><br><span>and another</span></body></html>")
    assert "Just a line" in doc.text and "and another" in doc.text


def test_html_div_with_inline_markup_keeps_all_words() -> None:
    doc = parse_html(b"<html><body><p>Intro.</p><div>Hello <b>world</b> again</div></body></html>")
    assert "world" in doc.text


def test_html_text_directly_in_a_section_is_kept() -> None:
    doc = parse_html(b"<html><body><p>Intro.</p><section>Loose text in a section.</section></body></html>")
    assert "Loose text in a section." in doc.text


# --- robustness -----------------------------------------------------------------------------------


def _garbage(rng: random.Random) -> bytes:
    prefix = rng.choice([b"", b"%PDF-1.7\n", b"<html><body>", b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf", b"---\n", b"# "])
    data = prefix + bytes(rng.randrange(256) for _ in range(rng.randint(0, 1500)))
    return data.replace(b"\x00", b"") if rng.random() < 0.3 else data


@pytest.mark.parametrize("suffix", [".pdf", ".html", ".md", ".txt", ".rst", ".htm"])
def test_parse_file_raises_only_parse_error_on_garbage(tmp_path: Path, suffix: str) -> None:
    rng = random.Random(f"garbage{suffix}")
    outcomes = set()
    for index in range(60):
        path = tmp_path / f"g{index}{suffix}"
        path.write_bytes(_garbage(rng))
        try:
            doc = parse_file(path, MAX_BYTES)
        except ParseError as error:
            assert isinstance(error.reason, QuarantineReason)
            outcomes.add(error.reason)
        else:
            assert isinstance(doc, ParsedDocument) and all(isinstance(b, Block) for b in doc.blocks)
            assert any(b.text.strip() for b in doc.blocks)
            outcomes.add("parsed")
    assert outcomes, "something was tried"


def test_parse_file_on_a_directory_named_like_a_document(tmp_path: Path) -> None:
    folder = tmp_path / "folder.pdf"
    folder.mkdir()
    with pytest.raises(ParseError):
        parse_file(folder, MAX_BYTES)


def test_truncated_real_pdf_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    data = (CORPUS / "operations-guide.pdf").read_bytes()
    for cut, name in ((len(data) // 2, "half.pdf"), (400, "head.pdf")):
        path = tmp_path / name
        path.write_bytes(data[:cut])
        try:
            doc = parse_file(path, MAX_BYTES)
        except ParseError as error:
            assert error.reason in {QuarantineReason.CORRUPT, QuarantineReason.NO_TEXT_LAYER, QuarantineReason.EMPTY}
        else:  # pdfium may recover part of a damaged file; then it must still be sane
            assert all(1 <= (b.page or 0) <= (doc.pages or 0) for b in doc.blocks)


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Привет, как дела? Это тестовый документ о векторном поиске и индексах.", "cp1251"),
        ("Zażółć gęślą jaźń, to jest polski tekst o wyszukiwaniu wektorowym.", "cp1250"),
        ("Größe und Übermaß sind schön, sagt René.", "cp1252"),
    ],
)
def test_western_preference_does_not_break_other_single_byte_encodings(text: str, encoding: str) -> None:
    assert decode_text(text.encode(encoding)) == text


def test_pdfium_line_end_hyphens_follow_the_documents_own_spelling() -> None:
    from llmops_dagster.core.parsers.pdf import _join_line_hyphens

    pages = ["a well\x02known exam\x02ple, see well-known and UTF\x028"]
    assert _join_line_hyphens(pages) == ["a well-known example, see well-known and UTF-8"]


def test_running_headers_with_changing_page_numbers_are_furniture() -> None:
    from llmops_dagster.core.parsers.pdf import _furniture

    pages = [[f"Chapter 6: Programming {n}", "Body text that differs on every page number " + "x" * n, f"{n}"] for n in range(60, 64)]
    furniture = _furniture(pages)
    assert "Chapter #: Programming #" in furniture
    assert not any(key.startswith("Body text") for key in furniture)


def test_markdown_and_html_keep_the_heading_path() -> None:
    markdown = parse_bytes(b"# Guide\n\nIntro.\n\n## Install\n\n### From source\n\nRun make.\n\n## Use\n\nAsk.\n", "markdown")
    assert [(b.text, b.section) for b in markdown.blocks] == [
        ("Intro.", ("Guide",)), ("Run make.", ("Guide", "Install", "From source")), ("Ask.", ("Guide", "Use"))
    ]
    html = parse_bytes(b"<h1>Guide</h1><h2>Install</h2><p>Run make.</p><h3>Notes</h3><p>None.</p><h2>Use</h2><p>Ask.</p>", "html")
    assert [b.section for b in html.blocks] == [("Guide", "Install"), ("Guide", "Install", "Notes"), ("Guide", "Use")]


def test_html_link_lists_are_navigation_not_content() -> None:
    menu = b"".join(b'<li><a href="#s%d">Section %d</a></li>' % (n, n) for n in range(5))
    page = b"<h1>FAQ</h1><ul>" + menu + b"</ul><p>Python is a programming language.</p><p>See <a href='x.html'>this</a> too.</p>"
    parsed = parse_bytes(page, "html")
    assert [b.text for b in parsed.blocks] == ["Python is a programming language.", "See this too."]
    assert parsed.dropped == {"link_list": 5}
    with pytest.raises(ParseError) as caught:
        parse_bytes(b"<ul>" + menu + b"</ul>", "html")
    assert caught.value.reason == QuarantineReason.EMPTY and "only navigation" in caught.value.detail
