"""Reductions (dense/matmul, its constant weights packed [N/b, K, b] by layout.py; pooling, mean, softmax sums).

Parallel over the fused spatial loops; a lanes-divisible innermost spatial loop moves below the
reduction loops and is vectorized, so each FMA updates a whole vector of outputs. A matmul
[rows, K] x [K, N] also keeps a tile of rows in registers under the K loop, so each weight vector
loaded serves every row of the tile (at batch 8 the weights are read once, not eight times)."""

from __future__ import annotations

from kiln.compiler.backends.tvm.schedules.common import (MIN_PARALLEL_WORK, REDUCE, SPATIAL, CpuSpec, Rule, block_names,
                                                       blocks, extent, fuse_epilogue, inline_spatial, is_reduction,
                                                       largest_divisor, vectorize_init, work)
from kiln.compiler.backends.tvm.kernels.compute import MATMUL
from kiln.compiler.backends.tvm.schedules.elementwise import schedule_block as schedule_elementwise


def schedule_block(sch, block, spec: CpuSpec) -> None:
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    if len(loops) != len(kinds):  # loops already reshaped: leave it
        return
    if sch.get(block).name_hint == MATMUL and kinds == [SPATIAL, SPATIAL, REDUCE] \
            and extent(sch, loops[1]) % spec.lanes == 0:
        _schedule_matmul(sch, block, spec)
        return
    spatial = [loop for loop, kind in zip(loops, kinds) if kind == SPATIAL]
    reduce = [loop for loop, kind in zip(loops, kinds) if kind == REDUCE]
    if not spatial or not reduce:
        return
    total = work(sch, block)
    lanes = None
    if extent(sch, spatial[-1]) % spec.lanes == 0:
        outer, lanes = sch.split(spatial[-1], [None, spec.lanes])
        spatial[-1] = outer
        sch.reorder(*spatial, *reduce, lanes)
    if total >= MIN_PARALLEL_WORK:
        sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
    if lanes is not None:
        sch.vectorize(lanes)
        vectorize_init(sch, block, reduce[0])


def _schedule_matmul(sch, block, spec: CpuSpec) -> None:
    """parallel(row tiles, column vectors) . k . [rows] . vector(lanes), accumulators in registers and
    the bias/activation applied as they are written back."""
    total = work(sch, block)
    rows, cols, k = sch.get_loops(block)
    row_tile = largest_divisor(extent(sch, rows), spec.max_accumulators)
    rows_outer, rows_inner = sch.split(rows, [None, row_tile])
    cols_outer, lanes = sch.split(cols, [None, spec.lanes])
    sch.reorder(rows_outer, cols_outer, k, rows_inner, lanes)
    write_back = sch.cache_write(block, 0, "local")
    fuse_epilogue(sch, write_back)
    sch.reverse_compute_at(write_back, cols_outer)
    tiles = sch.fuse(rows_outer, cols_outer)
    if total >= MIN_PARALLEL_WORK:
        sch.parallel(tiles)
    sch.unroll(rows_inner)
    sch.vectorize(lanes)
    sch.vectorize(sch.get_loops(write_back)[-1])
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
