"""Builds the real-document evaluation sets: documents nobody on the project wrote, with questions
whose answers are known, taken from Debian's packages (no other network is needed).

    python scripts/realdocs.py [--out DIR]     # default: .llmops/realdocs

- ``debian-faq-pdf/``: The Debian GNU/Linux FAQ as the 73-page PDF of the ``debian-faq`` package.
  Its questions are the FAQ's own question headings (the PDF outline's entries that end in "?");
  the answer is on the page the outline entry points at (``page``), and its gold ``answer`` is the
  first sentence under the heading, the FAQ's own reply.
- ``python-faq-html/``: the Python FAQ pages of the ``python3.11-doc`` package (Sphinx HTML). Its
  questions are the pages' question headings (h2/h3 that end in "?"); the answer is the section
  under that heading (``section``), and its gold ``answer`` the section's first paragraph.

The gold answers are the authors' words too, so answer F1 on these sets measures how close an
answer comes to what the FAQ itself replies first (``bench/quality.py --answers``).

The questions are the documents' authors' own, which is also their limit: a question repeats its
section's heading word for word, so heading-aware retrieval is favoured over what users would type.
Both licences (GPL-2+ for the FAQ, PSF for Python's docs) allow copying, but the sets are built,
not committed, to keep the repository small.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmops_dagster.core.answer import split_sentences  # noqa: E402

PACKAGES = {"debian-faq": "usr/share/doc/debian/FAQ/debian-faq.en.pdf.gz", "python3.11-doc": "usr/share/doc/python3.11/html/faq"}


def fetch(package: str, scratch: Path) -> Path:
    """Download a Debian package (no install, no root needed beyond apt's cache) and unpack it."""
    subprocess.run(["apt-get", "download", "-qq", package], cwd=scratch, check=True)
    deb = next(scratch.glob(f"{package}_*.deb"))
    target = scratch / package
    subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)
    return target


def debian_faq(unpacked: Path, out: Path) -> int:
    import pypdfium2 as pdfium

    folder = out / "debian-faq-pdf"
    (folder / "questions").mkdir(parents=True, exist_ok=True)
    pdf_path = folder / "debian-faq.pdf"
    with gzip.open(unpacked / PACKAGES["debian-faq"]) as source, pdf_path.open("wb") as target:
        shutil.copyfileobj(source, target)
    pdf = pdfium.PdfDocument(str(pdf_path))
    questions = []
    for bookmark in pdf.get_toc(max_depth=15):
        title = " ".join((bookmark.get_title() or "").split())
        destination = bookmark.get_dest()
        if title.endswith("?") and destination is not None and destination.get_index() is not None:
            page = destination.get_index()
            question = {"question": title, "source": pdf_path.name, "page": page + 1}
            following = " ".join(pdf[index].get_textpage().get_text_range() for index in range(page, min(page + 2, len(pdf))))
            answer = first_sentence_after(title, following)
            questions.append({**question, "answer": answer} if answer else question)
    pdf.close()
    _write(folder / "questions" / "faq.jsonl", questions)
    return len(questions)


def python_faq(unpacked: Path, out: Path) -> int:
    from bs4 import BeautifulSoup

    folder = out / "python-faq-html"
    (folder / "questions").mkdir(parents=True, exist_ok=True)
    questions = []
    for page in sorted((unpacked / PACKAGES["python3.11-doc"]).glob("*.html")):
        shutil.copy(page, folder / page.name)
        soup = BeautifulSoup(page.read_bytes(), "lxml")
        for link in soup.select("a.headerlink"):
            link.decompose()
        for heading in soup.find_all(["h2", "h3", "h4"]):
            text = " ".join(heading.get_text(" ", strip=True).split())
            text = re.sub(r"\s+([?,.])", r"\1", text)
            if text.endswith("?"):
                question = {"question": text, "source": page.name, "section": text}
                paragraph = heading.find_next("p")
                answer = " ".join(paragraph.get_text().split()) if paragraph else ""
                questions.append({**question, "answer": answer} if answer else question)
    _write(folder / "questions" / "faq.jsonl", questions)
    return len(questions)


def first_sentence_after(heading: str, text: str) -> str | None:
    """The first sentence that follows ``heading`` in a PDF page's text (lines joined, words broken
    at a line end mended), or None where the heading is not found."""
    flat = " ".join(text.replace("\ufffe", "").replace("\xad", "").split())
    at = flat.find(heading)
    if at < 0:
        return None
    first = split_sentences(flat[at + len(heading) :].strip())[0]
    return first if first.endswith((".", "!", "?")) else None


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".llmops" / "realdocs")
    args = parser.parse_args()
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        sys.exit("scripts/realdocs.py needs apt-get and dpkg-deb (a Debian or Ubuntu machine)")
    with tempfile.TemporaryDirectory(prefix="llmops-realdocs-") as scratch:
        counts = {
            "debian-faq-pdf": debian_faq(fetch("debian-faq", Path(scratch)), args.out),
            "python-faq-html": python_faq(fetch("python3.11-doc", Path(scratch)), args.out),
        }
    for name, count in counts.items():
        print(f"{args.out / name}: {count} questions")


if __name__ == "__main__":
    main()
