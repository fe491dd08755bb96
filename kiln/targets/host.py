"""What the machine kiln runs on can execute."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

from kiln.errors import TargetError
from kiln.targets.isa import Family, Int8Isa
from kiln.targets.llvm import cpu_features
from kiln.targets.presets import AVX2, PRESETS, Preset


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction sets this CPU has, as /proc/cpuinfo names them; on AArch64 from the kernel's hardware
    capabilities (getauxval), which qemu-user emulates where its /proc/cpuinfo shows the host's CPU."""
    if platform.machine() == "aarch64":
        return _aarch64_hwcaps()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


_AT_HWCAP = 16
_HWCAP_BITS = {"asimd": 1, "asimddp": 20, "sve": 22}  # Linux's arm64 HWCAP_ASIMD, HWCAP_ASIMDDP, HWCAP_SVE


def _aarch64_hwcaps() -> frozenset[str]:
    import ctypes

    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    hwcap = getauxval(_AT_HWCAP)
    return frozenset(name for name, bit in _HWCAP_BITS.items() if hwcap >> bit & 1)


def host_preset() -> Preset:
    """The most capable x86 preset this CPU runs, tuned for this exact CPU model."""
    machine = platform.machine()
    if machine != "x86_64":
        raise TargetError(f"--target host is supported on x86_64 hosts; this one is {machine}. "
                          "Name a preset instead (`kiln targets`).")
    import tvm
    from tvm.target import codegen

    flags = cpu_flags()
    best = next((p for name in ("x86-vnni", "x86-avx512", "x86-64") if set((p := PRESETS[name]).requires) <= flags),
                None)
    if best is None:
        raise TargetError(f"this CPU lacks {', '.join(sorted(set(AVX2) - flags))}; kiln's x86 code needs AVX2 + FMA")
    target = dict(best.tvm_target, mcpu=codegen.llvm_get_system_cpu())
    int8_isa = Int8Isa.from_features(cpu_features(tvm.target.Target(target)), Family.X86)
    return Preset("host", Family.X86, target, f"this machine ({target['mcpu']})", int8_isa, best.toolchain,
                  best.requires)


def check_can_run(preset: Preset) -> None:
    """Raise a TargetError naming what this host lacks to run artifacts built for `preset`."""
    if preset.family is Family.CUDA:
        _check_gpu(preset)
        return
    check_cpu(preset, platform.machine(), cpu_flags(), "this host")


def check_cpu(preset: Preset, machine: str, flags: frozenset[str], where: str) -> None:
    """Raise a TargetError when a CPU (`machine`, `flags`; `where` names it) cannot run code built for `preset`."""
    if machine != preset.machine:
        raise TargetError(f"artifact is built for {preset.name} ({preset.machine}); {where} is {machine}. "
                          "Run it on a matching machine, or rebuild with --target host.")
    missing = sorted(set(preset.requires) - flags)
    if missing:
        baseline = "--target aarch64 (NEON only)" if preset.family is Family.AARCH64 else "--target host or x86-64"
        raise TargetError(f"artifact is built for {preset.name}, which needs the {', '.join(missing)} "
                          f"instruction set{'s' if len(missing) > 1 else ''}; {where} lacks "
                          f"{'them' if len(missing) > 1 else 'it'}. Rebuild with {baseline}.")


def _check_gpu(preset: Preset) -> None:
    import kiln.tvm_runtime as tvm_runtime

    why = tvm_runtime.cuda_runtime_error()
    if why is not None:
        raise TargetError(f"artifact is built for {preset.name} and needs an NVIDIA GPU with TVM's CUDA runtime, "
                          "which did not load here: libtvm_runtime_cuda.so needs the NVIDIA driver (libcuda.so.1) "
                          "and the CUDA 13 runtime (libcudart.so.13, `pip install nvidia-cuda-runtime` or the CUDA "
                          f"toolkit, on LD_LIBRARY_PATH). The loader said: {why}")
    if not tvm_runtime.device_exists(tvm_runtime.KDL_CUDA):
        raise TargetError(f"artifact is built for {preset.name} and needs an NVIDIA GPU; none is visible here")
    have = tvm_runtime.compute_version()
    need = preset.requires[0] if preset.requires else have
    if tuple(map(int, have.split("."))) < tuple(map(int, need.split("."))):
        raise TargetError(f"artifact is built for {preset.name} (compute capability {need}); "
                          f"this GPU has {have}")
