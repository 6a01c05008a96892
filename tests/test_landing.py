"""Landing zone: what is a document, the size+mtime hash shortcut, diffs and the manifest digest."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

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
