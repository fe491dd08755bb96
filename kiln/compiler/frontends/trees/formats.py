"""Which tree-model format a file holds, told from its bytes (never from its name)."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from kiln.compiler.frontends.source_format import SourceFormat
from kiln.errors import InputError

_SNIFF_BYTES = 4096
_PICKLE_PROTOCOLS = range(2, 6)
# joblib writes compressed pickles with these codecs' own headers: zlib, gzip, bz2, xz.
_COMPRESSED = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"\x1f\x8b", b"BZh", b"\xfd7zXZ")
_UBJSON_MARKERS = b"iUIlLSH$#"
# XGBoost's legacy binary format: a 136-byte LearnerModelParam, then the objective's name and the
# booster's name as (uint64 length, bytes) pairs.
_LEGACY_PARAM_BYTES = 136
_XGBOOST_BOOSTERS = (b"gbtree", b"dart")


def detect_tree_format(path: Path) -> SourceFormat | None:
    """The tree format of `path`, None when it is not a tree model, or an InputError when it is a
    near miss (JSON that is not an XGBoost model)."""
    with open(path, "rb") as stream:
        head = stream.read(_SNIFF_BYTES)
    if (len(head) > 1 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS) or head.startswith(_COMPRESSED):
        return SourceFormat.SKLEARN_PICKLE
    if head.startswith(b"PK\x03\x04"):
        return SourceFormat.SKOPS if _is_skops(path) else None
    if head.startswith((b"tree\n", b"tree\r\n")):
        return SourceFormat.LIGHTGBM
    if head[:1] == b"{" and head[1:2] in (b"L", b"i", b"U", b"I", b"l") and b"learner" in head[:64]:
        return SourceFormat.XGBOOST_UBJSON
    text = head.lstrip()
    if text[:1] == b"{":
        if b'"learner"' in head:
            return SourceFormat.XGBOOST_JSON
        raise InputError(f"{path}: a JSON file, but not an XGBoost model (no \"learner\" object); "
                         "save XGBoost models with Booster.save_model")
    if _is_xgboost_legacy_binary(head):
        return SourceFormat.XGBOOST_BINARY
    return None


def _is_skops(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "schema.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError, EOFError):  # a zip zipfile cannot read
        return False


def _is_xgboost_legacy_binary(head: bytes) -> bool:
    offset = _LEGACY_PARAM_BYTES
    names = []
    for _ in range(2):
        if len(head) < offset + 8:
            return False
        (length,) = struct.unpack_from("<Q", head, offset)
        name = head[offset + 8: offset + 8 + length]
        if not 0 < length <= 64 or len(name) != length or not name.isascii():
            return False
        names.append(name)
        offset += 8 + length
    return names[1] in _XGBOOST_BOOSTERS
