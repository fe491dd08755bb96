"""Reductions (dense/matmul, its constant weights packed [N/b, K, b] by layout.py; pooling, mean, softmax sums).

Parallel over the fused spatial loops; a lanes-divisible innermost spatial loop moves below the
reduction loops and is vectorized, so each FMA updates a whole vector of outputs. A matmul
[..., rows, K] x [K, N] also keeps a tile of rows x column vectors in registers under the K loop, so each
weight vector loaded serves every row of the tile (at batch 8 the weights are read once, not eight times)
and each row's broadcast every vector. A batched matmul whose matrices each have their own B (attention's
Q K^T and P V) runs one matrix at a time per thread, its last partial row and column tiles partitioned off.
The rule schedules over 32-bit indices: TVM partitions loops only over those."""

from __future__ import annotations

import math

from tvm import tirx

from kiln.compiler.backends.tvm.kernels.compute import MATMUL
from kiln.compiler.backends.tvm.schedules.common import (MIN_PARALLEL_WORK, REDUCE, SPATIAL, CpuSpec, Rule, block_names,
                                                       blocks, extent, fuse_epilogue, inline_spatial, is_reduction,
                                                       vectorize_init, work)
from kiln.compiler.backends.tvm.schedules.elementwise import schedule_block as schedule_elementwise


def schedule_block(sch, block, spec: CpuSpec) -> None:
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    if len(loops) != len(kinds):  # loops already reshaped: leave it
        return
    if sch.get(block).name_hint == MATMUL and len(kinds) >= 3 and kinds == [SPATIAL] * (len(kinds) - 1) + [REDUCE] \
            and extent(sch, loops[-2]) >= spec.lanes:
        _schedule_matmul(sch, block, spec)
        return
    spatial = [loop for loop, kind in zip(loops, kinds) if kind == SPATIAL]
    reduce = [loop for loop, kind in zip(loops, kinds) if kind == REDUCE]
    if not spatial or not reduce:
        return
    total = work(sch, block)
    lanes, width = None, spec.block(extent(sch, spatial[-1]))
    if width:
        outer, lanes = sch.split(spatial[-1], [None, width])
        spatial[-1] = outer
        sch.reorder(*spatial, *reduce, lanes)
    if total >= MIN_PARALLEL_WORK:
        sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
    if lanes is not None:
        sch.vectorize(lanes)
        vectorize_init(sch, block, reduce[0])


