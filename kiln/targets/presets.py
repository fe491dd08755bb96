"""Named target presets: name -> TVM target, C toolchain, int8 instruction set, host requirements."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import TargetError
from kiln.targets.isa import Family, Int8Isa


@dataclass(frozen=True)
class Toolchain:
    """The C compiler that links libraries for a target, and the Debian package that provides it."""

    compiler: str
    debian_package: str


HOST_TOOLCHAIN = Toolchain("gcc", "gcc")
AARCH64_TOOLCHAIN = Toolchain("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")


@dataclass(frozen=True)
class Preset:
    name: str
    family: Family
    tvm_target: dict[str, Any] = field(hash=False)
    description: str
    int8_isa: Int8Isa
    toolchain: Toolchain
    # Instruction-set flags (as /proc/cpuinfo spells them) a host needs to run the artifact;
    # for CUDA, the compute capability ("8.0").
    requires: tuple[str, ...] = ()

    @property
    def machine(self) -> str:
        """The `uname -m` of hosts that can run this preset's artifacts."""
        return {Family.X86: "x86_64", Family.AARCH64: "aarch64", Family.CUDA: "x86_64"}[self.family]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family.value,
            "tvm_target": self.tvm_target,
            "description": self.description,
            "int8_isa": self.int8_isa.value,
            "toolchain": self.toolchain.compiler,
            "requires": list(self.requires),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Preset":
        toolchain = AARCH64_TOOLCHAIN if data["toolchain"] == AARCH64_TOOLCHAIN.compiler else HOST_TOOLCHAIN
        family, requires = Family(data["family"]), tuple(data["requires"])
        recorded = data["int8_isa"]
        # Manifests from before Int8Isa recorded "unknown" for raw JSON targets.
        int8_isa = (Int8Isa(recorded) if recorded in {isa.value for isa in Int8Isa}
                    else _named_int8_isa(family, data["tvm_target"], requires))
        return cls(data["name"], family, data["tvm_target"], data["description"], int8_isa, toolchain, requires)


def _named_int8_isa(family: Family, tvm_target: dict[str, Any], requires: tuple[str, ...]) -> Int8Isa:
    """A target's Int8Isa from the features it names itself, without asking LLVM: an x86 target's `requires`,
    an aarch64 target's mattr (not what its mcpu implies: raw targets ask LLVM, targets.llvm)."""
    if family is Family.X86:
        return Int8Isa.from_cpu_flags(requires)
    return Int8Isa.from_features((attr.lstrip("+") for attr in tvm_target.get("mattr", [])), family)


AVX2 = ("avx2", "fma")
AVX512 = AVX2 + ("avx512f", "avx512bw", "avx512dq", "avx512vl")


def _x86(name: str, mcpu: str, description: str, requires: tuple[str, ...]) -> Preset:
    target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}
    return Preset(name, Family.X86, target, description, _named_int8_isa(Family.X86, target, requires),
                  HOST_TOOLCHAIN, requires)


# The mattr features a preset's code may use, as the kernel's HWCAP names them (targets.host.cpu_flags)
_AARCH64_FLAGS = {"+neon": "asimd", "+dotprod": "asimddp", "+sve": "sve"}


def _aarch64(name: str, mcpu: str, mattr: list[str], description: str) -> Preset:
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr}
    return Preset(name, Family.AARCH64, target, description, _named_int8_isa(Family.AARCH64, target, ()),
                  AARCH64_TOOLCHAIN, tuple(_AARCH64_FLAGS[feature] for feature in mattr))


CUDA_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}


def _cuda(arch: str, description: str) -> Preset:
    target = {"kind": "cuda", "arch": f"sm_{arch}", "host": CUDA_HOST}
    return Preset(f"cuda-sm{arch}", Family.CUDA, target, description, Int8Isa.DP4A, HOST_TOOLCHAIN,
                  (compute_capability(target["arch"]),))


def compute_capability(arch: str) -> str:
    """'sm_80' -> '8.0', 'sm_90a' -> '9.0'."""
    match = re.fullmatch(r"sm_(\d+)(\d)a?", arch)
    if not match:
        raise TargetError(f"CUDA arch {arch!r} is not of the form sm_80; name a GPU architecture, e.g. "
                          "{\"kind\": \"cuda\", \"arch\": \"sm_80\"}")
    return f"{match.group(1)}.{match.group(2)}"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _x86("x86-64", "haswell", "x86-64 with AVX2 + FMA (Haswell and newer, Zen): the portable baseline", AVX2),
        _x86("x86-avx2", "haswell", "x86-64 with AVX2 + FMA, same code as x86-64", AVX2),
        _x86("x86-avx512", "skylake-avx512", "x86-64 with AVX-512 (Skylake-SP and newer)", AVX512),
        _x86("x86-vnni", "cascadelake", "x86-64 with AVX-512 VNNI (Cascade Lake, Ice Lake, Sapphire Rapids)",
             AVX512 + ("avx512_vnni",)),
        _aarch64("aarch64", "cortex-a72", ["+neon"], "AArch64 with NEON (Cortex-A72, Graviton1, Raspberry Pi 4)"),
        _aarch64("aarch64-dotprod", "neoverse-n1", ["+neon", "+dotprod"],
                 "AArch64 with the dot-product extension (Graviton2, Cortex-A76 class)"),
        _aarch64("aarch64-sve", "neoverse-v1", ["+neon", "+dotprod", "+sve"],
                 "AArch64 with SVE (Graviton3, Neoverse V1)"),
        _cuda("70", "NVIDIA Volta (V100)"),
        _cuda("75", "NVIDIA Turing (T4)"),
        _cuda("80", "NVIDIA Ampere (A100)"),
        _cuda("86", "NVIDIA Ampere (A10, RTX 30xx)"),
        _cuda("89", "NVIDIA Ada (L4, RTX 40xx)"),
        _cuda("90", "NVIDIA Hopper (H100, H200)"),
    )
}
