"""Named target presets: name -> TVM target, C toolchain, int8 instruction set, host requirements."""

from __future__ import annotations

import difflib
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import TargetError


class Family(str, enum.Enum):
    X86 = "x86"
    AARCH64 = "aarch64"
    CUDA = "cuda"


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
    int8_isa: str
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
            "int8_isa": self.int8_isa,
            "toolchain": self.toolchain.compiler,
            "requires": list(self.requires),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Preset":
        toolchain = AARCH64_TOOLCHAIN if data["toolchain"] == AARCH64_TOOLCHAIN.compiler else HOST_TOOLCHAIN
        return cls(
            data["name"], Family(data["family"]), data["tvm_target"], data["description"],
            data["int8_isa"], toolchain, tuple(data["requires"]),
        )


AVX2 = ("avx2", "fma")
AVX512 = AVX2 + ("avx512f", "avx512bw", "avx512dq", "avx512vl")


def _x86(name: str, mcpu: str, description: str, int8_isa: str, requires: tuple[str, ...]) -> Preset:
    target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}
    return Preset(name, Family.X86, target, description, int8_isa, HOST_TOOLCHAIN, requires)


def _aarch64(name: str, mcpu: str, mattr: list[str], description: str, int8_isa: str) -> Preset:
    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr}
    return Preset(name, Family.AARCH64, target, description, int8_isa, AARCH64_TOOLCHAIN)


def _cuda(arch: str, description: str) -> Preset:
    major, minor = arch[:-1], arch[-1]
    host = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
    target = {"kind": "cuda", "arch": f"sm_{arch}", "host": host}
    int8_isa = "dp4a" if int(arch) >= 61 else "none"
    return Preset(f"cuda-sm{arch}", Family.CUDA, target, description, int8_isa, HOST_TOOLCHAIN,
                  (f"{major}.{minor}",))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _x86("x86-64", "haswell", "x86-64 with AVX2 + FMA (Haswell and newer, Zen): the portable baseline",
             "avx2", AVX2),
        _x86("x86-avx2", "haswell", "x86-64 with AVX2 + FMA, same code as x86-64", "avx2", AVX2),
        _x86("x86-avx512", "skylake-avx512", "x86-64 with AVX-512 (Skylake-SP and newer)", "avx512bw",
             AVX512),
        _x86("x86-vnni", "cascadelake", "x86-64 with AVX-512 VNNI (Cascade Lake, Ice Lake, Sapphire Rapids)",
             "avx512-vnni", AVX512 + ("avx512_vnni",)),
        _aarch64("aarch64", "cortex-a72", ["+neon"], "AArch64 with NEON (Cortex-A72, Graviton1, Raspberry Pi 4)",
                 "neon"),
        _aarch64("aarch64-dotprod", "neoverse-n1", ["+neon", "+dotprod"],
                 "AArch64 with the dot-product extension (Graviton2, Cortex-A76 class)", "sdot"),
        _aarch64("aarch64-sve", "neoverse-v1", ["+neon", "+dotprod", "+sve"],
                 "AArch64 with SVE (Graviton3, Neoverse V1)", "sdot"),
        _cuda("70", "NVIDIA Volta (V100)"),
        _cuda("75", "NVIDIA Turing (T4)"),
        _cuda("80", "NVIDIA Ampere (A100)"),
        _cuda("86", "NVIDIA Ampere (A10, RTX 30xx)"),
        _cuda("89", "NVIDIA Ada (L4, RTX 40xx)"),
        _cuda("90", "NVIDIA Hopper (H100, H200)"),
    )
}


def resolve(spec: str) -> Preset:
    """A preset by name, `host`, or a raw TVM target given as JSON."""
    if spec == "host":
        from kiln.targets.host import host_preset

        return host_preset()
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.lstrip().startswith("{"):
        return _from_tvm_json(spec)
    names = sorted(PRESETS) + ["host"]
    near = difflib.get_close_matches(spec, names, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    raise TargetError(
        f"unknown target {spec!r}.{hint} Valid presets: {', '.join(names)}; "
        "or pass a TVM target as JSON, e.g. '{\"kind\": \"llvm\", \"mcpu\": \"znver3\"}'. "
        "`kiln targets` lists them."
    )


def _from_tvm_json(spec: str) -> Preset:
    try:
        target = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise TargetError(f"--target is not valid JSON ({exc.msg} at char {exc.pos}); "
                          "use a preset name or a TVM target dict") from exc
    if not isinstance(target, dict) or "kind" not in target:
        raise TargetError("a raw --target must be a JSON object with a \"kind\" key, e.g. {\"kind\": \"llvm\"}")
    kind, triple = target["kind"], target.get("mtriple", "")
    if kind == "cuda":
        family, toolchain = Family.CUDA, HOST_TOOLCHAIN
    elif kind == "llvm" and triple.startswith("aarch64"):
        family, toolchain = Family.AARCH64, AARCH64_TOOLCHAIN
    elif kind == "llvm":
        family, toolchain = Family.X86, HOST_TOOLCHAIN
    else:
        raise TargetError(f"target kind {kind!r} is not supported; kiln builds for llvm (x86, aarch64) and cuda")
    return Preset("custom", family, target, "raw TVM target", "unknown", toolchain)
