"""XGBoost model files read into Python objects, so that they are checked before treelite reads them.

JSON is read by the json module. UBJSON (XGBoost's binary JSON) and the legacy binary format are read
here, the legacy format into the fields of the JSON form (left_children, split_indices, ...), so that
one check covers the three. Readers never trust a length or count: each is checked against the bytes
left before anything is allocated.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from kiln.compiler.frontends.source_format import SourceFormat


class Unreadable(ValueError):
    """The bytes are not the format they were detected as (the message says where)."""


def read_xgboost(data: bytes, source_format: SourceFormat) -> dict[str, Any]:
    """The model document of an XGBoost JSON, UBJSON or legacy binary file's bytes, as JSON would hold it."""
    if source_format is SourceFormat.XGBOOST_JSON:
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than any model's
            raise Unreadable(str(exc).splitlines()[0]) from exc
    elif source_format is SourceFormat.XGBOOST_UBJSON:
        document = _UBJSONReader(data).document()
    else:
        document = _legacy_binary(data)
    if not isinstance(document, dict):
        raise Unreadable("the file holds no JSON object")
    return document


# UBJSON's numeric types, big-endian, in struct's (and numpy's) notation
_UBJSON_NUMBERS = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q", b"d": ">f", b"D": ">d"}
# An XGBoost model nests 6 containers deep; a hostile file must not exhaust Python's stack.
_MAX_NESTING = 32


class _UBJSONReader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def document(self) -> Any:
        return self.value(self.marker(), 0)

    def take(self, size: int) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise Unreadable(f"the data ends early (needs {size} bytes at byte {self.pos} of {len(self.data)})")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def marker(self) -> bytes:
        marker = self.take(1)
        while marker == b"N":  # UBJSON's no-op
            marker = self.take(1)
        return marker

    def peek(self, marker: bytes) -> bool:
        if self.data[self.pos:self.pos + 1] == marker:
            self.pos += 1
            return True
        return False

    def value(self, marker: bytes, depth: int) -> Any:
        if marker in _UBJSON_NUMBERS:
            fmt = _UBJSON_NUMBERS[marker]
            return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        if marker in (b"S", b"H"):  # H: a number written as a string
            return self.text(self.length())
        if marker == b"C":
            return self.text(1)
        if marker in (b"T", b"F", b"Z"):
            return {b"T": True, b"F": False, b"Z": None}[marker]
        if depth >= _MAX_NESTING:
            raise Unreadable(f"containers nest more than {_MAX_NESTING} deep")
        if marker == b"[":
            return self.array(depth + 1)
        if marker == b"{":
            return self.object(depth + 1)
        raise Unreadable(f"unknown UBJSON marker {marker!r} at byte {self.pos - 1}")

    def text(self, size: int) -> str:
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Unreadable(f"a string before byte {self.pos} is not UTF-8") from exc

    def length(self) -> int:
        marker = self.marker()
        size = self.value(marker, _MAX_NESTING) if marker in _UBJSON_NUMBERS else None
        if not isinstance(size, int) or size < 0:
            raise Unreadable(f"a length or count before byte {self.pos} is not a non-negative integer")
        return size

    def header(self) -> tuple[bytes | None, int | None]:
        """A container's element type and count, where the file gives them."""
        kind = self.take(1) if self.peek(b"$") else None
        count = self.length() if self.peek(b"#") else None
        if kind is not None and count is None:
            raise Unreadable(f"a typed container before byte {self.pos} has no count")
        if count is not None and kind not in _UBJSON_NUMBERS and count > len(self.data) - self.pos:
            # every such element takes a byte at least: a larger count is a lie, not a size to allocate
            raise Unreadable(f"a container before byte {self.pos} claims {count} elements")
        return kind, count

    def array(self, depth: int) -> Any:
        kind, count = self.header()
        if kind in _UBJSON_NUMBERS and count is not None:
            dtype = np.dtype(_UBJSON_NUMBERS[kind])
            if count > (len(self.data) - self.pos) // dtype.itemsize:
                raise Unreadable(f"an array at byte {self.pos} claims {count} elements, past the end of the file")
            return np.frombuffer(self.take(count * dtype.itemsize), dtype)
        if count is None:
            items = []
            while (marker := self.marker()) != b"]":
                items.append(self.value(marker, depth))
            return items
        return [self.value(kind or self.marker(), depth) for _ in range(count)]

    def object(self, depth: int) -> dict[str, Any]:
        kind, count = self.header()
        members: dict[str, Any] = {}
        remaining = count
        while (remaining > 0) if remaining is not None else not self.peek(b"}"):
            key = self.text(self.length())
            members[key] = self.value(kind or self.marker(), depth)
            remaining = None if remaining is None else remaining - 1
        return members


