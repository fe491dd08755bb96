"""Read the `.params` NDArray-list file that MXNet 1.x writes (`mx.nd.save`, Gluon `export`), without MXNet.

Layout (little-endian): uint64 magic 0x112, uint64 reserved, uint64 array count, the arrays, uint64
name count, the names (uint64 length + UTF-8 bytes). An array is: uint32 magic (V1 0xF993FAC8;
V2 0xF993FAC9, classic shapes; V3 0xF993FACA, NumPy shapes), int32 storage type (V2/V3 only; 0 =
dense), the shape (int32 ndim + int64 dims), int32 device type + int32 device id, int32 dtype flag,
then the data. A V1/V2 shape of ndim 0, and a V3 shape of ndim -1, mark an empty ("none") array
with nothing after it.

Every count and size is checked against the bytes left in the file before anything is allocated.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from kiln.errors import InputError

LIST_MAGIC = 0x112
_V1, _V2, _V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
_DENSE = 0
_MAX_NDIM = 32
_NAME_PREFIXES = ("arg:", "aux:")

# mshadow type flags -> NumPy dtypes (kFloat32, kFloat64, kFloat16, kUint8, kInt32, kInt8, kInt64, kBool).
DTYPES = {0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8", 6: "int64", 7: "bool"}


class _Reader:
    """A bounds-checked cursor over the file's bytes."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.offset = memoryview(data), path, 0

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.path}: not a valid MXNet .params file: {what} (at byte {self.offset} of "
                          f"{len(self.data)}); is it truncated or corrupted? Re-export it with MXNet's "
                          "`export` or `mx.nd.save`.")

    def take(self, size: int, what: str) -> memoryview:
        if size < 0 or size > len(self.data) - self.offset:
            raise self.fail(f"{what} needs {size} bytes, only {len(self.data) - self.offset} left")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def count(self, what: str, min_item_bytes: int) -> int:
        (count,) = self.unpack("Q", f"{what} count")
        if count * min_item_bytes > len(self.data) - self.offset:
            raise self.fail(f"{what} count {count} cannot fit in the {len(self.data) - self.offset} bytes left")
        return count


def read_params(path: Path) -> dict[str, np.ndarray]:
    """Name -> array, with the `arg:`/`aux:` prefixes that Gluon's `export` adds removed."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the params file: {exc.strerror or exc}") from exc
    reader = _Reader(data, path)
    magic, _reserved = reader.unpack("QQ", "header")
    if magic != LIST_MAGIC:
        raise reader.fail(f"magic number {magic:#x} is not MXNet's {LIST_MAGIC:#x}")
    arrays = [_read_array(reader, index) for index in range(reader.count("array", 8))]
    names = [_read_name(reader) for _ in range(reader.count("name", 8))]
    if reader.offset != len(data):
        raise reader.fail(f"{len(data) - reader.offset} unexpected bytes after the names")
    if len(names) != len(arrays):
        raise InputError(f"{path}: holds {len(arrays)} arrays but {len(names)} names; kiln needs named "
                         "parameters: save them with Gluon's `export` or `mx.nd.save(file, dict_of_arrays)`")
    return _strip_prefixes(dict(zip(names, arrays)), names, path)


def _read_array(reader: _Reader, index: int) -> np.ndarray | None:
    what = f"array #{index}"
    (magic,) = reader.unpack("I", f"{what} magic")
    if magic not in (_V1, _V2, _V3):
        raise reader.fail(f"{what}: magic {magic:#x} is none of the NDArray formats MXNet 1.x writes "
                          "(files from MXNet before 1.0 must be re-saved with MXNet 1.x)")
    if magic != _V1:
        (storage,) = reader.unpack("i", f"{what} storage type")
        if storage != _DENSE:
            raise reader.fail(f"{what}: sparse storage type {storage}; kiln reads dense arrays only. "
                              "Convert it with `.tostype('default')` before saving")
    shape = _read_shape(reader, what)
    if shape is None or (magic != _V3 and not shape):
        return None
    _device_type, _device_id, flag = reader.unpack("iii", f"{what} context and dtype")
    if flag not in DTYPES:
        raise reader.fail(f"{what}: dtype flag {flag} is not one kiln reads ({', '.join(DTYPES.values())})")
    dtype = np.dtype(DTYPES[flag]).newbyteorder("<")
    size = math.prod(shape) * dtype.itemsize
    return np.frombuffer(reader.take(size, f"{what} data"), dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _read_shape(reader: _Reader, what: str) -> tuple[int, ...] | None:
    (ndim,) = reader.unpack("i", f"{what} ndim")
    if ndim == -1:
        return None
    if not 0 <= ndim <= _MAX_NDIM:
        raise reader.fail(f"{what}: ndim {ndim} is out of range 0..{_MAX_NDIM}")
    dims = reader.unpack(f"{ndim}q", f"{what} shape")
    if any(d < 0 for d in dims):
        raise reader.fail(f"{what}: negative dim in shape {dims}")
    if math.prod(d for d in dims if d) > len(reader.data):  # even a zero-size array cannot be that wide
        raise reader.fail(f"{what}: shape {dims} is larger than the whole file")
    return dims


def _read_name(reader: _Reader) -> str:
    (length,) = reader.unpack("Q", "name length")
    raw = reader.take(length, "name")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise reader.fail(f"a name is not UTF-8 ({bytes(raw[:40])!r})") from exc


def _strip_prefixes(params: dict[str, np.ndarray | None], names: list[str], path: Path) -> dict[str, np.ndarray]:
    stripped: dict[str, np.ndarray] = {}
    for name in names:
        array = params[name]
        short = name[4:] if name.startswith(_NAME_PREFIXES) else name
        if short in stripped or (short != name and short in params):
            raise InputError(f"{path}: parameter {short!r} is stored twice; re-export the model")
        if array is None:
            raise InputError(f"{path}: parameter {short!r} is an empty (uninitialised) array; initialise "
                             "the model and run it once before exporting")
        stripped[short] = array
    return stripped
