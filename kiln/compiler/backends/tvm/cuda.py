"""CUDA device code: nvcc compiles the kernels TVM generates, and the binary goes into the library.

The apache-tvm wheel's compiler is built without the CUDA runtime, so `tvm.compile` leaves the
kernels as CUDA source (format "cuda"), which TVM's runtime would compile on every load, needing
nvcc or NVRTC on each GPU machine. kiln compiles them once, at build time, into a fatbin holding
SASS for the preset's architecture plus its PTX (so newer GPUs can JIT it), and writes it into the
module blob that `export_library` embeds (`__tvm_ffi__library_bin`), in the layout TVM's
`ffi.Module.load_from_bytes.cuda` reads: [fmt][function table][code].
"""

from __future__ import annotations

import functools
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import TargetError
from kiln.targets.presets import Preset, Toolchain, compute_capability

NVCC = Toolchain("nvcc", "nvidia-cuda-toolkit")
FATBIN_FORMAT = "fatbin"
_LIBRARY_PLACEHOLDER = "_lib"  # stands for the host library itself in the import tree


def check_nvcc(preset: Preset) -> None:
    """Fail early unless an nvcc that can compile for the preset's GPU architecture is on PATH."""
    if shutil.which(NVCC.compiler) is None:
        raise TargetError(f"target {preset.name} needs nvcc (the CUDA toolkit), which is not on PATH; install it "
                          f"with `apt-get install {NVCC.debian_package}` or NVIDIA's CUDA toolkit")
    arch = _gpu_arch(preset)
    supported = _nvcc_architectures()
    if arch not in supported:
        raise TargetError(f"target {preset.name} needs an nvcc that compiles for {arch}; this one ({_nvcc_release()}) "
                          f"supports {', '.join(supported)}. Install a CUDA toolkit that does "
                          "(CUDA 12.x is the last for sm_70), or pick a newer preset.")


def _gpu_arch(preset: Preset) -> str:
    arch = preset.tvm_target.get("arch", "")
    compute_capability(arch)  # raises unless it reads like sm_80
    return arch


def _nvcc_architectures() -> tuple[str, ...]:
    listing = subprocess.run([NVCC.compiler, "--list-gpu-code"], capture_output=True, text=True, check=True)
    return tuple(listing.stdout.split())


def _nvcc_release() -> str:
    version = subprocess.run([NVCC.compiler, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release ([\d.]+)", version)
    return f"CUDA {match.group(1)}" if match else "unknown version"


def export_library(executable, preset: Preset, library: Path) -> None:
    """Export a CUDA build with every device module's kernels compiled to a fatbin for the preset."""
    sources = [module.inspect_source("cuda") for module in _import_tree(executable.mod) if module.kind == "cuda"]
    pack = functools.partial(_pack_imports, preset=preset, sources=sources)
    executable.mod.export_library(str(library), fpack_imports=pack)


def _import_tree(root) -> list:
    modules, stack = [], [root]
    while stack:
        module = stack.pop()
        modules.append(module)
        stack.extend(module.imports)
    return modules


def _cuda_source(code: "DeviceCode", sources: list[str]) -> str:
    """The CUDA source of a serialized module: its code, or (if TVM compiled it already) its match."""
    if code.fmt == "cuda":
        return code.code.decode()
    matches = [source for source in sources if all(name in source for name in code.kernel_names)]
    if len(matches) != 1:
        raise AssertionError(f"{len(matches)} CUDA sources define kernels {code.kernel_names}")
    return matches[0]


def _compile_fatbin(source: str, preset: Preset) -> bytes:
    import tvm
    from tvm.support import nvcc

    arch = _gpu_arch(preset)
    virtual = arch.replace("sm_", "compute_")
    with tvm.target.Target(preset.tvm_target):  # nvcc.compile_cuda reads the current target
        try:
            binary = nvcc.compile_cuda(source, target_format=FATBIN_FORMAT, compiler="nvcc",
                                       arch=["-gencode", f"arch={virtual},code=[{arch},{virtual}]"])
        except RuntimeError as exc:
            log = str(exc).rsplit("Compilation error:", 1)[-1].strip()
            raise TargetError(f"nvcc failed to compile the generated kernels for {arch}: {log[-2000:]}") from exc
    return bytes(binary)


def _pack_imports(module, is_system_lib: bool, symbol_prefix: str, workspace_dir: str, *, preset: Preset,
                  sources: list[str]) -> str:
    """export_library's packer: TVM's serialized import tree, with a fatbin in each CUDA module."""
    import tvm

    if is_system_lib or symbol_prefix:
        raise TargetError("CUDA artifacts are shared libraries; a system-lib host target is not supported")
    blob = LibraryBin.parse(tvm.get_global_func("runtime.ModulePackImportsToTensor")(module).numpy().tobytes())
    for index, (kind, payload) in enumerate(blob.modules):
        if kind == "cuda":
            code = DeviceCode.parse(payload)
            fatbin = _compile_fatbin(_cuda_source(code, sources), preset)
            blob.modules[index] = (kind, DeviceCode(FATBIN_FORMAT, code.function_table, fatbin).to_bytes())
    data = Path(workspace_dir) / "devc.bin"
    data.write_bytes(blob.to_bytes())
    assembly = Path(workspace_dir) / "devc.S"
    assembly.write_text(_EMBED_ASSEMBLY.format(symbol="__tvm_ffi__library_bin", path=data))
    return str(assembly)


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
        return self._unpack("<Q")

    def u32(self) -> int:
        return self._unpack("<I")

    def raw(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise ValueError(f"truncated: need {size} bytes at {self.offset}, have {len(self.data) - self.offset}")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def string(self) -> bytes:
        return self.raw(self.u64())

    def _unpack(self, fmt: str) -> int:
        (value,) = struct.unpack(fmt, self.raw(struct.calcsize(fmt)))
        return value


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
