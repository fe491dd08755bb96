"""Reductions (dense/matmul, its constant weights packed [N/b, K, b] by layout.py; pooling, mean, softmax sums).

Parallel over the fused spatial loops; a lanes-divisible innermost spatial loop moves below the
reduction loops and is vectorized, so each FMA updates a whole vector of outputs. A matmul
[..., rows, K] x [K, N] also keeps a tile of rows x column vectors in registers under the K loop, so each
weight vector loaded serves every row of the tile (at batch 8 the weights are read once, not eight times)
and each row's broadcast every vector."""

from __future__ import annotations

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


def matmul_tile(rows: int, vectors: int, spec: CpuSpec) -> tuple[int, int]:
    """The register tile (rows, column vectors) of a matmul with `rows` rows and `vectors` column vectors: each
    k step loads one broadcast per row and one weight vector per column vector for rows x vectors FMAs, so the
    fewest loads per FMA, counting the rows a last partial tile computes in vain (ViT's 197 rows: 4 x 3, 50 tiles;
    1 x 6 took twice as long), with the accumulators, the weight vectors and a broadcast in the registers."""
    def cost(tile: tuple[int, int]) -> tuple[float, int]:
        r, v = tile
        return (r + v) / (r * v) * (-(-rows // r) * r) / rows, -r

    return min(((r, v) for r in range(1, min(rows, spec.max_accumulators) + 1)
                for v in range(1, vectors + 1) if vectors % v == 0
                and r * v <= spec.max_accumulators and r * v + v + 1 <= spec.registers), key=cost)


def _schedule_matmul(sch, block, spec: CpuSpec) -> None:
    """parallel(column tiles, row tiles) . k . [rows] . [vectors] . vector(lanes), accumulators in registers
    and the bias/activation applied as they are written back. Column tiles outermost: each thread streams its
    weight columns once, the activations (smaller) from cache; row tiles outermost streamed all the weights
    once per row tile (BERT-base's FFN: 1.3-1.5x slower). Columns that end in a partial vector: parallel(row tiles)
    . column tiles . k ..., see below."""
    total = work(sch, block)
    *leading, cols, k = sch.get_loops(block)
    row_tile, vectors = matmul_tile(extent(sch, leading[-1]), -(-extent(sch, cols) // spec.lanes), spec)
    # tiles of the last data dim, M: a batched matmul's tile never straddles two of its [M, K] matrices
    m_outer, rows_inner = sch.split(leading[-1], [None, row_tile])  # a last partial tile is predicated
    rows_outer = sch.fuse(*leading[:-1], m_outer) if len(leading) > 1 else m_outer
    # and a last partial column tile (ViT's attention scores have 197 keys), so no width falls back to the generic
    # reduction schedule's unvectorized loops. Such columns put a per-lane bound on every column tile whose index
    # is a variable, and TVM's vectorizer then emits scalar code for the whole tile: column tiles inside each row
    # tile, their loop partitioned (LoopPartition), leave that bound on the last tile alone.
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
    sch.unroll(rows_inner)
    sch.unroll(cols_inner)
    sch.vectorize(lanes)
    written = sch.get_loops(write_back)[-1]
    sch.vectorize(sch.split(written, [None, spec.lanes])[1] if vectors > 1 else written)
    vectorize_init(sch, block, k)


def _applies(sch) -> bool:
    return any(is_reduction(sch, b) for b in blocks(sch))


def _apply(sch, spec: CpuSpec) -> None:
    inline_spatial(sch)
    for name in [sch.get(block).name_hint for block in blocks(sch)]:
        if name not in block_names(sch):  # inlined into a matmul's write-back
            continue
        block = sch.get_sblock(name)
        (schedule_block if is_reduction(sch, block) else schedule_elementwise)(sch, block, spec)


REDUCTION = Rule("reduction", _applies, _apply)
