"""TVM's runtime reached through tvm_ffi alone, so that loading and running an artifact never imports the
`tvm` package (whose import loads the 259 MB compiler library).

The runtime libraries come from kiln's runtime-only install (kiln/lib/, copied from the apache-tvm wheel
when that package is built) or, in the full install, from the apache-tvm package's own lib/ folder, found
without importing it. Either way each library is loaded from one path per process, so a later `import tvm`
finds the same copy already mapped.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from pathlib import Path

from kiln.errors import KilnError

BUNDLED = Path(__file__).resolve().parent / "lib"  # kiln/lib in the runtime-only install
CORE = "libtvm_runtime.so"
# Loaded when present: VM builtins outside the core (extra) and the CUDA device API (cuda; it needs the
# NVIDIA driver and CUDA runtime, so a failure to load it is reported only when a CUDA artifact asks).
SIDECARS = ("libtvm_runtime_extra.so", "libtvm_runtime_cuda.so")

KDL_CPU, KDL_CUDA = 1, 2
# A device on an RPC server is its type + (session table index + 1) * RPC_SESS_MASK (tvm/rpc/base.py).
RPC_SESS_MASK = 128
_DEVICE_EXISTS, _DEVICE_COMPUTE_VERSION = 0, 4  # TVM's DeviceAttrKind


def library_folder() -> Path:
    if (BUNDLED / CORE).is_file():
        return BUNDLED
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise KilnError("TVM's runtime library is not installed: install kiln-runtime (or the full kiln-ml, "
                        "which brings apache-tvm)")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


@functools.lru_cache(maxsize=1)
def load_runtime() -> dict[str, str]:
    """Load TVM's runtime libraries into this process once; the sidecars that failed to load, with why."""
    import tvm_ffi  # loads libtvm_ffi.so, which libtvm_runtime.so links against

    del tvm_ffi
    folder = library_folder()
    ctypes.CDLL(str(folder / CORE), mode=ctypes.RTLD_GLOBAL)
    failed = {}
    for name in SIDECARS:
        if (folder / name).is_file():
            try:
                ctypes.CDLL(str(folder / name), mode=ctypes.RTLD_LOCAL)
            except OSError as exc:
                failed[name] = str(exc)
        else:
            failed[name] = f"{folder / name} is not installed"
    return failed


def global_function(name: str):
    """TVM's global function `name` (the runtime loaded first)."""
    import tvm_ffi

    load_runtime()
    return tvm_ffi.get_global_func(name)


def cuda_runtime_error() -> str | None:
    """Why TVM's CUDA device API is unavailable here, or None when it loaded."""
    return load_runtime().get("libtvm_runtime_cuda.so")


def device(kind: int, index: int = 0):
    import tvm_ffi

    load_runtime()
    return tvm_ffi.device(kind, index)


def device_attribute(kind: int, index: int, attribute: int):
    return global_function("runtime.GetDeviceAttr")(kind, index, attribute)


def device_exists(kind: int, index: int = 0) -> bool:
    return bool(device_attribute(kind, index, _DEVICE_EXISTS))


def compute_version(index: int = 0) -> str:
    return str(device_attribute(KDL_CUDA, index, _DEVICE_COMPUTE_VERSION))


def empty(shape: tuple[int, ...], dtype: str, on):
    """An uninitialized tensor on device `on`, allocated by TVM (aligned as its kernels assume)."""
    return global_function("runtime.TVMTensorAllocWithScope")(shape, dtype, on, None)


def copy_into(tensor, array) -> None:
    """Copy a C-contiguous numpy array of the tensor's shape and dtype into `tensor` (on any device)."""
    copy = global_function("runtime.TVMTensorCopyFromBytes")
    copy(tensor, array.ctypes.data_as(ctypes.c_void_p), array.nbytes)


def copy_out(tensor):
    """A numpy copy of a tensor on any device."""
    import numpy as np

    from kiln.dtypes import numpy_dtype

    array = np.empty(tuple(tensor.shape), dtype=numpy_dtype(str(tensor.dtype)))
    copy = global_function("runtime.TVMTensorCopyToBytes")
    copy(tensor, array.ctypes.data_as(ctypes.c_void_p), array.nbytes)
    return array


def load_vm(library: Path, on):
    """The Relax VM of a compiled library, initialized for device `on` (vm_of)."""
    load_runtime()
    found = library.stat()
    return vm_of(_loaded(str(library.resolve()), (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)), on)


@functools.lru_cache(maxsize=16)
def _loaded(path: str, identity: tuple):
    """A library file loaded once a process (`identity`: the file's, so a file rebuilt in its place loads anew).
    TVM frees nothing of a loaded library (its constants included) for the life of the process: every load of a
    BERT artifact took another copy of its weights."""
    import tvm_ffi

    return tvm_ffi.load_module(path)


def vm_of(module, on):
    """The Relax VM of a loaded library module (here, or on an RPC server with `on` one of its devices),
    initialized for device `on` (with the CPU for shape functions) and TVM's pooled allocator, as
    tvm.relax.VirtualMachine does."""
    pooled = 2
    executable = module["vm_load_executable"]()
    kind = on.dlpack_device_type() % RPC_SESS_MASK  # the VM runs where the module is: devices as seen there
    devices = [(kind, on.index)]
    if kind != KDL_CPU:
        devices.append((KDL_CPU, 0))
    executable["vm_initialization"](*[value for kind, index in devices for value in (kind, index, pooled)])
    return executable