# XGBoost's legacy binary layout (see tests/models/trees/make_models.py, which writes it): LearnerModelParam
# (base_score, num_feature, num_class, contain_extra_attrs, contain_eval_metrics, major_version,
# minor_version, num_target, reserved), the objective's and the booster's names, GBTreeModelParam
# (num_trees, num_roots, num_feature, pad, num_pbuffer, num_output_group, size_leaf_vector, reserved),
# then per tree TreeParam (num_roots, num_nodes, num_deleted, max_depth, num_feature, size_leaf_vector,
# reserved), its nodes and their statistics; then tree_info, and for dart the trees' weight_drop.
_LEARNER = struct.Struct("<fIiiiIII26i")
_GBTREE = struct.Struct("<iiiiqii32i")
_TREE = struct.Struct("<6i31i")
# A node's parent has its top bit set for a left child; sindex holds default_left in its top bit.
_NODE = np.dtype([("parent", "<u4"), ("left", "<i4"), ("right", "<i4"), ("sindex", "<u4"), ("value", "<f4")])
_STAT_BYTES = 16
_LOW_31_BITS = 0x7FFFFFFF


class _Bytes:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise Unreadable(f"the file ends inside the {what} (byte {self.pos} of {len(self.data)})")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, layout: struct.Struct, what: str) -> tuple:
        return layout.unpack(self.take(layout.size, what))

    def name(self, what: str) -> str:
        (size,) = struct.unpack("<Q", self.take(8, what))
        return self.take(size, what).decode("ascii", errors="replace")

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        dtype = np.dtype(dtype)
        if count < 0 or count > (len(self.data) - self.pos) // dtype.itemsize:
            raise Unreadable(f"the file ends inside the {what} ({count} entries claimed at byte {self.pos})")
        return np.frombuffer(self.take(count * dtype.itemsize, what), dtype)


def _legacy_binary(data: bytes) -> dict[str, Any]:
    stream = _Bytes(data)
    _, num_feature, num_class, _, _, major, _, num_target, *_ = stream.unpack(_LEARNER, "model header")
    objective, booster = stream.name("objective name"), stream.name("booster name")
    num_trees, _, _, _, _, _, _, *_ = stream.unpack(_GBTREE, "booster header")
    if num_trees < 0:
        raise Unreadable(f"the booster header claims {num_trees} trees")
    trees = [_legacy_tree(stream, index, major) for index in range(num_trees)]
    model = {"gbtree_model_param": {"num_trees": str(num_trees), "num_parallel_tree": "1"},
             "tree_info": stream.array("<i4", num_trees, "tree_info"), "trees": trees}
    params = {"num_feature": str(num_feature), "num_class": str(num_class), "num_target": str(num_target or 1)}
    gradient_booster: dict[str, Any] = {"name": booster, "model": model}
    if booster == "dart":
        (count,) = struct.unpack("<Q", stream.take(8, "weight_drop"))
        gradient_booster = {"name": "dart", "gbtree": {"name": "gbtree", "model": model},
                            "weight_drop": stream.array("<f4", count, "weight_drop")}
    return {"learner": {"learner_model_param": params, "objective": {"name": objective},
                        "gradient_booster": gradient_booster}}


def _legacy_tree(stream: _Bytes, index: int, major: int) -> dict[str, Any]:
    what = f"tree {index}"
    _, num_nodes, num_deleted, _, num_feature, size_leaf_vector, *_ = stream.unpack(_TREE, what)
    nodes = stream.array(_NODE, num_nodes, what)
    stream.array(np.uint8, num_nodes * _STAT_BYTES, what)
    if size_leaf_vector != 0 and major < 2:  # as treelite reads it: a length, then that many floats
        (count,) = struct.unpack("<Q", stream.take(8, what))
        stream.array("<f4", count, what)
    return {"id": index,
            "tree_param": {"num_nodes": str(num_nodes), "num_deleted": str(num_deleted),
                           "num_feature": str(num_feature), "size_leaf_vector": str(size_leaf_vector)},
            "left_children": nodes["left"], "right_children": nodes["right"],
            "parents": nodes["parent"] & _LOW_31_BITS, "split_indices": nodes["sindex"] & _LOW_31_BITS,
            "default_left": nodes["sindex"] >> 31, "split_conditions": nodes["value"]}
