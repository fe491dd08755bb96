"""conv2d and depthwise conv in NCHW[b]c: register-blocked micro-kernels with the epilogue fused.

Loop nest (conv2d): parallel(n, oc/oc_t, oh/rows) . ic/chunk . rows . ow/reg . chunk . kh . kw . ib
. [oc_t x reg, the shorter inner] . vector(ob): reg x oc_t vector accumulators in registers (the last pixel
tile may be partial), summed over one chunk of input-channel blocks at a time into the task's output tile,
which bias/relu/residual/clip then turn into the output.
A conv whose input channels make one chunk keeps its accumulators in registers for the whole sum
(cache_write "local") and applies the epilogue as it writes them back. The padding block stays a separate
parallel loop. Depthwise: parallel(n, c/b, oh/rows) . [pad those rows] . rows . ow/reg . kh . kw . [reg]
. vector(b), the epilogue fused into the write-back.
The integer conv (integer.py) has the same nest with ib split into groups of 4, and its innermost
(ob, 4) loops tensorized with the target's int8 dot product (intrinsics.py); its requantization
is the epilogue."""

from __future__ import annotations

import math

from kiln.compiler.backends.tvm.kernels.compute import CONV2D, DEPTHWISE, PAD
from kiln.compiler.backends.tvm.kernels.integer import INT8_CONV, INT8_DEPTHWISE
from kiln.compiler.backends.tvm.kernels.intrinsics import DotProduct
from kiln.compiler.backends.tvm.schedules.common import (MIN_PARALLEL_WORK, CpuSpec, Rule, block_names, blocks, extent,
                                                       fuse_epilogue, inline_spatial, largest_divisor, vectorize_init,
                                                       tensorize, work)
from kiln.compiler.backends.tvm.schedules.elementwise import schedule_block as schedule_elementwise


def register_tile(out_width: int, oc_blocks: int, registers: int) -> tuple[int, int]:
    """A float conv's (reg output pixels, oc_t channel vectors) that fits `registers`: reg x oc_t accumulators,
    the operands the inner of the two unrolled loops keeps live (min(reg, oc_t): see tile_loops), one for
    the other operand, and one more where reg does not divide the width (the last tile is partial).

    ResNet-18's 7x7 layers ran 16% faster in (4, 2) tiles, the last one 3 wide, than in (7, 1); 12
    accumulators needing 17 registers ran 20-50% slower than 8 needing 11."""
    return _best_tile(out_width, oc_blocks, lambda reg, oc_t, partial: reg * oc_t + min(reg, oc_t) + 1 + partial
                      <= registers)


def int8_register_tile(out_width: int, oc_blocks: int, max_accumulators: int) -> tuple[int, int]:
    """The integer Winograd products' tile, and a direct conv's where the dot product is one instruction
    (DotProduct.pixel_tiles): reg dividing the width, reg x oc_t accumulators at most `max_accumulators`."""
    return _best_tile(out_width, oc_blocks, lambda reg, oc_t, partial: not partial
                      and reg * oc_t <= max_accumulators)


