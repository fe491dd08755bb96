"""CUDA device code: nvcc compiles the kernels TVM generates, and the binary goes into the library.

The apache-tvm wheel's compiler is built without the CUDA runtime, so `tvm.compile` leaves the
kernels as CUDA source (format "cuda"), which TVM's runtime would compile on every load, needing
nvcc or NVRTC on each GPU machine. kiln compiles them once, at build time, into a fatbin holding
SASS for the preset's architecture plus its PTX (so newer GPUs can JIT it), and writes it into the
module blob that `export_library` embeds (TVM's format: kiln.compat.tvm).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from kiln.compat import tvm as tvm_compat
from kiln.compat.tvm import DeviceCode, LibraryBin
from kiln.errors import TargetError
from kiln.targets.presets import Preset, Toolchain, compute_capability

NVCC = Toolchain("nvcc", "nvidia-cuda-toolkit")
FATBIN_FORMAT = "fatbin"


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

    def compile_kernels(blob: LibraryBin) -> None:
        for index, (kind, payload) in enumerate(blob.modules):
            if kind == "cuda":
                code = DeviceCode.parse(payload)
                fatbin = _compile_fatbin(_cuda_source(code, sources), preset)
                blob.modules[index] = (kind, DeviceCode(FATBIN_FORMAT, code.function_table, fatbin).to_bytes())

    tvm_compat.export_library(executable.mod, library, rewrite_imports=compile_kernels)


def _import_tree(root) -> list:
    modules, stack = [], [root]
    while stack:
        module = stack.pop()
        modules.append(module)
        stack.extend(module.imports)
    return modules


def _cuda_source(code: DeviceCode, sources: list[str]) -> str:
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
