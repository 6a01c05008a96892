"""The landing zone: which files are there, what their content hash is, and what changed."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK

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
    """Every entry under ``root`` that is not a folder it can list, following linked folders.

    A linked folder is walked like any other (a docs tree linked into the landing zone is the
    usual case), unless it links back to a folder above it, which would never end. A link whose
    target is missing, a special file (a named pipe, a socket) and a folder that cannot be listed
    are listed too, so that each is quarantined rather than silently left out.
    """
    found: list[Path] = []

    def unlisted(error: OSError) -> None:
        if error.filename and Path(error.filename) != root:
            found.append(Path(error.filename))

    for folder, subfolders, names in os.walk(root, onerror=unlisted, followlinks=True):
        above = {os.path.realpath(folder)} | {os.path.realpath(p) for p in Path(folder).parents}
        subfolders[:] = [
            name for name in subfolders if not name.startswith(".") and os.path.realpath(os.path.join(folder, name)) not in above
        ]
        found.extend(Path(folder) / name for name in names)
    return sorted(found)


def is_broken_link(path: Path) -> bool:
    """A link whose target is missing, or that leads back to itself."""
    try:
        return path.is_symlink() and not path.exists()
    except OSError:  # its folder cannot be searched: not known to be a link
        return False


SPECIAL_KINDS = ((S_ISDIR, "folder"), (S_ISFIFO, "named pipe"), (S_ISSOCK, "socket"), (S_ISCHR, "character device"), (S_ISBLK, "block device"))


def special_kind(mode: int) -> str | None:
    """What an entry is where it is not a regular file ("named pipe"), from its ``st_mode``."""
    if S_ISREG(mode):
        return None
    return next((name for test, name in SPECIAL_KINDS if test(mode)), "special file")


def list_paths(root: Path) -> list[str]:
    """Relative POSIX paths of every document entry under ``root``, sorted: files, and what cannot
    be a document but must not go unnoticed (broken links, special files, unreadable folders)."""
    if not root.is_dir():
        return []
    return [path.relative_to(root).as_posix() for path in _walk(root) if is_document_path(path.relative_to(root))]


def unreadable(reason: str) -> str:
    """The content hash of an entry that has no content to hash: its reason, so it changes with it."""
    return hashlib.sha256(reason.encode()).hexdigest()


def scan(root: Path, known: Mapping[str, LandingFile] | None = None) -> list[LandingFile]:
    """Every document entry under ``root`` with its hash, sorted by path.

    A file whose size and mtime match ``known`` keeps its recorded hash instead of being read again.
    An entry with no content to read has the hash of what it is instead, so it reads as changed
    once that changes: a broken link, that of its target's name (size 0); a special file or a folder
    that cannot be listed, that of its kind (size 0); a file that cannot be read, that of the error
    (mtime -1, so that it is tried again on every scan rather than matched by size and mtime).
    """
    known = known or {}
    files = []
    for key in list_paths(root):
        path = root / key
        try:
            stat = path.stat()
        except OSError as error:
            if is_broken_link(path):  # a missing target, or a loop of links
                target = os.readlink(path)
                files.append(LandingFile(key, 0, path.lstat().st_mtime_ns, unreadable(f"link to {target}")))
            elif not isinstance(error, FileNotFoundError):
                files.append(_unreadable_file(key, error))
            continue  # else removed while we looked: the next scan records the deletion
        if (kind := special_kind(stat.st_mode)) is not None:
            files.append(LandingFile(key, 0, stat.st_mtime_ns, unreadable(kind)))
            continue
        previous = known.get(key)
        if previous and previous.size_bytes == stat.st_size and previous.mtime_ns == stat.st_mtime_ns:
            files.append(previous)
            continue
        try:
            files.append(LandingFile(key, stat.st_size, stat.st_mtime_ns, file_sha256(path)))
        except FileNotFoundError:
            continue
        except OSError as error:
            files.append(_unreadable_file(key, error))
    return files


def _unreadable_file(key: str, error: OSError) -> LandingFile:
    """A file the scan may not read: the hash of the error, and mtime -1 so that no size-and-mtime
    match skips trying it again."""
    return LandingFile(key, 0, -1, unreadable(f"cannot be read: {error.strerror}"))


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
