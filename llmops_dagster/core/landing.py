"""The landing zone: which files are there, what their content hash is, and what changed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Question files for evaluation and batch prediction live here; they are not documents.
QUESTIONS_DIR = "questions"


@dataclass(frozen=True)
class LandingFile:
    path: str  # relative to the landing root, POSIX separators
    size_bytes: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class LandingDiff:
    added: list[LandingFile]
    changed: list[LandingFile]
    unchanged: list[LandingFile]
    deleted: list[str]

    @property
    def to_parse(self) -> list[LandingFile]:
        return self.added + self.changed

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.changed or self.deleted)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_document_path(relative: Path) -> bool:
    """Hidden files and folders (editor swap files, partial uploads) and questions/ are not documents."""
    parts = relative.parts
    return not any(part.startswith(".") for part in parts) and parts[0] != QUESTIONS_DIR


def _walk(root: Path) -> list[Path]:
    """Every entry under ``root`` that is not a folder, following linked folders.

    A linked folder is walked like any other (a docs tree linked into the landing zone is the
    usual case), unless it links back to a folder above it, which would never end. A link whose
    target is missing is listed too, so that it is quarantined rather than silently left out.
    """
    found: list[Path] = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        above = {os.path.realpath(folder)} | {os.path.realpath(p) for p in Path(folder).parents}
        subfolders[:] = [
            name for name in subfolders if not name.startswith(".") and os.path.realpath(os.path.join(folder, name)) not in above
        ]
        found.extend(Path(folder) / name for name in names)
    return sorted(found)


def is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def list_paths(root: Path) -> list[str]:
    """Relative POSIX paths of every document file under ``root`` (broken links included), sorted."""
    if not root.is_dir():
        return []
    return [
        path.relative_to(root).as_posix()
        for path in _walk(root)
        if (path.is_file() or is_broken_link(path)) and is_document_path(path.relative_to(root))
    ]


def scan(root: Path, known: Mapping[str, LandingFile] | None = None) -> list[LandingFile]:
    """Every document file under ``root`` with its hash, sorted by path.

    A file whose size and mtime match ``known`` keeps its recorded hash instead of being read again.
    A broken link has no content: its size is 0 and its hash is that of its target's name, so it
    reads as changed once the target appears.
    """
    known = known or {}
    files = []
    for key in list_paths(root):
        path = root / key
        try:
            stat = path.stat()
        except FileNotFoundError:
            if not is_broken_link(path):
                continue  # removed while we looked: the next scan records the deletion
            target = os.readlink(path)
            files.append(LandingFile(key, 0, path.lstat().st_mtime_ns, hashlib.sha256(f"link to {target}".encode()).hexdigest()))
            continue
        previous = known.get(key)
        if previous and previous.size_bytes == stat.st_size and previous.mtime_ns == stat.st_mtime_ns:
            sha = previous.sha256
        else:
            sha = file_sha256(path)
        files.append(LandingFile(key, stat.st_size, stat.st_mtime_ns, sha))
    return files


def diff(current: list[LandingFile], known: Mapping[str, LandingFile]) -> LandingDiff:
    added, changed, unchanged = [], [], []
    for item in current:
        previous = known.get(item.path)
        if previous is None:
            added.append(item)
        elif previous.sha256 != item.sha256:
            changed.append(item)
        else:
            unchanged.append(item)
    present = {item.path for item in current}
    deleted = sorted(path for path in known if path not in present)
    return LandingDiff(added, changed, unchanged, deleted)


def manifest_digest(files: list[LandingFile]) -> str:
    """One hash for the whole landing zone's content: a natural run key."""
    digest = hashlib.sha256()
    for item in files:
        digest.update(f"{item.path}\0{item.sha256}\n".encode())
    return digest.hexdigest()