def int8_conv_tile(out_width: int, oc_blocks: int, window: bool, isa: DotProduct,
                   max_accumulators: int) -> tuple[int, int]:
    """A direct integer conv's tile (`window`: kh x kw > 1). Where the dot product is one instruction
    (DotProduct.pixel_tiles), int8_register_tile's pixels x channel blocks. Otherwise as many channel blocks
    as fit a share of the accumulators, then pixels (dividing the width) while they still fit.

    Channel-major tiles of 4 (3x3) or 8 (1x1) accumulators ran 10-30% faster on AVX2 than the squarer
    tiles of up to 10 that _best_tile picks (ResNet-18's 3x3 layers 105-130 -> 145-165 G multiply-adds/s,
    MobileNetV2's 1x1 up to 2x): LLVM interleaves the unrolled window steps of a larger tile and spills
    its accumulators. With VNNI on Zen 4 the pixel tiles ran ResNet-18's 3x3 layers 15-20% faster, since
    each weight vector loaded serves several pixels."""
    if isa.pixel_tiles:
        return int8_register_tile(out_width, oc_blocks, max_accumulators - INT8_OPERANDS)
    accumulators = max(1, round(max_accumulators * (INT8_WINDOW_SHARE if window else INT8_POINTWISE_SHARE)))
    oc_t = largest_divisor(oc_blocks, accumulators)
    return largest_divisor(out_width, accumulators // oc_t), oc_t


def _best_tile(out_width: int, oc_blocks: int, fits) -> tuple[int, int]:
    """The (reg, oc_t) that `fits` with the fewest loads per useful FMA: (reg + oc_t) / (reg * oc_t), times
    the pixels computed over those used; ties go to the wider pixel tile."""
    best = None
    for reg in range(1, out_width + 1):
        partial = out_width % reg != 0
        computed = -(-out_width // reg) * reg
        for oc_t in (1, 2, 3, 4):
            if oc_blocks % oc_t or not fits(reg, oc_t, partial):
                continue
            key = ((reg + oc_t) / (reg * oc_t) * computed / out_width, -reg)
            if best is None or key < best[0]:
                best = (key, reg, oc_t)
    return best[1], best[2]


def tile_loops(pixels, channels, reg: int, oc_t: int, integer: bool) -> list:
    """The register tile's two unrolled loops, the shorter one inner: a float FMA's operands are a broadcast
    pixel and a weight vector, and each of the inner loop's is kept live while the outer loop's is reused.
    The integer kernels keep channels outer (their dot product reads the pixel inside the intrinsic)."""
    if channels is None:
        return [pixels]
    return [pixels, channels] if not integer and oc_t < reg else [channels, pixels]


# Registers the int8 dot product needs besides its accumulators: the broadcast activations, the
# weights, and on AVX2 the int16 pair sums and the vector of ones.
INT8_OPERANDS = 2
# The share of the target's accumulators a direct integer conv's tile takes (int8_conv_tile): AVX2's 12
# give 4 with a kh x kw window, 8 for a 1x1 conv.
INT8_WINDOW_SHARE, INT8_POINTWISE_SHARE = 1 / 3, 2 / 3
# Output rows a depthwise conv computes per parallel task. Its input is padded per band of rows inside the
# task, where a whole padded copy would cost as much memory traffic as the conv (MobileNetV2 at batch 8: a
# stride-2 depthwise layer went from 6.6 to 2.6 ms); a band of 8 rows re-pads only 2 rows of 10.
DEPTHWISE_ROWS = 8
# Parallel tasks a chunked conv2d aims for, splitting its output rows into bands when channel blocks and
# images alone give fewer.
PARALLEL_TASKS = 16


def _schedule(sch, name: str, spec: CpuSpec) -> None:
    conv = sch.get_sblock(name)
    total = work(sch, conv)
    lanes_inner = []
    if name == CONV2D:
        n, oc, oh, ow, ob, ico, kh, kw, ici = sch.get_loops(conv)
        reg, oc_t = register_tile(extent(sch, ow), extent(sch, oc), spec.registers)
        reduce_inner = [ico, kh, kw, ici]
    elif name == INT8_CONV:
        n, oc, oh, ow, ob, ico, kh, kw, icg, k = sch.get_loops(conv)
        isa = spec.int8.for_lanes(extent(sch, ob))
        reg, oc_t = int8_conv_tile(extent(sch, ow), extent(sch, oc), extent(sch, kh) * extent(sch, kw) > 1, isa,
                                   spec.max_accumulators)
        reduce_inner, lanes_inner = [ico, kh, kw, icg], [k]
    else:
        n, oc, oh, ow, ob, kh, kw = sch.get_loops(conv)
        reg, oc_t = largest_divisor(extent(sch, ow), spec.lanes), 1
        reduce_inner = [kh, kw]
    owo, owi = sch.split(ow, [None, reg])
    oco, oci = sch.split(oc, [None, oc_t]) if oc_t > 1 else (oc, None)
    depthwise = name in (DEPTHWISE, INT8_DEPTHWISE)
    chunk = 0 if depthwise else _input_chunk(sch, reduce_inner, spec.chunk_steps)
    band = None
    if chunk:
        oh, band = sch.split(oh, [None, _band_rows(extent(sch, oh), extent(sch, n) * extent(sch, oco))])
        ico, in_chunk = sch.split(reduce_inner[0], [None, chunk])
        reduce_inner = [in_chunk, *reduce_inner[1:]]
    elif depthwise:
        oh, band = sch.split(oh, [None, largest_divisor(extent(sch, oh), DEPTHWISE_ROWS)])
    sch.reorder(n, oco, oh, *([ico] if chunk else []), *([band] if band else []), owo, *reduce_inner,
                *tile_loops(owi, oci, reg, oc_t, name == INT8_CONV), ob, *lanes_inner)
    write_back = sch.cache_write(conv, 0, "local")
    fuse_epilogue(sch, write_back)
    if not chunk:
        sch.reverse_compute_at(write_back, owo)
    if not lanes_inner:
        sch.vectorize(ob)
    sch.unroll(owi)
    if oci is not None:
        sch.unroll(oci)
    rows = sch.fuse(n, oco, oh)
    if chunk:  # the task's output tile, after its last chunk
        sch.reverse_compute_at(write_back, rows)
    sch.vectorize(sch.get_loops(write_back)[-1])
    if total >= MIN_PARALLEL_WORK:
        sch.parallel(rows)
    if depthwise:  # padded per band of rows, while they are in cache
        for padding in (b for b in sch.get_producers(conv) if sch.get(b).name_hint == PAD):
            sch.compute_at(padding, rows)
            sch.vectorize(sch.get_loops(padding)[-1])
    vectorize_init(sch, conv, ico if chunk else reduce_inner[0])
    if lanes_inner:
        tensorize(sch, sch.get_loops(conv)[-2], isa.intrinsic)
    done = (name, PAD) if depthwise else (name,)
    for block in blocks(sch):  # the conv's own blocks are now {name}_init, {name}_update, {name}_..._local
        if not sch.get(block).name_hint.startswith(done):
            schedule_elementwise(sch, block, spec)  # a conv2d's padding, and any epilogue left over


def _input_chunk(sch, reduce_loops: list, steps: int) -> int:
    """Input-channel blocks per chunk of a conv2d's sum (about `steps` kh x kw x group steps: enough that
    loading and storing the accumulators once per chunk costs little), or 0 for one pass over them all.

    Chunks keep each chunk's weights in L1 while every output row of the task uses them; one pass per pixel
    tile streams the whole weight slice once per row from L2 or memory (ResNet-18's 7x7 and 14x14 layers,
    weights of 2-9 MB, were 15-20% slower in the model)."""
    if not steps:
        return 0
    blocks_in, *per_block = (extent(sch, loop) for loop in reduce_loops)
    chunk = largest_divisor(blocks_in, max(1, steps // math.prod(per_block)))
    return chunk if chunk < blocks_in else 0


def _band_rows(height: int, tasks: int) -> int:
    """The tallest band of output rows that still gives PARALLEL_TASKS tasks (or one row per task)."""
    bands = -(-PARALLEL_TASKS // tasks)
    return largest_divisor(height, max(1, height // bands))


def _rule(name: str) -> Rule:
    def applies(sch) -> bool:
        return name in block_names(sch)

    def apply(sch, spec: CpuSpec) -> None:
        inline_spatial(sch, keep=frozenset({name, PAD}))
        _schedule(sch, name, spec)

    names = {CONV2D: "conv2d_nchwc", DEPTHWISE: "depthwise_nchwc", INT8_CONV: "conv2d_int8",
             INT8_DEPTHWISE: "depthwise_int8"}
    return Rule(names[name], applies, apply)


CONV2D_NCHWC = _rule(CONV2D)
DEPTHWISE_NCHWC = _rule(DEPTHWISE)
CONV2D_INT8 = _rule(INT8_CONV)
DEPTHWISE_INT8 = _rule(INT8_DEPTHWISE)
