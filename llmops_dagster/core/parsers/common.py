"""What the parsers share: text cleaning, paragraph splitting, decoding of unknown encodings,
and the heading path above the current position."""

from __future__ import annotations

import re
import unicodedata

from llmops_dagster.core.documents import Block, ParseError, QuarantineReason

LIGATURES = str.maketrans(
    {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st"}
)


# A word broken across lines: "exam-\nple" (ASCII, soft or Unicode hyphen, or pdfium's \x02).
_HYPHEN_BREAK = re.compile(r"(\w)[-\u00ad\u2010\x02][ \t]*\r?\n[ \t]*(?=[a-z])")


_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


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


def decode_text(data: bytes, repairs: list[str] | None = None) -> str:
    """Decode bytes of unknown encoding, or raise ParseError(UNDECODABLE).

    UTF-8 text with a few stray bytes (a damaged copy, one pasted character in another encoding)
    stays UTF-8: each stray byte becomes U+FFFD and ``repairs`` says how many there were. Guessing
    a legacy code page for the whole file instead would turn every correct character into mojibake.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        # NUL is valid UTF-8, and cleaning drops it: a file of nothing else would read as empty.
        if "\x00" in text and not text.replace("\x00", "").strip():
            raise ParseError(QuarantineReason.UNDECODABLE, "only NUL bytes in a text file")
        return text
    if data.count(b"\x00") > len(data) // 100:
        if (text := _bomless_utf16(data)) is not None:
            return text
        raise ParseError(QuarantineReason.UNDECODABLE, "binary content (NUL bytes) in a text file")
    replaced = data.decode("utf-8", errors="replace")
    stray = replaced.count("\ufffd") - data.count("\ufffd".encode())
    multibyte = sum(1 for char in replaced if char > "\x7f" and char != "\ufffd")
    if multibyte > stray:
        if repairs is not None:
            repairs.append(f"{stray} byte sequence{'s' if stray > 1 else ''} that {'are' if stray > 1 else 'is'} not UTF-8 replaced by U+FFFD")
        return replaced
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


def _bomless_utf16(data: bytes) -> str | None:
    """The text of UTF-16 (little- or big-endian) without a byte-order mark, as some Windows tools
    write it, in a Latin script: every other byte NUL, the bytes between them not, and control
    characters rare in what that decodes to (a dump of 16-bit numbers has the pattern too); else
    None. Only asked of bytes that are not UTF-8: ASCII-only UTF-16 is, and cleaning drops its NULs."""
    if len(data) < 4 or len(data) % 2:
        return None
    even, odd = data[0::2].count(0), data[1::2].count(0)
    half = len(data) // 2
    for encoding, nul, other in (("utf-16-le", odd, even), ("utf-16-be", even, odd)):
        if nul >= 0.9 * half and other <= 0.02 * half:
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                return None
            controls = sum(1 for char in text if unicodedata.category(char) == "Cc" and char not in "\t\n\r\f")
            return text if controls <= len(text) // 100 else None
    return None


def require_text(blocks: list[Block], what: str) -> list[Block]:
    if not any(block.text.strip() for block in blocks):
        raise ParseError(QuarantineReason.EMPTY, f"{what} holds no text")
    return blocks


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
