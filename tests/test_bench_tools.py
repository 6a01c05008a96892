"""The pieces of the real-document benchmark that decide its figures: where a gold answer is taken
from (scripts/realdocs.py) and what the naive answer is (bench/quality.py)."""

import importlib.util
import sys
from pathlib import Path

from llmops_dagster.core.baseline import Bm25Baseline, Window

from helpers import REPO


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(path.stem, module)
    spec.loader.exec_module(module)
    return module


def test_the_gold_answer_of_a_pdf_question_is_the_first_sentence_under_its_heading() -> None:
    first_sentence_after = _module(REPO / "scripts" / "realdocs.py").first_sentence_after
    page = (
        "CHAPTER 1. DEFINITIONS 1.2. WHAT IS DEBIAN?\r\nthe end of an earlier answer.\r\n"
        "1.3 OK, now I know what Debian is... what is Linux?!\r\nIn short, Linux is the kernel of a Unix-like op\ufffeerating\r\n"
        "system. It was originally designed for 386 PCs.\r\n"
    )
    heading = "OK, now I know what Debian is... what is Linux?!"
    assert first_sentence_after(heading, page) == "In short, Linux is the kernel of a Unix-like operating system."
    assert first_sentence_after("What is not on this page?", page) is None
    assert first_sentence_after("Last?", "Last? The only sentence.") == "The only sentence."


def test_the_naive_answer_is_the_top_windows_sentence_with_most_question_words() -> None:
    naive_answer = _module(REPO / "bench" / "quality.py").naive_answer
    windows = [
        Window("w1", "a.pdf", 1, "Rollback is cheap. The rollback command moves the champion alias back to the previous version.", ()),
        Window("w2", "b.pdf", 2, "Chunks overlap by 32 tokens. Overlap keeps sentences whole.", ()),
    ]
    with Bm25Baseline(windows) as bm25:
        assert naive_answer(bm25, "Which command moves the champion alias back?") == (
            "The rollback command moves the champion alias back to the previous version."
        )
        assert naive_answer(bm25, "zebra") == ""  # nothing retrieved: no answer
