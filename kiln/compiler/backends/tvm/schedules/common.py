"""What every CPU rule shares: the target's vector shape, block queries, inlining and the rule type."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import tvm
from tvm import tirx
from tvm.s_tir import Schedule, ScheduleError

from kiln.compiler.backends.tvm.kernels.compute import PRECOMPUTED
from kiln.compiler.backends.tvm.kernels.intrinsics import DotProduct, dot_product, register_intrinsics
from kiln.targets.isa import Family, Int8Isa
from kiln.targets.llvm import cpu_features

SPATIAL, REDUCE = 0, 2  # tirx IterVar iter_type values
# Kernels with less work than this (elements or multiply-adds: ~10 us on one core) run on one thread:
# waking the pool costs more, and on a busy machine waiting for a descheduled worker costs milliseconds.
MIN_PARALLEL_WORK = 1 << 16


@dataclass(frozen=True)
class CpuSpec:
    """Vector lanes of fp32 (and so the NCHW[lanes]c block), the vector registers, how many accumulators
    matmuls and integer kernels keep in them, and the int8 dot product integer kernels use (None:
    quantized ops stay in float)."""

    lanes: int
    registers: int
    max_accumulators: int
    int8: DotProduct | None = None
    float_convs: bool = True  # float convs in NCHW[lanes]c too (False on GPUs: integer kernels only)
    # Reduction steps (kh x kw x input-channel groups) per chunk of a conv2d's input channels (conv.py);
    # 0: every conv sums all its input channels in one pass.
    chunk_steps: int = 64
    # Multiply-adds from which a 3x3 stride-1 conv2d runs as Winograd F(2x2, 3x3) (compute.conv2d_winograd;
    # 0: never). ResNet-18's 3x3 layers ran in 0.57-0.76 of the direct conv's time; the digits CNN's
    # (0.3-2.4 M multiply-adds) in 1.06-1.13.
    winograd_work: int = 1 << 22
    # A narrower vector for what `lanes` does not divide (0: none): on AVX-512, ymm blocks of 8 keep MobileNet's
    # 24- and 40-channel layers in the blocked layout, where 16 alone would leave them as TVM's plain conv2d.
    narrow_lanes: int = 0

    def block(self, size: int) -> int | None:
        """The vector width for `size` elements (channels of an NCHW[b]c block, an innermost loop): the lanes
        where they divide it, else narrow_lanes where those do, else None."""
        return next((width for width in (self.lanes, self.narrow_lanes) if width and size % width == 0), None)


def tuning_variants(spec: CpuSpec) -> list[CpuSpec]:
    """`spec` first, then the variants `kiln tune` measures for each kernel besides MetaSchedule's search:
    smaller register tiles (4 registers held back) and conv2d summed in one pass."""
    variants = [spec]
    for registers in (spec.registers, spec.registers - 4):
        for chunk_steps in (spec.chunk_steps, 0):
            variant = dataclasses.replace(spec, registers=registers, chunk_steps=chunk_steps)
            if variant not in variants:
                variants.append(variant)
    return variants


AVX2 = CpuSpec(lanes=8, registers=16, max_accumulators=12)  # 16 ymm registers: 12 accumulators + operands
# 32 zmm registers of 16 fp32 lanes (x86 targets with avx512f). 16 accumulators, not the 24 the registers would
# hold: with 24 the matmul rule picks 6 x 4 tiles for BERT's and ViT's rows, which ran slower than 4 x 4 on Zen 4.
AVX512 = CpuSpec(lanes=16, registers=32, max_accumulators=16, narrow_lanes=8)
NEON = CpuSpec(lanes=4, registers=32, max_accumulators=24)


def cpu_spec(target) -> CpuSpec | None:
    """The rules' parameters for an llvm target; None where they do not apply: on SVE, kiln's fixed-width
    vectors would replace LLVM's scalable-vector loops, so TVM's own pipeline builds it."""
    aarch64 = str(target.attrs.get("mtriple", "")).startswith("aarch64")
    if aarch64 and "+sve" in [str(a) for a in target.attrs.get("mattr", [])]:
        return None
    features = cpu_features(target)
    isa = Int8Isa.from_features(features, Family.AARCH64 if aarch64 else Family.X86)
    base = NEON if aarch64 else AVX512 if "avx512f" in features else AVX2
    return dataclasses.replace(base, int8=dot_product(isa))


@dataclass(frozen=True)
class Rule:
    """A named schedule for a whole PrimFunc: `applies` looks, `apply` transforms the schedule."""

    name: str
    applies: Callable[[Schedule], bool]
    apply: Callable[[Schedule, CpuSpec], None]
    # Schedule the function with 32-bit indices where its buffers allow: TVM partitions a loop split into a
    # partial last vector only over 32-bit indices (over 64-bit ones every vector became a gather and a scatter).
    int32_indices: bool = False


def with_int32_indices(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` indexed with 32-bit integers; unchanged where a buffer is symbolic, has 2**31 elements or more
    (ForceNarrowIndexToInt32 would wrap its indices) or holds int64 values (an argmax's: it refuses those)."""
    sch = Schedule(func)
    buffers = [region.source for block in blocks(sch) for region in (*sch.get(block).reads, *sch.get(block).writes)]
    if not all(isinstance(d, tirx.IntImm) for buffer in buffers for d in buffer.shape) \
            or max((math.prod(int(d) for d in buffer.shape) for buffer in buffers), default=0) >= 2 ** 31 \
            or any(buffer.dtype == "int64" for buffer in buffers):
        return func
    return tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]


