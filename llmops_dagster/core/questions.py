"""Question files: JSON Lines with a ``question`` and, for evaluation, an ``answer`` or a ``source``
(optionally narrowed to the ``page`` or the ``section`` heading that holds the answer).

A malformed line is rejected with its line number and the reason; the other lines still count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

QUESTIONS_DIR = "questions"
MAX_QUESTION_CHARS = 4000


@dataclass(frozen=True)
class Question:
    question: str
    answer: str | None = None
    source: str | None = None
    origin: str = ""  # file:line, so a prediction can be traced to its input
    page: int | None = None  # the page of ``source`` that holds the answer
    section: str | None = None  # the heading of ``source`` under which the answer stands


@dataclass(frozen=True)
class Rejected:
    origin: str  # file:line
    reason: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.reason}"


def not_text(value: str) -> str | None:
    """Why ``value`` is no text a tokenizer or an Arrow column takes, or None. JSON allows a lone
    surrogate ("\\ud800"), and a command-line argument with a byte that is not UTF-8 arrives as one."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"a lone surrogate {value[error.start]!r} at character {error.start + 1} (or a byte that is not UTF-8)"
    return None


def _text(row: dict, key: str, required: bool = False) -> str | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string, got {type(value).__name__}')
    problem = not_text(value)
    if problem:
        raise ValueError(f'"{key}" is not valid text: {problem}')
    return value.strip() or None


def parse_line(line: str, origin: str) -> Question:
    """One JSON object with a non-empty string ``question``; raises ValueError with the reason."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "question" not in row:
        raise ValueError('no "question" key')
    question = _text(row, "question", required=True)
    if not question:
        raise ValueError('"question" is empty')
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f'"question" is longer than {MAX_QUESTION_CHARS} characters')
    page = row.get("page")
    if page is not None and (not isinstance(page, int) or isinstance(page, bool) or page < 1):
        raise ValueError(f'"page" must be a positive integer, got {page!r}')
    source = _text(row, "source")
    section = _text(row, "section")
    if (page is not None or section is not None) and source is None:
        raise ValueError('"page" and "section" need a "source"')
    return Question(question, _text(row, "answer"), source, origin, page, section)


def read_questions(path: Path) -> tuple[list[Question], list[Rejected]]:
    """Questions of one file in order, and the lines that were rejected. Blank lines are skipped.
    Lines end at a newline only (not at a U+2028 inside a JSON string), and each is decoded on its
    own, so a line that is not UTF-8 is rejected by number and the rest are kept."""
    questions: list[Question] = []
    rejected: list[Rejected] = []
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    for number, raw in enumerate(data.splitlines(), 1):
        origin = f"{path.name}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            rejected.append(Rejected(origin, f"not UTF-8 text (byte {error.start + 1} of the line)"))
            continue
        if not line.strip():
            continue
        try:
            questions.append(parse_line(line, origin))
        except ValueError as error:
            rejected.append(Rejected(origin, str(error)))
    return questions, rejected


def landing_questions(landing: Path) -> tuple[list[Question], list[Rejected]]:
    """Every ``questions/*.jsonl`` file of a landing zone, in name order."""
    questions: list[Question] = []
    rejected: list[Rejected] = []
    folder = landing / QUESTIONS_DIR
    if not folder.is_dir():
        return questions, rejected
    for path in sorted(folder.glob("*.jsonl")):
        found, bad = read_questions(path)
        questions.extend(found)
        rejected.extend(bad)
    return questions, rejected
