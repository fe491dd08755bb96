"""What kiln relies on inside TVM (apache-tvm and apache-tvm-ffi) beyond its public API.

- The module blob: `export_library` embeds a library's imported modules (device code) as the symbol
  `__tvm_ffi__library_bin`, serialized by `runtime.ModulePackImportsToTensor` and read back by
  tvm-ffi's library loader. kiln reads and rewrites it (`LibraryBin`, `DeviceCode`: the layout
  `ffi.Module.load_from_bytes.cuda` reads) to put nvcc's fatbin in place of CUDA source.
- The ONNX importer's converter table, `onnx_frontend._get_convert_map()`, is the only list of the
  ops it converts; kiln reads it to report every unsupported op at once, before importing.
  kiln adds its own converters (kiln.compiler.backends.tvm.converters) by standing in for that function while
  the importer runs (`onnx_converters_added`).
- MetaSchedule's `TuneContext` imports `tvm.s_tir.tensor_intrin` (35-140 s here); `tensor_intrinsics_skipped`
  stands an empty module in for it while tune contexts are made for kernels that use no intrinsics.
"""

from __future__ import annotations

import contextlib
import functools
import struct
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from kiln.compat import VersionRange
from kiln.errors import TargetError

TVM = VersionRange("apache-tvm", "0.27", "0.28", "TVM 0.27's internals (its module blob format, the ONNX "
                   "importer's converter table, MetaSchedule's import of tvm.s_tir.tensor_intrin)")
TVM_FFI = VersionRange("apache-tvm-ffi", "0.1.14", "0.1.15", "tvm-ffi 0.1.14's library blob format")
LIBRARY_BIN_SYMBOL = "__tvm_ffi__library_bin"
TENSOR_INTRIN_MODULE = "tvm.s_tir.tensor_intrin"
_LIBRARY_PLACEHOLDER = "_lib"  # stands for the host library itself in the import tree
# Ops the ONNX importer handles itself rather than through its converter table.
_IMPORTER_BUILTIN_OPS = frozenset({"Constant", "If"})


def check() -> None:
    TVM.check()
    TVM_FFI.check()


# ---- the ONNX importer's converter table -----------------------------------------------------------

@functools.cache
def onnx_importer_ops() -> frozenset[str]:
    """The ONNX ops (domain-qualified outside the default domain) that TVM's Relax importer converts."""
    TVM.check()
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map()) | _IMPORTER_BUILTIN_OPS


@contextlib.contextmanager
def onnx_converters_added(converters: Mapping[str, Callable]) -> Iterator[None]:
    """While inside, the ONNX importer converts the ops of `converters` too (op -> function(block builder, inputs,
    attributes) giving the node's Relax expression): the importer looks its table up through `_get_convert_map`
    for each node, so a stand-in for that function adds them."""
    TVM.check()
    from tvm.relax.frontend.onnx import onnx_frontend

    table = onnx_frontend._get_convert_map
    added = {op: _Converter(convert) for op, convert in converters.items()}
    onnx_frontend._get_convert_map = lambda: {**table(), **added}
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = table


@dataclass(frozen=True)
class _Converter:
    """What the importer asks of a table entry: `get_converter(opset)`, called with (bb, inputs, attrs, params)."""

    convert: Callable

    def get_converter(self, opset: int) -> Callable:
        return lambda bb, inputs, attrs, params: self.convert(bb, inputs, attrs)


# ---- MetaSchedule's tensor intrinsics --------------------------------------------------------------

@contextlib.contextmanager
def tensor_intrinsics_skipped() -> Iterator[None]:
    """While inside, an empty module stands in for tvm.s_tir.tensor_intrin (unless it is imported already);
    it is removed after, so a later real import still works. Only for kernels that use no intrinsics."""
    TVM.check()
    if TENSOR_INTRIN_MODULE in sys.modules:
        yield
        return
    sys.modules[TENSOR_INTRIN_MODULE] = types.ModuleType(TENSOR_INTRIN_MODULE)
    try:
        yield
    finally:
        del sys.modules[TENSOR_INTRIN_MODULE]


# ---- the module blob -------------------------------------------------------------------------------