def blocks(sch: Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def block_names(sch: Schedule) -> set[str]:
    return {sch.get(b).name_hint for b in blocks(sch)}


def has_opaque_block(sch: Schedule) -> bool:
    """Whether a block declares neither reads nor writes (TOPI's extern and hand-written kernels: sort, scan,
    NonMaxSuppression): the schedule cannot see which buffers it uses, so a rule inlining a producer it reads
    would drop that buffer. A body that is one such block, with no root block around it (TOPI's topk on CPU),
    counts too."""
    try:
        children = blocks(sch)
    except ScheduleError:
        return True
    return any(not block.reads and not block.writes for block in map(sch.get, children))


def is_reduction(sch: Schedule, block) -> bool:
    return any(iv.iter_type == REDUCE for iv in sch.get(block).iter_vars)


def inline_spatial(sch: Schedule, keep: frozenset[str] = frozenset()) -> None:
    """compute_inline every spatial block that is not an output (nor named in keep, nor a PRECOMPUTED table),
    until none can be."""
    progress = True
    while progress:
        progress = False
        outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
        for block in blocks(sch):
            name = sch.get(block).name_hint
            if name in keep or name in outputs or name.startswith(PRECOMPUTED) or is_reduction(sch, block):
                continue
            try:
                sch.compute_inline(block)
            except ScheduleError:  # e.g. a producer read with a different access pattern
                continue
            progress = True
            break


class SymbolicExtent(ValueError):
    """A loop whose extent is not a constant (a shape known only at run time): kiln's rules tile constant
    loops, so the PrimFunc is left to TVM's default handling."""


def extent(sch: Schedule, loop) -> int:
    value = sch.get(loop).extent
    if not isinstance(value, tirx.IntImm):
        raise SymbolicExtent(f"loop extent {value} is not a constant")
    return int(value)


def largest_divisor(n: int, cap: int) -> int:
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


def work(sch: Schedule, block) -> int:
    return math.prod(extent(sch, loop) for loop in sch.get_loops(block))


def parallel_outer(sch: Schedule, loops: list, chunks: int = 32) -> None:
    """Fuse as many outer loops as give >= `chunks` parallel iterations, and run them on the thread pool."""
    count, used = 1, 0
    while used < len(loops) and count < chunks:
        count *= extent(sch, loops[used])
        used += 1
    used = max(used, 1)
    sch.parallel(sch.fuse(*loops[:used]) if used > 1 else loops[0])


def fuse_epilogue(sch, write_back) -> None:
    """Inline the consumers (bias, activation, residual add) into the accumulator write-back. One that broadcasts
    the result to a larger shape (a squeeze-excitation's scale times the feature map) stays its own loop: TVM's
    reverse_compute_inline fails on it with an internal error rather than a ScheduleError."""
    shape = list(sch.get(write_back).writes[0].source.shape)
    while True:
        consumers = sch.get_consumers(write_back)
        if not consumers or list(sch.get(consumers[0]).writes[0].source.shape) != shape:
            return
        try:
            sch.reverse_compute_inline(consumers[0])
        except ScheduleError:  # e.g. a consumer reading other pixels: leave it as its own loop
            return


def vectorize_init(sch: Schedule, block, loop) -> None:
    """Split the zero-initialisation off a reduction at `loop`, vectorizing its innermost loop.

    Call it after vectorize/parallel: decompose_reduction must come last."""
    init = sch.decompose_reduction(block, loop)
    inner = sch.get_loops(init)[-1]
    if sch.get(inner).kind != tirx.ForKind.VECTORIZED:
        sch.vectorize(inner)


def tensorize(sch: Schedule, loop, intrinsic: str) -> None:
    """Replace `loop` with a dot-product intrinsic, registering kiln's intrinsics with TVM first."""
    register_intrinsics()
    sch.tensorize(loop, intrinsic)
