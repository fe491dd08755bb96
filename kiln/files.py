"""File chores: writing a file atomically, and the sha256 of a file or of a folder's files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A new empty file beside `path` to write into; when the block ends without an error it replaces
    `path`, so readers see the old file or the new one, never part of one. It is always removed on an error.

    For writers that take a path (`onnx.save_model`); `atomic_write` writes bytes or text.
    """
    tmp = _new_file_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` completely or not at all (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)


def _new_file_beside(path: Path) -> Path:
    """A hidden `.NAME.XXXXXXXX.partial` file created in `path`'s folder (same file system, so the rename is
    atomic) with the permissions the umask gives any new file, unlike tempfile.mkstemp's 0600."""
    for _ in range(8):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {path}")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def folder_sha256(root: Path, files: Iterable[Path] | None = None) -> str:
    """sha256 of files' names (relative to `root`) and contents, in order: every file below the folder
    `root` in sorted order, or the given `files`. A `files` entry that is `root` itself counts under its name."""
    digest = hashlib.sha256()
    chosen = sorted(p for p in root.rglob("*") if p.is_file()) if files is None else files
    for file in chosen:
        name = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(f"{name}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()
