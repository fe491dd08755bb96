"""Targets read through LLVM: a raw TVM target given as JSON, and what an LLVM target's code may use (its CPU
features: the instruction sets a host needs to run it, and its Int8Isa). TVM's compiler is imported when called."""

from __future__ import annotations

import difflib
import json
from typing import Any

from kiln.errors import TargetError
from kiln.targets.isa import X86_FLAGS, Family, Int8Isa
from kiln.targets.presets import AARCH64_TOOLCHAIN, CUDA_HOST, HOST_TOOLCHAIN, Preset, compute_capability

_X86_TRIPLES = ("", "x86_64-linux-gnu", "x86_64-pc-linux-gnu", "x86_64-unknown-linux-gnu")


def custom_preset(spec: str) -> Preset:
    """The preset of a raw TVM target, given as JSON; its requirements and Int8Isa from LLVM's features."""
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
    elif kind == "llvm" and triple in _X86_TRIPLES:
        family, toolchain = Family.X86, HOST_TOOLCHAIN
    else:
        raise TargetError(f"target {json.dumps(target)} is not supported; kiln builds for llvm (x86_64 or aarch64 "
                          "Linux, by mtriple) and cuda")
    tvm_target = _tvm_target(target)
    features = cpu_features(tvm_target) if family is not Family.CUDA else frozenset()
    if family is Family.X86:
        requires = _x86_requirements(features)
    return Preset("custom", family, target, "raw TVM target", Int8Isa.from_features(features, family), toolchain,
                  requires)


def cpu_features(tvm_target) -> frozenset[str]:
    """The LLVM CPU features of a tvm.target.Target of kind llvm: its mcpu's, with its mattr applied."""
    from tvm.target import codegen

    return frozenset(str(feature) for feature in codegen.llvm_get_cpu_features(tvm_target))


def _x86_requirements(features: frozenset[str]) -> tuple[str, ...]:
    """The instruction sets (as /proc/cpuinfo names them) code for an x86 target with these features may use."""
    return tuple(flag for feature, flag in X86_FLAGS.items() if feature in features)


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
