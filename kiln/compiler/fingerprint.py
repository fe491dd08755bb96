"""A build's fingerprint: content hashes of every input file, the settings, the target and tool versions.

Two builds with the same fingerprint produce the same artifact, so a matching fingerprint in an
artifact's manifest means it is up to date.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from pathlib import Path
from typing import Any

from kiln.compiler.graph import sha256_file
from kiln.errors import InputError

# Settings that say where to write or how to show progress, not what to build.
_NOT_PART_OF_THE_BUILD = frozenset({"output", "cache_dir", "progress_bar"})
_TOOLS = ("kiln-ml", "apache-tvm", "apache-tvm-ffi", "onnx", "treelite", "tl2cgen")


def fingerprint(model: Path, options: Any) -> str:
    from kiln.compiler.artifact import _version

    payload = {
        "model": content_sha256(model),
        "options": _encode(options),
        "tools": {name: _version(name) for name in _TOOLS},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
        return digest.hexdigest()
    raise InputError(f"{path}: no such file or folder")


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name not in _NOT_PART_OF_THE_BUILD}
    if isinstance(value, Path):
        return content_sha256(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        items = [_encode(v) for v in value]
        return sorted(items, key=json.dumps) if isinstance(value, (set, frozenset)) else items
    return value
