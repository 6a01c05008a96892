"""Build sample_corpus/operations-guide.pdf, the PDF of the bundled sample corpus.

Run from the repository root:

    .venv/bin/python scripts/build_sample_pdf.py

The output is deterministic (reportlab's ``invariant`` mode fixes the creation date and document
id), so re-running the script gives byte-identical output. Every section heading gets a PDF outline
entry (bookmark), which the PDF parser uses to attach a heading to each page's text.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reportlab import rl_config

rl_config.invariant = 1

from reportlab.lib.enums import TA_LEFT  # noqa: E402
from reportlab.lib.pagesizes import A4  # noqa: E402
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet  # noqa: E402
from reportlab.lib.units import mm  # noqa: E402
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "sample_corpus" / "operations-guide.pdf"
TITLE = "llmops-dagster Operations Guide"

INTRO = [
    "This guide is for the people who run llmops-dagster day to day: the platform team that owns "
    "the Dagster deployment, and the application teams that drop documents into a landing zone "
    "and expect answers to come back from search. It describes what the pipeline does with a file, "
    "from the moment it appears in the landing zone until its chunks can be found by a query, and "
    "how a new model version travels from the test environment to production. Each section ends "
    "with the settings that control it, so that the guide can be read next to "
    "<font face='Courier'>environments.yaml</font>.",
    "The quickest way to see the whole workflow is <font face='Courier'>make demo</font>, which "
    "ingests this sample corpus into the test environment, builds the index and runs a few "
    "searches. Everything it creates lives under <font face='Courier'>.llmops/</font> in the "
    "working directory and can be deleted at any time.",
]

SECTIONS: list[tuple[str, list[str]]] = [
    (
        "1. Environments",
        [
            "llmops-dagster knows exactly three environments: <b>test</b>, <b>staging</b> and "
            "<b>prod</b>. They are declared in one file, <font face='Courier'>environments.yaml</font> "
            "at the repository root, in the same spirit as deployment targets in a Databricks "
            "bundle. The file has a <font face='Courier'>defaults</font> block and an "
            "<font face='Courier'>environments</font> block; every key under defaults can be "
            "overridden for a single environment, and an environment that overrides nothing is "
            "written as an empty mapping. A name other than test, staging or prod is a configuration "
            "error and stops the definitions from loading, rather than silently creating a fourth "
            "environment nobody monitors.",
            "All local state hangs off one directory, <font face='Courier'>LLMOPS_HOME</font>. When "
            "the variable is not set, the home is <font face='Courier'>.llmops/</font> beside "
            "environments.yaml in a checkout, and in the working directory for an installed package. "
            "Two placeholders can be used in paths: <font face='Courier'>{home}"
            "</font> for LLMOPS_HOME and <font face='Courier'>{env}</font> for the environment name. "
            "The defaults put the state of each environment in <font face='Courier'>{home}/{env}"
            "</font> and its landing zone in <font face='Courier'>{home}/landing/{env}</font>, so "
            "the test landing zone is <font face='Courier'>.llmops/landing/test</font> unless you "
            "move it. The LanceDB location, <font face='Courier'>lancedb_uri</font>, defaults to a "
            "<font face='Courier'>lancedb</font> folder inside the state root; setting it to an "
            "object store URI such as s3:// or abfss:// moves the tables without any other change. "
            "To use a different declaration file altogether, point "
            "<font face='Courier'>LLMOPS_ENVIRONMENTS</font> at it.",
            "Settings are read when the Dagster definitions load, never at import time. This matters "
            "in tests: a test can set LLMOPS_HOME to a temporary directory, load the definitions, and "
            "be sure that nothing touches the real .llmops folder. It also means that editing "
            "environments.yaml takes effect on the next reload of the code location, not in a run "
            "that is already in progress.",
            "The environments share code but not data. Each has its own landing zone, its own "
            "documents, quarantine, chunks and embeddings tables, and its own model aliases in the "
            "MLflow registry. A document dropped into the staging landing zone is never visible to a "
            "prod search. The usual path is that a change to chunking or to the embedding model is "
            "tried in test with the sample corpus, then run in staging against a copy of real "
            "documents, and only then promoted to prod with an explicit approval.",
            "The defaults that ship with the project are deliberately conservative: files up to "
            "<font face='Courier'>max_file_mb: 50</font>, chunks of 200 tokens with 32 tokens of "
            "overlap, an embedding batch size of 64, and automatic choice of device (cpu or cuda) "
            "and precision (fp32, bf16 or int8). A typical override for prod raises the batch size "
            "on a GPU host and points lancedb_uri at object storage, while test keeps every default "
            "so that its results are reproducible on a laptop.",
        ],
    ),
    (
        "2. Landing zone and quarantine",
        [
            "The landing zone is a plain directory. Anything that can copy a file can feed the "
            "pipeline: an upload service, an rsync job, a person with a file browser. Four formats "
            "are supported: <b>PDF</b> (.pdf), <b>HTML</b> (.html, .htm, .xhtml), <b>Markdown</b> "
            "(.md, .markdown) and <b>plain text</b> (.txt, .text, .rst). Sub-folders are scanned "
            "recursively. Hidden files and folders, whose names start with a dot, are ignored, which "
            "keeps editor swap files and half-finished uploads out of the index. The "
            "<font face='Courier'>questions/</font> folder at the top of the landing zone is also "
            "skipped: it holds the question files used for evaluation and batch prediction, and "
            "those are not documents.",
            "Every file that is scanned ends up in exactly one of two tables: "
            "<font face='Courier'>documents</font>, when text could be extracted, or "
            "<font face='Courier'>quarantine</font>, when it could not. A bad file never fails the "
            "run. Instead the parser records one of seven quarantine reasons together with a short "
            "detail message:",
            "<b>corrupt</b>: the file claims to be a PDF but pdfium cannot open it, or one of its "
            "pages cannot be read. <b>encrypted</b>: the PDF is password-protected. <b>empty</b>: "
            "the file has no bytes, or only whitespace, or a PDF with zero pages, or an HTML page "
            "whose body holds no text once boilerplate is removed. <b>no_text_layer</b>: a PDF "
            "whose pages have no extractable text at all, which almost always means a scan; the "
            "platform does not run OCR. <b>undecodable</b>: a text, Markdown or HTML file whose "
            "bytes fit no text encoding, or that contains NUL bytes. <b>too_large</b>: the file is "
            "bigger than max_file_mb (50 MB by default). <b>unsupported_type</b>: the extension is "
            "not one of the supported formats, for example a .docx or .png file.",
            "Text files do not have to be UTF-8. A byte order mark is honoured, UTF-16 is "
            "recognised, and other encodings such as Latin-1 or Windows-1252 are detected; a file "
            "is only quarantined as undecodable when the best guess is still mostly noise. HTML "
            "pages lose their script, style, nav, header, footer, aside and form elements before "
            "text is extracted, so navigation menus and copyright lines do not end up in chunks. "
            "PDF text is cleaned of ligature characters, so the glyph for \u201cfi\u201d in a word "
            "like \u201cconfiguration\u201d is stored as two ordinary letters, and words hyphenated "
            "across a line break are joined again.",
            "The quarantine table is meant to be read by people. Each row holds the path, the "
            "content hash, the size, the reason and the detail, so a query such as \u201call files "
            "quarantined as encrypted this week\u201d needs no log digging. A quarantined file is "
            "retried automatically when its content changes: fix the file in place, and the next "
            "run moves it from quarantine to documents. Deleting the file removes its quarantine "
            "row as well.",
        ],
    ),
    (
        "3. Incremental ingestion",
        [
            "Ingestion is incremental at every step, and the unit of change is the file content, not "
            "the file name or timestamp. On each run the landing zone is scanned and every file is "
            "identified by the SHA-256 hash of its bytes. The hash is also the document id "
            "(<font face='Courier'>doc_id</font>) stored with the document and with each of its "
            "chunks. Comparing the scan with what is stored sorts every file into one of four "
            "groups: added, changed, unchanged or deleted.",
            "Reading every byte of a large landing zone on every run would be slow, so the scan takes "
            "a shortcut: when a file's size and modification time both match what was recorded last "
            "time, the recorded hash is reused and the file is not read again. When either differs, "
            "the file is hashed. Only the hash decides whether the file changed. Touching a file, or "
            "copying it again with the same content, therefore costs one hash computation and "
            "nothing more: unchanged files are not re-parsed, not re-chunked and not re-embedded.",
            "Added and changed files are parsed. Deleted files leave the index: their rows are "
            "removed from documents or quarantine, their chunks are deleted, and their vectors are "
            "dropped from the embeddings table in the same run, so a search never returns a passage "
            "from a file that is no longer in the landing zone. A file that moves from quarantine to "
            "documents, or the other way round, leaves the table it was in.",
            "The same principle continues downstream. The chunking step re-chunks a document only "
            "when its content hash changed or when the chunking settings changed; the settings are "
            "recorded with each chunk as a fingerprint made of the tokenizer name, chunk_tokens and "
            "overlap_tokens. The embedding step embeds only chunks whose id is not in the index yet. "
            "Because chunk ids are derived from the text, editing one section of a long document "
            "re-embeds only the chunks of that section; the other chunks keep their ids and their "
            "stored vectors, even if their position in the document moved.",
            "Every write is a single LanceDB commit, which creates a new table version. A run that "
            "is killed half-way leaves the last good version readable, and the next run completes "
            "the work. A run with nothing to do commits nothing at all, so the table versions stay "
            "meaningful as a history of real changes. The whole landing zone also has a manifest "
            "digest, one hash over every path and content hash, which serves as a natural run key: "
            "a new landing run is only worth requesting when the digest changes.",
            "From the command line the same pipeline runs with "
            "<font face='Courier'>llmops run --env test --landing DIR</font>, which ingests the "
            "files in DIR instead of the configured landing zone. Running the command twice in a "
            "row is a quick way to check the incremental behaviour: the second run reports zero "
            "added, zero changed and zero deleted files, and writes nothing.",
        ],
    ),
    (
        "4. Chunking",
        [
            "Retrieval works on chunks, not on whole documents, and the chunker decides what a "
            "search result looks like. llmops-dagster uses token-aware chunking with the embedding "
            "model's own tokenizer. Counting words or characters is only an approximation of what "
            "the model sees; counting with the tokenizer is exact, and it is what guarantees that no "
            "chunk is longer than the model can read.",
            "The default embedding model, all-MiniLM-L6-v2, reads at most 256 tokens, and two of "
            "those positions are taken by the special [CLS] and [SEP] tokens. The chunk size is set "
            "with <font face='Courier'>chunk_tokens</font>, 200 by default, and the overlap with "
            "<font face='Courier'>overlap_tokens</font>, 32 by default. A chunk_tokens value that "
            "does not fit the model's window, anything above 254 for MiniLM, is rejected when the "
            "chunker is created, with a message that names the limit. The overlap must be at least "
            "zero and less than half of chunk_tokens.",
            "Text is split in order of preference. Chunks never cross a heading: the heading of a "
            "section, whether it came from a Markdown #, an HTML h2 or a PDF bookmark, is stored with "
            "each of its chunks, and a new heading always starts a new chunk. Within a section, whole "
            "paragraphs are packed greedily until the next one would not fit. A paragraph that is "
            "too long on its own is split into sentences, and a single sentence that is still too "
            "long is cut at token boundaries, keeping the original characters rather than the "
            "tokenizer's lower-cased rendering.",
            "Overlap is made of whole units. When a chunk is full, the last paragraphs or sentences "
            "that fit within overlap_tokens are carried over to the start of the next chunk, so a "
            "fact that straddles a boundary can still be found in one piece. Overlap never cuts a "
            "sentence in half, which means the actual overlap is often a little below 32 tokens, "
            "and sometimes zero when the last sentence alone is longer than the budget.",
            "Each chunk keeps where it came from: the source path, its ordinal position in the "
            "document, its heading, its token count and, for PDF files, the first and last page it "
            "spans (<font face='Courier'>page</font> and <font face='Courier'>page_end</font>). "
            "Search results can therefore cite a page number. Chunk ids are the first 32 hex digits "
            "of a SHA-256 hash over the source path and the chunk text, plus an occurrence counter "
            "for the rare case of identical text appearing twice in one file. The same text in the "
            "same file always gets the same id, which is what makes incremental embedding possible.",
            "Changing chunk_tokens or overlap_tokens changes the chunker fingerprint, and the next run "
            "re-chunks every document. Only chunks whose text actually changed are embedded again; "
            "in practice a new chunk size changes almost every chunk, so plan for a full re-embed "
            "and try new settings in test first.",
        ],
    ),
    (
        "5. Embeddings and the vector index",
        [
            "Chunks are embedded with all-MiniLM-L6-v2, packaged with the project so that nothing is "
            "downloaded from a model hub at run time. The model produces vectors of 384 dimensions. "
            "Token embeddings are mean-pooled and every vector is L2-normalised to unit length, so "
            "cosine similarity and the dot product give the same ranking. Texts are sorted by "
            "length before batching, which keeps padding low; the batch size is 64 by default. Any "
            "other model can be used by setting embedding.model to a local model directory that "
            "contains a config.json.",
            "The vectors live in the <font face='Courier'>embeddings</font> table in LanceDB, one row "
            "per chunk, next to the chunk text and its metadata. New vectors are written with "
            "<font face='Courier'>merge_insert</font> keyed on the chunk id: a chunk id that is "
            "already present is updated, a new one is inserted, and ids whose chunks are gone are "
            "deleted. Each row also records the embedding model fingerprint, the model name plus a "
            "hash of its configuration and weights. An index never mixes models: if the stored "
            "fingerprint differs from the configured model, every chunk is embedded again and the "
            "table is replaced in a single commit.",
            "Three search modes are available. <b>vector</b> search ranks chunks by cosine "
            "similarity to the embedded query. <b>text</b> search uses a full-text index on the "
            "chunk text and ranks with BM25, which is strong on exact terms such as error codes and "
            "command names. <b>hybrid</b> search, the default, runs both and merges the two ranked "
            "lists with reciprocal rank fusion (RRF): each chunk scores the sum of 1/(k + rank) "
            "over the lists it appears in, with k = 60, so a chunk that is near the top of both "
            "lists wins. From a shell, <font face='Courier'>llmops search --env test --json "
            "\"query\"</font> prints the ranked passages with their source, page, heading and score.",
            "The full-text index is created as soon as the table has rows. An approximate nearest "
            "neighbour (ANN) index is not: below <font face='Courier'>ann_min_rows</font>, 20,000 "
            "vectors by default, exact flat search is both exact and fast enough. Above the "
            "threshold an IVF_PQ index is built with about the square root of the row count as the "
            "number of partitions (at least 8) and 8 dimensions per product-quantisation "
            "sub-vector, which gives 48 sub-vectors for 384 dimensions. Queries probe "
            "<font face='Courier'>nprobes</font> = 32 partitions and re-rank "
            "<font face='Courier'>refine_factor</font> = 10 times k candidates on the full vectors.",
            "Approximate search trades recall for speed, so the trade is measured rather than "
            "assumed. The <font face='Courier'>ann_recall</font> asset check samples 200 stored "
            "vectors, uses them as queries, and compares the top 10 from the ANN index with the top "
            "10 from exact search. The check fails when recall@10 drops below "
            "<font face='Courier'>ann_min_recall</font>, 0.95 by default, and reports the median "
            "latency of both searches so that the speed-up is visible next to the recall.",
        ],
    ),
    (
        "6. Promotion and rollback",
        [
            "A model, in llmops-dagster, is the whole retrieval configuration that produced an "
            "index: the embedding model fingerprint, the chunking settings, the search mode and the "
            "index parameters. Each time the pipeline produces a new configuration it is logged to "
            "MLflow and registered as a new version of the registered model. Versions are never "
            "edited; promotion is done entirely by moving aliases.",
            "Two aliases matter in each environment. The <b>champion</b> is the version that serves "
            "searches. The <b>challenger</b> is the newest candidate, waiting for evaluation. When a "
            "new version is registered it receives the challenger alias, and the evaluation asset "
            "runs it against the question files in the questions/ folder of the landing zone. "
            "Evaluation reports recall@10 and MRR@10: recall@10 is the share of questions whose "
            "expected passage appears among the first ten results, and MRR@10 is the mean of "
            "1/rank of the first relevant result, counting zero when none is in the top ten.",
            "A challenger is promoted only if it passes two gates. First, its metrics must meet the "
            "absolute thresholds declared for the environment. Second, it must not be worse than "
            "the current champion on the same questions; a challenger that improves recall@10 but "
            "loses more than a small tolerance on MRR@10 is held back, and the comparison is written "
            "to the run log so that the reason is visible.",
            "In test and staging, a challenger that passes both gates is promoted automatically: the "
            "champion alias moves to the new version, and the previous champion keeps a record of "
            "its version number so that it can be restored. In prod, passing the gates is "
            "necessary but not sufficient. A person has to approve the promotion with "
            "<font face='Courier'>llmops approve --env prod --version N</font>, where N is the "
            "registered model version. The approval is recorded as a tag on the version, with the "
            "approver and the time, and the champion alias only moves after it.",
            "Rollback is the same operation in reverse and is deliberately cheap. "
            "<font face='Courier'>llmops rollback --env prod</font> moves the champion alias back "
            "to the previous champion. No index is rebuilt and no vector is recomputed, because "
            "LanceDB keeps older table versions and each model version records the table version "
            "it was evaluated against. Searches pick up the restored champion on their next call. "
            "A rollback is itself logged, and the version that was rolled back is not deleted, so it "
            "can be examined, fixed and promoted again later.",
            "Promotion never skips an environment: a version reaches prod only after the same "
            "configuration has been a champion in staging. This keeps the staging run, on a copy of "
            "real documents, as the last rehearsal before users see a change.",
        ],
    ),
    (
        "7. Troubleshooting",
        [
            "<b>A PDF is in quarantine with reason no_text_layer.</b> The file is almost certainly a "
            "scan: its pages are images with no text behind them. llmops-dagster does not run OCR. "
            "Run the file through an OCR tool that adds a text layer, copy the result over the "
            "original, and the next run will move it from quarantine to documents.",
            "<b>I edited a file but nothing was re-indexed.</b> Check that the content really "
            "changed. The scan compares SHA-256 hashes, so saving a file without edits, or restoring "
            "an identical copy, counts as unchanged. Also check the name: files whose name starts "
            "with a dot and anything under questions/ are never ingested.",
            "<b>The run fails with \u201cembedding model is not a local model directory\u201d.</b> "
            "The embedding.model setting must be a path to a folder with a config.json; model hub "
            "names are not resolved because no network access is assumed. Leave the setting at null "
            "to use the packaged all-MiniLM-L6-v2.",
            "<b>Setting chunk_tokens to 300 is rejected.</b> The chunker refuses sizes that do not "
            "fit the model's window. For all-MiniLM-L6-v2 the window is 256 tokens including [CLS] "
            "and [SEP], so the largest accepted value is 254. The limit exists because a longer "
            "chunk would be truncated silently at embedding time and its tail would never be "
            "searchable.",
            "<b>The ann_recall check failed.</b> Recall@10 of the IVF_PQ index fell below 0.95. "
            "Raise nprobes (default 32) to search more partitions, or refine_factor (default 10) "
            "to re-rank more candidates on the full vectors; both cost some latency. If the table "
            "only recently crossed 20,000 rows, raising ann_min_rows keeps exact search for longer.",
            "<b>Search returns passages from a deleted file.</b> Deletions take effect on the next "
            "run. Trigger one with <font face='Courier'>llmops run --env test --landing DIR</font> "
            "or wait for the landing sensor; the chunks and vectors of deleted files are removed in "
            "that run.",
            "<b>Where is the state of the test environment?</b> Under LLMOPS_HOME, by default "
            "<font face='Courier'>.llmops/test</font> for tables and "
            "<font face='Courier'>.llmops/landing/test</font> for the landing zone. Deleting the "
            "folder resets the environment; <font face='Courier'>make demo</font> rebuilds it from "
            "this sample corpus.",
            "<b>A prod promotion is stuck.</b> The challenger passed its gates but nobody approved "
            "it. Find the version number in the run log or the MLflow registry and run "
            "<font face='Courier'>llmops approve --env prod --version N</font>. To undo a promotion "
            "that went wrong, run <font face='Courier'>llmops rollback --env prod</font>.",
            "<b>Which tests should pass before a release?</b> <font face='Courier'>make test</font> "
            "runs the unit and integration tests, including an end-to-end run over this sample "
            "corpus in a temporary LLMOPS_HOME.",
        ],
    ),
]


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    body = ParagraphStyle(
        "Body", parent=base["BodyText"], fontName="Helvetica", fontSize=10.5, leading=14.5,
        alignment=TA_LEFT, spaceAfter=7,
    )
    return {
        "title": ParagraphStyle(
            "GuideTitle", parent=base["Title"], fontName="Helvetica-Bold", fontSize=22, leading=27, spaceAfter=6
        ),
        "subtitle": ParagraphStyle("Subtitle", parent=body, fontSize=11, textColor="#555555", spaceAfter=16),
        "heading": ParagraphStyle(
            "Heading1", parent=base["Heading1"], fontName="Helvetica-Bold", fontSize=15, leading=19,
            spaceBefore=12, spaceAfter=8, keepWithNext=1,
        ),
        "body": body,
    }


class GuideDocTemplate(SimpleDocTemplate):
    """Adds an outline entry (bookmark) for every section heading, and a footer on every page."""

    def afterPage(self) -> None:
        # Drawn at the end of the page, so the footer comes after the body in extracted text.
        _footer(self.canv, self)

    def afterFlowable(self, flowable: object) -> None:
        if isinstance(flowable, Paragraph) and flowable.style.name == "Heading1":
            text = flowable.getPlainText()
            key = "section-" + text.split(".", 1)[0].strip()
            self.canv.bookmarkPage(key)
            self.canv.addOutlineEntry(text, key, level=0, closed=False)


def _footer(canv, doc) -> None:  # noqa: ANN001
    canv.saveState()
    canv.setFont("Helvetica", 8.5)
    canv.setFillGray(0.4)
    canv.drawString(doc.leftMargin, 12 * mm, TITLE)
    canv.drawRightString(doc.pagesize[0] - doc.rightMargin, 12 * mm, f"Page {doc.page}")
    canv.restoreState()


def _first_page(canv, doc) -> None:  # noqa: ANN001
    canv.showOutline()  # open the bookmarks panel in viewers that honour /PageMode


def build(output: Path = OUTPUT) -> Path:
    styles = _styles()
    output.parent.mkdir(parents=True, exist_ok=True)
    doc = GuideDocTemplate(
        str(output),
        pagesize=A4,
        leftMargin=22 * mm,
        rightMargin=22 * mm,
        topMargin=20 * mm,
        bottomMargin=22 * mm,
        title=TITLE,
        author="llmops-dagster contributors",
        subject="Operating the llmops-dagster RAG platform: environments, ingestion, indexing, promotion",
        creator="scripts/build_sample_pdf.py (reportlab)",
        keywords="llmops, dagster, RAG, LanceDB, MLflow, operations",
        invariant=1,
    )
    story = [
        Paragraph(TITLE, styles["title"]),
        Paragraph("Running ingestion, search and model promotion across test, staging and prod", styles["subtitle"]),
    ]
    story += [Paragraph(text, styles["body"]) for text in INTRO]
    for heading, paragraphs in SECTIONS:
        story.append(Paragraph(heading, styles["heading"]))
        story += [Paragraph(text, styles["body"]) for text in paragraphs]
    story.append(Spacer(1, 6))
    doc.build(story, onFirstPage=_first_page)
    return output


def main() -> int:
    path = build()
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
