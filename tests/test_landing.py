"""Landing zone: what is a document, the size+mtime hash shortcut, diffs and the manifest digest."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from llmops_dagster.core.landing import (
    QUESTIONS_DIR,
    LandingDiff,
    LandingFile,
    diff,
    file_sha256,
    is_document_path,
    list_paths,
    manifest_digest,
    scan,
)

FAKE_SHA = "f" * 64


def write(root: Path, relative: str, content: bytes | str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def sha(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def by_path(files: list[LandingFile]) -> dict[str, LandingFile]:
    return {item.path: item for item in files}


def make_landing(root: Path) -> None:
    write(root, "guide.pdf", "pdf bytes")
    write(root, "notes/a.md", "# A")
    write(root, "notes/deeper/b.txt", "b")
    write(root, "questions/eval.jsonl", '{"q": "?"}')  # question files are not documents
    write(root, "questions/sub/more.jsonl", "{}")
    write(root, ".hidden.txt", "hidden")
    write(root, ".git/config", "[core]")
    write(root, "notes/.a.md.swp", "swap")
    write(root, "notes/.partial/upload.pdf", "partial")
    write(root, "archive/questions/old.txt", "a nested questions/ folder is an ordinary folder")


def test_hidden_files_and_questions_are_not_documents(tmp_path: Path) -> None:
    make_landing(tmp_path)
    expected = ["archive/questions/old.txt", "guide.pdf", "notes/a.md", "notes/deeper/b.txt"]
    assert list_paths(tmp_path) == expected
    assert [item.path for item in scan(tmp_path)] == expected


def test_is_document_path() -> None:
    assert QUESTIONS_DIR == "questions"
    assert is_document_path(Path("a.pdf"))
    assert is_document_path(Path("sub/dir/a.pdf"))
    assert is_document_path(Path("questions.txt"))
    assert is_document_path(Path("docs/questions/q.txt"))
    assert not is_document_path(Path("questions/q.jsonl"))
    assert not is_document_path(Path(".env"))
    assert not is_document_path(Path("a/.cache/b.txt"))
    assert not is_document_path(Path("a/b/.~lock.doc#"))


def test_missing_or_empty_root(tmp_path: Path) -> None:
    assert list_paths(tmp_path / "nope") == []
    assert scan(tmp_path / "nope") == []
    assert scan(tmp_path) == []
    write(tmp_path, "file-not-dir", "x")
    assert list_paths(tmp_path / "file-not-dir") == []


def test_scan_records_size_mtime_and_content_hash(tmp_path: Path) -> None:
    path = write(tmp_path, "docs/report.txt", "hello landing zone")
    set_mtime(path, 1_700_000_000_123_456_789)
    (item,) = scan(tmp_path)
    assert item == LandingFile("docs/report.txt", 18, 1_700_000_000_123_456_789, sha("hello landing zone"))
    assert file_sha256(path) == item.sha256


def test_file_sha256_of_a_multi_block_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 2 MiB: several 1 MiB reads
    path = write(tmp_path, "big.bin", data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_unchanged_size_and_mtime_reuse_the_known_hash(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "real content")
    (real,) = scan(tmp_path)
    known = {"a.txt": dataclasses.replace(real, sha256=FAKE_SHA)}
    # Same size and mtime: the file is not read again, so the (fake) recorded hash comes back.
    (item,) = scan(tmp_path, known)
    assert item.sha256 == FAKE_SHA
    assert diff([item], known).unchanged == [item]

    # Same size, different mtime: hashed again.
    set_mtime(path, real.mtime_ns + 1_000_000_000)
    (item,) = scan(tmp_path, known)
    assert item.sha256 == sha("real content")

    # Same mtime, different size: hashed again.
    write(tmp_path, "a.txt", "real content, longer")
    set_mtime(path, real.mtime_ns)
    (item,) = scan(tmp_path, known)
    assert item.sha256 == sha("real content, longer") and item.size_bytes == len("real content, longer")


def test_known_entries_for_other_paths_are_not_used(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "A")
    (real,) = scan(tmp_path)
    known = {"b.txt": dataclasses.replace(real, path="b.txt", sha256=FAKE_SHA)}
    assert scan(tmp_path, known)[0].sha256 == sha("A")


def test_content_change_with_restored_size_and_mtime_is_missed_by_design(tmp_path: Path) -> None:
    # The shortcut trusts size+mtime: a same-size edit that restores the mtime keeps the old hash.
    path = write(tmp_path, "a.txt", "aaaa")
    (before,) = scan(tmp_path)
    write(tmp_path, "a.txt", "bbbb")
    set_mtime(path, before.mtime_ns)
    assert scan(tmp_path, {"a.txt": before})[0].sha256 == before.sha256
    assert scan(tmp_path)[0].sha256 == sha("bbbb"), "without `known` the content is always read"


def test_diff_classifies_added_changed_unchanged_deleted(tmp_path: Path) -> None:
    write(tmp_path, "same.txt", "same")
    write(tmp_path, "edit.txt", "old")
    write(tmp_path, "gone.txt", "bye")
    write(tmp_path, "sub/gone-too.md", "bye")
    known = by_path(scan(tmp_path))

    write(tmp_path, "edit.txt", "new content")
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "sub/gone-too.md").unlink()
    write(tmp_path, "new.pdf", "fresh")
    write(tmp_path, "a-new.txt", "fresh too")
    current = scan(tmp_path, known)
    result = diff(current, known)

    assert isinstance(result, LandingDiff)
    assert [f.path for f in result.added] == ["a-new.txt", "new.pdf"]
    assert [f.path for f in result.changed] == ["edit.txt"]
    assert [f.path for f in result.unchanged] == ["same.txt"]
    assert result.deleted == ["gone.txt", "sub/gone-too.md"]
    assert [f.path for f in result.to_parse] == ["a-new.txt", "new.pdf", "edit.txt"]
    assert result.changed[0].sha256 == sha("new content")
    assert not result.is_empty


def test_touch_without_change_is_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "content")
    known = by_path(scan(tmp_path))
    set_mtime(path, known["a.txt"].mtime_ns + 5_000_000_000)
    result = diff(scan(tmp_path, known), known)
    assert result.is_empty
    assert [f.path for f in result.unchanged] == ["a.txt"]
    assert result.to_parse == []


def test_diff_of_nothing_and_everything(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "A")
    write(tmp_path, "b.txt", "B")
    current = scan(tmp_path)
    first = diff(current, {})
    assert [f.path for f in first.added] == ["a.txt", "b.txt"] and not first.is_empty
    assert diff([], {}).is_empty
    gone = diff([], by_path(current))
    assert gone.deleted == ["a.txt", "b.txt"] and not gone.is_empty


def test_rename_is_a_delete_plus_an_add(tmp_path: Path) -> None:
    write(tmp_path, "old-name.txt", "same bytes")
    known = by_path(scan(tmp_path))
    (tmp_path / "old-name.txt").rename(tmp_path / "new-name.txt")
    result = diff(scan(tmp_path, known), known)
    assert [f.path for f in result.added] == ["new-name.txt"]
    assert result.deleted == ["old-name.txt"]
    assert result.added[0].sha256 == known["old-name.txt"].sha256


def test_manifest_digest_follows_content_not_metadata(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "one")
    write(tmp_path, "b/c.md", "two")
    first = manifest_digest(scan(tmp_path))
    assert len(first) == 64 and int(first, 16) >= 0
    assert manifest_digest(scan(tmp_path)) == first, "stable"

    set_mtime(path, 1_600_000_000_000_000_000)
    assert manifest_digest(scan(tmp_path)) == first, "a touch is not a change"

    write(tmp_path, "a.txt", "ONE")
    changed = manifest_digest(scan(tmp_path))
    assert changed != first

    write(tmp_path, "a.txt", "one")
    assert manifest_digest(scan(tmp_path)) == first, "same content, same digest"

    write(tmp_path, "d.txt", "three")
    added = manifest_digest(scan(tmp_path))
    assert added not in (first, changed)
    (tmp_path / "d.txt").unlink()
    (tmp_path / "a.txt").rename(tmp_path / "a2.txt")
    assert manifest_digest(scan(tmp_path)) not in (first, changed, added), "a rename changes the digest"
    # Hidden files and questions never affect it.
    write(tmp_path, "questions/q.jsonl", "{}")
    write(tmp_path, ".tmp-upload", "partial")
    (tmp_path / "a2.txt").rename(tmp_path / "a.txt")
    assert manifest_digest(scan(tmp_path)) == first


def test_manifest_digest_of_nothing_and_path_content_boundaries() -> None:
    assert manifest_digest([]) == hashlib.sha256().hexdigest()
    one = [LandingFile("ab", 1, 0, "c")]
    other = [LandingFile("a", 1, 0, "bc")]
    assert manifest_digest(one) != manifest_digest(other)


# --- links ----------------------------------------------------------------------------------------


def test_linked_folders_are_walked_and_a_link_back_up_is_not_followed(tmp_path: Path) -> None:
    shared = tmp_path / "shared-docs"
    write(shared, "manual.md", "# Manual")
    write(shared, "deep/part.txt", "part")
    root = tmp_path / "landing"
    write(root, "own.txt", "own")
    (root / "team").symlink_to(shared, target_is_directory=True)
    (shared / "deep" / "loop").symlink_to(shared, target_is_directory=True)  # back up: would never end
    (root / "self").symlink_to(root, target_is_directory=True)
    assert list_paths(root) == ["own.txt", "team/deep/part.txt", "team/manual.md"]


def test_a_broken_link_is_listed_with_its_target_as_content_and_reads_as_changed_once_fixed(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    write(root, "a.txt", "a")
    (root / "gone.md").symlink_to(tmp_path / "moved" / "gone.md")
    assert list_paths(root) == ["a.txt", "gone.md"]
    broken = by_path(scan(root))["gone.md"]
    assert broken.size_bytes == 0 and broken.sha256 == hashlib.sha256(f"link to {tmp_path / 'moved' / 'gone.md'}".encode()).hexdigest()
    write(tmp_path, "moved/gone.md", "# Back")
    fixed = by_path(scan(root, {"gone.md": broken}))["gone.md"]
    assert fixed.sha256 == sha("# Back") and diff([fixed], {"gone.md": broken}).changed == [fixed]


def test_entries_that_are_not_files_are_listed_with_what_they_are_and_never_opened(tmp_path: Path) -> None:
    """A named pipe opened for its hash would wait for a writer forever; a loop of links cannot be
    followed; neither may fail the scan or go unlisted."""
    root = tmp_path / "landing"
    write(root, "a.md", "# A")
    os.mkfifo(root / "pipe.md")
    (root / "loop.md").symlink_to("loop.md")
    assert list_paths(root) == ["a.md", "loop.md", "pipe.md"]
    found = by_path(scan(root))
    assert found["pipe.md"].size_bytes == 0 and found["pipe.md"].sha256 == sha("named pipe")
    assert found["loop.md"].sha256 == sha("link to loop.md")
    assert by_path(scan(root, found)) == found, "the same entries: the same hashes, nothing changed"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file and folder whatever its mode")
def test_an_unreadable_file_or_folder_is_listed_and_reads_as_changed_once_readable(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    secret = write(root, "secret.md", "# Secret")
    write(root, "locked/inner.md", "# Inner")
    secret.chmod(0)
    (root / "locked").chmod(0)
    try:
        found = by_path(scan(root))
        assert sorted(found) == ["locked", "secret.md"]
        assert found["secret.md"].sha256 == sha("cannot be read: Permission denied") and found["secret.md"].mtime_ns == -1
        assert found["locked"].sha256 == sha("folder")
        assert by_path(scan(root, found)) == found
    finally:
        secret.chmod(0o644)
        (root / "locked").chmod(0o755)
    readable = by_path(scan(root, found))
    assert readable["secret.md"].sha256 == sha("# Secret") and sorted(readable) == ["locked/inner.md", "secret.md"]


# --- what ingest looks at again -------------------------------------------------------------------


def _ingest(root: Path, tmp_path: Path, max_bytes: int = 1 << 20):
    from llmops_dagster.core.pipeline import ingest
    from llmops_dagster.core.store import LanceStore

    return ingest(root, LanceStore(str(tmp_path / "lancedb")), max_bytes)


def _stored(tmp_path: Path, table: str) -> dict[str, dict]:
    from llmops_dagster.core import store

    schema = store.DOCUMENTS_SCHEMA if table == store.DOCUMENTS else store.QUARANTINE_SCHEMA
    return {row["path"]: row for row in store.LanceStore(str(tmp_path / "lancedb")).read(table, schema).to_pylist()}


def test_a_file_too_large_is_looked_at_again_once_the_limit_allows_it(tmp_path: Path) -> None:
    from llmops_dagster.core import store

    root = tmp_path / "landing"
    write(root, "big.md", "# Big\n\n" + "word " * 400)
    write(root, "small.md", "# Small\n\nA short note.")
    first = _ingest(root, tmp_path, max_bytes=1000)
    assert (first.documents, first.reasons) == (1, {"too_large": 1})
    assert not _ingest(root, tmp_path, max_bytes=1000).diff.to_parse, "the same limit: nothing to look at again"
    raised = _ingest(root, tmp_path, max_bytes=10_000)
    assert [item.path for item in raised.diff.to_parse] == ["big.md"]
    assert (raised.documents, raised.quarantined) == (2, 0) and "big.md" in _stored(tmp_path, store.DOCUMENTS)


def test_a_document_over_a_lowered_limit_moves_to_quarantine_and_stays_there(tmp_path: Path) -> None:
    from llmops_dagster.core import store

    root = tmp_path / "landing"
    write(root, "big.md", "# Big\n\n" + "word " * 400)
    write(root, "small.md", "# Small\n\nA short note.")
    assert _ingest(root, tmp_path, max_bytes=10_000).documents == 2
    lowered = _ingest(root, tmp_path, max_bytes=1000)
    assert [item.path for item in lowered.diff.to_parse] == ["big.md"]
    assert (lowered.documents, lowered.reasons) == (1, {"too_large": 1})
    assert "big.md" not in _stored(tmp_path, store.DOCUMENTS)
    assert _stored(tmp_path, store.QUARANTINE)["big.md"]["detail"].endswith("over the 1000-byte limit")
    again = _ingest(root, tmp_path, max_bytes=1000)
    assert not again.diff.to_parse and again.documents_write.version == lowered.documents_write.version, "the same limit: no new version"


def test_a_named_pipe_and_a_loop_of_links_are_quarantined_and_the_run_goes_on(tmp_path: Path) -> None:
    from llmops_dagster.core import store
    from llmops_dagster.core.checks import no_files_lost

    root = tmp_path / "landing"
    write(root, "a.md", "# A\n\nA note.")
    os.mkfifo(root / "pipe.md")
    (root / "loop.md").symlink_to("loop.md")
    first = _ingest(root, tmp_path)
    quarantined = _stored(tmp_path, store.QUARANTINE)
    assert (first.landing_files, first.documents) == (3, 1)
    assert {path: (row["reason"], row["detail"]) for path, row in quarantined.items()} == {
        "pipe.md": ("unsupported_type", "a named pipe, not a regular file"),
        "loop.md": ("broken_link", "a link to loop.md, which leads back to itself"),
    }
    assert no_files_lost(set(list_paths(root)), set(_stored(tmp_path, store.DOCUMENTS)), set(quarantined)).passed
    assert not _ingest(root, tmp_path).diff.to_parse
    (root / "pipe.md").unlink()
    write(root, "pipe.md", "# Pipe\n\nA file now.")
    assert _ingest(root, tmp_path).documents == 2


def test_a_broken_link_is_quarantined_and_becomes_a_document_once_its_target_exists(tmp_path: Path) -> None:
    from llmops_dagster.core import store

    root = tmp_path / "landing"
    write(root, "a.md", "# A\n\nA note.")
    (root / "handbook.md").symlink_to(tmp_path / "share" / "handbook.md")
    first = _ingest(root, tmp_path)
    row = _stored(tmp_path, store.QUARANTINE)["handbook.md"]
    assert (first.landing_files, first.documents, row["reason"]) == (2, 1, "broken_link")
    assert row["detail"] == f"a link to {tmp_path / 'share' / 'handbook.md'}, which does not exist"
    write(tmp_path, "share/handbook.md", "# Handbook\n\nOn a share.")
    second = _ingest(root, tmp_path)
    assert (second.documents, second.quarantined) == (2, 0)
    assert _stored(tmp_path, store.DOCUMENTS)["handbook.md"]["title"] == "Handbook"


def test_a_stray_byte_is_repaired_and_recorded_and_a_file_set_aside_by_an_older_release_is_looked_at_again(tmp_path: Path) -> None:
    """A short UTF-8 file with one bad byte was quarantined as undecodable by the release before;
    today it is a document whose ``warnings`` say what was replaced."""
    import lancedb
    import pyarrow as pa

    from llmops_dagster.core import store

    root = tmp_path / "landing"
    write(root, "café.md", "# Café\n\nNaïve café in Zürich, ".encode() + b"\xa4 10.")
    _ingest(root, tmp_path)
    docs = _stored(tmp_path, store.DOCUMENTS)
    assert docs["café.md"]["warnings"] == ["1 byte sequence that is not UTF-8 replaced by U+FFFD"]
    assert "Naïve café in Zürich, \ufffd 10." in docs["café.md"]["text"]

    # The quarantine table of the release before: no parser column, this file in it.
    old_schema = pa.schema([f for f in store.QUARANTINE_SCHEMA if f.name != "parser"])
    row = {k: v for k, v in docs["café.md"].items() if k in old_schema.names}
    old_row = {**row, "reason": "undecodable", "detail": "no text encoding fits the bytes", "quarantined_at": docs["café.md"]["ingested_at"]}
    database = lancedb.connect(str(tmp_path / "lancedb"))
    database.create_table(store.QUARANTINE, pa.Table.from_pylist([old_row], old_schema), mode="overwrite")
    database.open_table(store.DOCUMENTS).delete("true")
    again = _ingest(root, tmp_path)
    assert [item.path for item in again.diff.to_parse] == ["café.md"]
    assert (again.documents, again.quarantined, again.repaired) == (1, 0, 1)