def export_library(module, library: Path, rewrite_imports: Callable[["LibraryBin"], None]) -> None:
    """`module.export_library(library)`, with the serialized imported modules passed to `rewrite_imports`
    (which changes them in place) before they are embedded as `__tvm_ffi__library_bin`."""
    check()

    def pack_imports(mod, is_system_lib: bool, symbol_prefix: str, workspace_dir: str) -> str:
        if is_system_lib or symbol_prefix:
            raise TargetError("artifacts with device code are shared libraries; a system-lib host target "
                              "is not supported")
        blob = packed_imports(mod)
        rewrite_imports(blob)
        data = Path(workspace_dir) / "devc.bin"
        data.write_bytes(blob.to_bytes())
        assembly = Path(workspace_dir) / "devc.S"
        assembly.write_text(_EMBED_ASSEMBLY.format(symbol=LIBRARY_BIN_SYMBOL, path=data))
        return str(assembly)

    module.export_library(str(library), fpack_imports=pack_imports)


def packed_imports(module) -> "LibraryBin":
    """The import tree of `module` as TVM serializes it into a library."""
    import tvm

    check()
    return LibraryBin.parse(tvm.get_global_func("runtime.ModulePackImportsToTensor")(module).numpy().tobytes())


_EMBED_ASSEMBLY = """\
    .section .rodata
    .globl {symbol}
    .type {symbol}, @object
    .balign 8
{symbol}:
    .incbin "{path}"
    .size {symbol}, . - {symbol}
    .section .note.GNU-stack,"",@progbits
"""


class _Reader:
    """Reads TVM's binary serialization: little-endian integers, u64-length-prefixed strings and arrays."""

    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def u64(self) -> int:
        (value,) = struct.unpack("<Q", self.raw(8))
        return value

    def raw(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise ValueError(f"truncated: need {size} bytes at {self.offset}, have {len(self.data) - self.offset}")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def string(self) -> bytes:
        return self.raw(self.u64())


def _string(value: bytes) -> bytes:
    return struct.pack("<Q", len(value)) + value


def _u64_array(values: list[int]) -> bytes:
    return struct.pack(f"<Q{len(values)}Q", len(values), *values)


@dataclass
class LibraryBin:
    """`__tvm_ffi__library_bin`: <nbytes u64> <import tree as CSR> then (kind, bytes) per module."""

    indptr: list[int]
    children: list[int]
    modules: list[tuple[str, bytes]]  # the host library itself is ("_lib", b"")

    @classmethod
    def parse(cls, data: bytes) -> "LibraryBin":
        header = _Reader(data)
        reader = _Reader(header.raw(header.u64()))
        indptr = [reader.u64() for _ in range(reader.u64())]
        children = [reader.u64() for _ in range(reader.u64())]
        modules = []
        for _ in range(len(indptr) - 1):
            kind = reader.string().decode()
            modules.append((kind, b"" if kind == _LIBRARY_PLACEHOLDER else reader.string()))
        return cls(indptr, children, modules)

    def to_bytes(self) -> bytes:
        body = _u64_array(self.indptr) + _u64_array(self.children)
        for kind, payload in self.modules:
            body += _string(kind.encode()) + (b"" if kind == _LIBRARY_PLACEHOLDER else _string(payload))
        return struct.pack("<Q", len(body)) + body


@dataclass
class DeviceCode:
    """A serialized CUDA module: format ("cuda" source, "ptx", "cubin", "fatbin"), function table, code."""

    fmt: str
    function_table: bytes  # kept verbatim; `kernel_names` reads it
    code: bytes

    @classmethod
    def parse(cls, data: bytes) -> "DeviceCode":
        reader = _Reader(data)
        fmt = reader.string().decode()
        start = reader.offset
        _read_function_table(reader)
        table = data[start:reader.offset]
        code = reader.string()
        if reader.offset != len(data):
            raise ValueError(f"{len(data) - reader.offset} unread bytes after the CUDA module's code")
        return cls(fmt, table, code)

    def to_bytes(self) -> bytes:
        return _string(self.fmt.encode()) + self.function_table + _string(self.code)

    @property
    def kernel_names(self) -> list[str]:
        return _read_function_table(_Reader(self.function_table))


def _read_function_table(reader: _Reader) -> list[str]:
    """Map<String, FunctionInfo>: name -> (name, arg dtypes, launch param tags, arg extra tags)."""
    names = []
    for _ in range(reader.u64()):
        names.append(reader.string().decode())
        reader.string()  # FunctionInfo.name
        reader.raw(4 * reader.u64())  # arg_types: DLDataType is 4 bytes
        for _ in range(reader.u64()):  # launch_param_tags
            reader.string()
        reader.raw(4 * reader.u64())  # arg_extra_tags: int enum
    return names
