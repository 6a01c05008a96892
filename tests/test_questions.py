"""Question files: valid lines are kept, each bad line is reported with its number and reason."""

from __future__ import annotations

from pathlib import Path

from llmops_dagster.core.questions import Question, landing_questions, read_questions


def test_bad_lines_are_reported_with_line_numbers_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "What is BM25?", "answer": "a ranking function"}\n'
        "\n"
        "{not json}\n"
        '["a list"]\n'
        '{"question": "   "}\n'
        '{"question": "Where are chunks stored?", "source": "chunking-notes.md"}\n'
        '{"question": "Typed?", "answer": 3}\n'
        '{"text": "no question key"}\n'
        '{"question": 42}\n'
        '{"question": "What is \\ud800 overlap?"}\n'
        '{"question": "Fine?", "answer": "yes \\udcff"}\n',
        encoding="utf-8",
    )
    questions, rejected = read_questions(path)
    assert questions == [
        Question("What is BM25?", "a ranking function", None, "q.jsonl:1"),
        Question("Where are chunks stored?", None, "chunking-notes.md", "q.jsonl:6"),
    ]
    assert [str(r) for r in rejected] == [
        "q.jsonl:3: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "q.jsonl:4: expected a JSON object, got list",
        'q.jsonl:5: "question" is empty',
        'q.jsonl:7: "answer" must be a string, got int',
        'q.jsonl:8: no "question" key',
        'q.jsonl:9: "question" must be a string, got int',
        "q.jsonl:10: \"question\" is not valid text: a lone surrogate '\\ud800' at character 9 (or a byte that is not UTF-8)",
        "q.jsonl:11: \"answer\" is not valid text: a lone surrogate '\\udcff' at character 5 (or a byte that is not UTF-8)",
    ]


def test_a_line_that_is_not_utf8_is_rejected_by_number_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    lines = ['{"question": "caf\xe9?"}'.encode("latin-1"), '{"question": "Where\u2028now?"}'.encode(), b'{"question": "Fine?"}']
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\n")
    questions, rejected = read_questions(path)
    assert [str(r) for r in rejected] == ["latin.jsonl:1: not UTF-8 text (byte 18 of the line)"]
    # A line separator inside a JSON string is part of its line, not the end of it.
    assert [(q.question, q.origin) for q in questions] == [("Where\u2028now?", "latin.jsonl:2"), ("Fine?", "latin.jsonl:3")]


def test_landing_questions_reads_every_jsonl_file_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "questions"
    folder.mkdir()
    (folder / "b.jsonl").write_text('{"question": "second"}\n')
    (folder / "a.jsonl").write_text('{"question": "first"}\n')
    (folder / "notes.txt").write_text("not a question file")
    questions, rejected = landing_questions(tmp_path)
    assert [q.question for q in questions] == ["first", "second"] and not rejected
    assert landing_questions(tmp_path / "missing") == ([], [])