def matmul_tile(rows: int, vectors: int, spec: CpuSpec, partial: bool = False) -> tuple[int, int]:
    """The register tile (rows, column vectors) of a matmul with `rows` rows and `vectors` column vectors: each
    k step loads one broadcast per row and one weight vector per column vector for rows x vectors FMAs, so the
    fewest loads per FMA, counting the rows a last partial tile computes in vain (ViT's 197 rows: 4 x 3, 50 tiles;
    1 x 6 took twice as long), with the accumulators, the weight vectors and a broadcast in the registers.
    `partial`: the tile's vectors need not divide `vectors`; the last column tile holds the rest and computes only
    those (its loop is partitioned), at its own loads per FMA. A prime count (ViT's 13 vectors of keys) then still
    gets a tile of several rows rather than one row of every vector."""
    def cost(tile: tuple[int, int]) -> tuple[float, int]:
        r, v = tile
        rest = vectors % v
        loads = (vectors - rest) * (r + v) / (r * v) + (rest and rest * (r + rest) / (r * rest))
        return loads / vectors * (-(-rows // r) * r) / rows, -r

    return min(((r, v) for r in range(1, min(rows, spec.max_accumulators) + 1)
                for v in range(1, vectors + 1) if (partial or vectors % v == 0)
                and r * v <= spec.max_accumulators and r * v + v + 1 <= spec.registers), key=cost)


def _schedule_matmul(sch, block, spec: CpuSpec) -> None:
    """parallel(column tiles, row tiles) . k . [rows] . [vectors] . vector(lanes), accumulators in registers
    and the bias/activation applied as they are written back. Column tiles outermost: each thread streams its
    weight columns once, the activations (smaller) from cache; row tiles outermost streamed all the weights
    once per row tile (BERT-base's FFN: 1.3-1.5x slower). Columns that end in a partial vector: parallel(row tiles)
    . column tiles . k ..., see below. Matrices that each have their own B (attention): _schedule_batched."""
    total = work(sch, block)
    *leading, cols, k = sch.get_loops(block)
    # over 64-bit indices (a buffer too large for 32-bit ones) TVM would not partition _schedule_batched's loops
    if math.prod(extent(sch, loop) for loop in leading[:-1]) > 1 and _per_matrix_weights(sch, block) \
            and str(sch.get(k).loop_var.ty) == "int32":
        _schedule_batched(sch, block, spec)
        return
    row_tile, vectors = matmul_tile(extent(sch, leading[-1]), -(-extent(sch, cols) // spec.lanes), spec)
    # tiles of the last data dim, M: a batched matmul's tile never straddles two of its [M, K] matrices
    m_outer, rows_inner = sch.split(leading[-1], [None, row_tile])  # a last partial tile is predicated
    rows_outer = sch.fuse(*leading[:-1], m_outer) if len(leading) > 1 else m_outer
    # and a last partial column tile (ViT's attention scores have 197 keys), so no width falls back to the generic
    # reduction schedule's unvectorized loops. Such columns put a per-lane bound on every column tile whose index
    # is a variable, and TVM's vectorizer then emits scalar code for the whole tile: column tiles inside each row
    # tile, their loop partitioned (LoopPartition, over the rule's 32-bit indices), leave that bound on the last tile
    # alone.
    ragged = extent(sch, cols) % spec.lanes != 0
    cols_outer, cols_inner, lanes = sch.split(cols, [None, vectors, spec.lanes])
    if ragged:
        sch.reorder(rows_outer, cols_outer, k, rows_inner, cols_inner, lanes)
    else:
        sch.reorder(cols_outer, rows_outer, k, rows_inner, cols_inner, lanes)
    write_back = sch.cache_write(block, 0, "local")
    fuse_epilogue(sch, write_back)
    sch.reverse_compute_at(write_back, cols_outer if ragged else rows_outer)
    if ragged:
        sch.annotate(cols_outer, "pragma_loop_partition_hint", 1)
    tiles = rows_outer if ragged else sch.fuse(cols_outer, rows_outer)
    if total >= MIN_PARALLEL_WORK:
        sch.parallel(tiles)
    _register_tile(sch, block, write_back, k, (rows_inner, cols_inner, lanes), vectors > 1, spec)


def _per_matrix_weights(sch, block) -> bool:
    """Whether the operand read along the columns (B) differs between the matrices of a batched matmul (attention),
    rather than one B that every matrix shares (a dense layer's weights: the matmul path reads them once for the
    whole batch)."""
    stmt = sch.get(block)
    *batch, _, column, _ = [iv.var for iv in stmt.iter_vars]
    written = [region.source.same_as for region in stmt.writes]
    for region in stmt.reads:
        if any(f(region.source) for f in written):
            continue
        used = [var for r in region.region for var in tirx.analysis.undefined_vars(r.min)]
        if any(var.same_as(column) for var in used):
            return any(var.same_as(b) for var in used for b in batch)
    return False


def _schedule_batched(sch, block, spec: CpuSpec) -> None:
    """parallel(matrices) . row tiles . column tiles . k . [rows] . [vectors] . vector(lanes), accumulators in
    registers, the epilogue applied as they are written back.

    One matrix at a time per thread: its A row tile stays in L1 while every column tile passes over it, its B
    (attention's K^T or V: one head's) in L2. The tile's vectors need not divide the columns' (ViT's 197 keys:
    13 vectors, prime, which left one row of all 13 vectors, each weight vector loaded for one FMA), so the last
    column tile may be partial, and so may the last row tile (197 queries). Both loops are partitioned
    (LoopPartition: it needs the rule's 32-bit indices), so every other tile runs without a bound per row or per
    lane, and so is the loop over a tile's vectors where the columns end in a partial vector, so only that vector
    keeps its bound: a per-lane bound makes TVM's vectorizer emit scalar code for the whole loop it is in (LLVM
    re-vectorizes the few columns of that last vector once it is unrolled). Neither tile loop joins the parallel
    loop: a fused loop is not partitioned, and the accumulators' buffer is allocated once per parallel iteration
    (a workspace call from 1 KiB, a 4 x 4 tile)."""
    total = work(sch, block)
    *leading, cols, k = sch.get_loops(block)
    *batch, m = leading
    rows, columns = extent(sch, m), extent(sch, cols)
    row_tile, vector_tile = matmul_tile(rows, -(-columns // spec.lanes), spec, partial=True)
    rows_outer, rows_inner = sch.split(m, [None, row_tile])
    cols_outer, cols_inner, lanes = sch.split(cols, [None, vector_tile, spec.lanes])
    sch.reorder(*batch, rows_outer, cols_outer, k, rows_inner, cols_inner, lanes)
    write_back = sch.cache_write(block, 0, "local")
    fuse_epilogue(sch, write_back)
    sch.reverse_compute_at(write_back, cols_outer)
    if columns % (vector_tile * spec.lanes):
        sch.annotate(cols_outer, "pragma_loop_partition_hint", 1)
    if columns % spec.lanes:
        sch.annotate(cols_inner, "pragma_loop_partition_hint", 1)
    if rows % row_tile:
        sch.annotate(rows_outer, "pragma_loop_partition_hint", 1)
    if total >= MIN_PARALLEL_WORK:
        sch.parallel(sch.fuse(*batch))
    _register_tile(sch, block, write_back, k, (rows_inner, cols_inner, lanes), vector_tile > 1, spec)


def _applies(sch) -> bool:
    return any(is_reduction(sch, b) for b in blocks(sch))


def _apply(sch, spec: CpuSpec) -> None:
    inline_spatial(sch)
    for name in [sch.get(block).name_hint for block in blocks(sch)]:
        if name not in block_names(sch):  # inlined into a matmul's write-back
            continue
        block = sch.get_sblock(name)
        (schedule_block if is_reduction(sch, block) else schedule_elementwise)(sch, block, spec)


# 32-bit indices: the matmul schedules' partitioned loops (pragma_loop_partition_hint) stay unpartitioned over 64-bit
# ones, and their per-lane bounds then make every column tile scalar
REDUCTION = Rule("reduction", _applies, _apply, int32_indices=True)


def _register_tile(sch, block, write_back, k, loops, several_vectors: bool, spec: CpuSpec) -> None:
    """The tile's rows and vectors unrolled, its lanes and its write-back vectorized, its init too (both paths)."""
    rows_inner, cols_inner, lanes = loops
    sch.unroll(rows_inner)
    sch.unroll(cols_inner)
    sch.vectorize(lanes)
    written = sch.get_loops(write_back)[-1]
    sch.vectorize(sch.split(written, [None, spec.lanes])[1] if several_vectors else written)
    vectorize_init(sch, block, k)
