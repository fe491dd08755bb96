"""What a target's code may execute: its family, and the int8 dot product its integer kernels use.

Nothing here imports TVM: artifacts loaded by a runtime-only install read these from their manifest."""

from __future__ import annotations

import enum
from typing import Iterable


class Family(str, enum.Enum):
    X86 = "x86"
    AARCH64 = "aarch64"
    CUDA = "cuda"


# LLVM feature names -> /proc/cpuinfo flags, for the x86 instruction sets kiln's presets distinguish.
X86_FLAGS = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512dq": "avx512dq",
             "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni"}


class Int8Isa(str, enum.Enum):
    """The int8 dot product of a target: one value, resolved from its features (`from_features`), that the
    quantizer reads (activation type, weight range) and the integer kernels are built with
    (kernels.intrinsics.dot_product). The values are what manifests and `kiln targets` show."""

    SSE = "sse"  # x86 without AVX2 (a raw target's generic x86-64): no integer kernels
    AVX2 = "avx2"  # vpmaddubsw on ymm: u8 x s8 pairs summed in saturating int16
    AVX512 = "avx512bw"  # vpmaddubsw on zmm: the same pairs
    VNNI = "avx512-vnni"  # vpdpbusd: u8 x s8 quadruples summed straight into int32
    NEON = "neon"  # AArch64 without the dot-product extension: no integer kernels
    SDOT = "sdot"  # AArch64 sdot: s8 x s8 quadruples into int32
    DP4A = "dp4a"  # CUDA __dp4a: s8 x s8 quadruples into int32

    @classmethod
    def from_features(cls, features: Iterable[str], family: Family) -> Int8Isa:
        """The dot product of a `family` CPU with these LLVM features (as `llvm_get_cpu_features` names them,
        or an mattr entry without its "+")."""
        features = set(features)
        if family is Family.CUDA:
            return cls.DP4A
        if family is Family.AARCH64:
            return cls.SDOT if "dotprod" in features else cls.NEON
        if "avx512vnni" in features:
            return cls.VNNI
        if "avx512bw" in features:
            return cls.AVX512
        return cls.AVX2 if "avx2" in features else cls.SSE

    @classmethod
    def from_cpu_flags(cls, flags: Iterable[str]) -> Int8Isa:
        """The dot product of an x86 CPU with these /proc/cpuinfo flags (a preset's `requires`)."""
        flags = set(flags)
        return cls.from_features((feature for feature, flag in X86_FLAGS.items() if flag in flags), Family.X86)

    @property
    def family(self) -> Family:
        return {Int8Isa.NEON: Family.AARCH64, Int8Isa.SDOT: Family.AARCH64, Int8Isa.DP4A: Family.CUDA}.get(
            self, Family.X86)

    @property
    def activations(self) -> str:
        """The dtype of the activations it multiplies: x86 multiplies u8 x s8, ARM sdot and CUDA dp4a s8 x s8."""
        return "uint8" if self.family is Family.X86 else "int8"

    @property
    def reduce_range(self) -> bool:
        """Whether weights keep to 7 bits ([-63, 63]): vpmaddubsw sums pairs of u8 x s8 products into a
        saturating int16, as ONNX Runtime's x86 int8 kernels do, and 7-bit weights keep those sums in range.
        VNNI sums into int32, so it takes the full [-127, 127]."""
        return self in (Int8Isa.SSE, Int8Isa.AVX2, Int8Isa.AVX512)
