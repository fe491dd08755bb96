"""Named target presets: name -> TVM target, C toolchain, int8 instruction set, host requirements."""

from __future__ import annotations

import difflib
import enum
import json
import re
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


CUDA_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}


def _cuda(arch: str, description: str) -> Preset:
    target = {"kind": "cuda", "arch": f"sm_{arch}", "host": CUDA_HOST}
    return Preset(f"cuda-sm{arch}", Family.CUDA, target, description, "dp4a", HOST_TOOLCHAIN,
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
    requires: tuple[str, ...] = ()
    if kind == "cuda":
        family, toolchain = Family.CUDA, HOST_TOOLCHAIN
        requires = (compute_capability(target.get("arch", "")),)
        target = {"host": CUDA_HOST, **target}
    elif kind == "llvm" and triple.startswith("aarch64"):
        family, toolchain = Family.AARCH64, AARCH64_TOOLCHAIN
    elif kind == "llvm" and triple in ("", "x86_64-linux-gnu", "x86_64-pc-linux-gnu", "x86_64-unknown-linux-gnu"):
        family, toolchain = Family.X86, HOST_TOOLCHAIN
    else:
        raise TargetError(f"target {json.dumps(target)} is not supported; kiln builds for llvm (x86_64 or aarch64 "
                          "Linux, by mtriple) and cuda")
    tvm_target = _tvm_target(target)
    if family is Family.X86:
        requires = _x86_requirements(tvm_target)
    return Preset("custom", family, target, "raw TVM target", "unknown", toolchain, requires)


def _tvm_target(target: dict[str, Any]):
    import tvm
    from tvm.target import codegen

    mcpu, triple = target.get("mcpu"), target.get("mtriple") or "x86_64-linux-gnu"
    if target["kind"] == "llvm" and mcpu and not codegen.llvm_is_valid_cpu(mcpu, triple):
        known = codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple}))
        near = difflib.get_close_matches(mcpu, list(known), n=3)
        raise TargetError(f"LLVM does not know mcpu {mcpu!r} for {triple}."
                          + (f" Did you mean {', '.join(near)}?" if near else ""))
    try:
        return tvm.target.Target(target)
    except Exception as exc:  # TVM raises ValueError, TypeError or its own errors for bad attributes
        raise TargetError(f"TVM rejects --target {json.dumps(target)}: {str(exc).strip()}") from exc


# LLVM feature names -> /proc/cpuinfo flags, for the instruction sets kiln's x86 presets distinguish.
_X86_FLAGS = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512dq": "avx512dq",
              "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni"}


def _x86_requirements(tvm_target) -> tuple[str, ...]:
    """The instruction sets (as /proc/cpuinfo names them) code for this x86 target may use."""
    from tvm.target import codegen

    features = codegen.llvm_get_cpu_features(tvm_target)
    return tuple(flag for feature, flag in _X86_FLAGS.items() if feature in features)
