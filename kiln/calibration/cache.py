"""The calibration cache: ranges saved as JSON under a key that hashes graph, data and settings.

A file `<cache dir>/calib-<key>.json` per key. The key is the sha256 of the serialized float
graph, the digest of the calibration files (and image preprocessing), and every setting that
changes the ranges (method, percentile, bins, sample count, seed); any change gives a new key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.calibration.observers import TensorRange
from kiln.errors import InputError
from kiln.files import atomic_write

if TYPE_CHECKING:
    import onnx

DEFAULT_DIR = ".kiln-cache"
FORMAT = 1


def cache_key(model: "onnx.ModelProto", data_digest: str, settings: dict) -> str:
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(model.SerializeToString(deterministic=True)).digest())
    digest.update(data_digest.encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"calib-{key}.json"


def load(path: Path) -> dict[str, TensorRange] | None:
    """The cached ranges, or None when there are none (a damaged file counts as none)."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            return None
        return {name: TensorRange(*bounds) for name, bounds in data["ranges"].items()}
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None


class CacheWriteError(InputError):
    """The cache folder cannot be written; the caller names the setting that chose it."""


def save(path: Path, ranges: dict[str, TensorRange]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": FORMAT, "ranges": {n: r.to_json() for n, r in ranges.items()}}, indent=1)
        atomic_write(path, text)
    except OSError as exc:
        raise CacheWriteError(f"cannot write the calibration cache {path}: {exc}") from exc
