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

from kiln.compiler.artifact import version
from kiln.errors import InputError
from kiln.files import folder_sha256, sha256_file
from kiln.settings import part_of_the_build

_TOOLS = ("kiln-ml", "apache-tvm", "apache-tvm-ffi", "onnx", "treelite", "tl2cgen")


def fingerprint(model: Path, options: Any) -> str:
    payload = {
        "model": content_sha256(model),
        "options": _encode(options),
        "tools": {name: version(name) for name in _TOOLS},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        return folder_sha256(path)
    raise InputError(f"{path}: no such file or folder")


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)
                if part_of_the_build(f)}  # each options dataclass marks where-to-work fields build=False
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
