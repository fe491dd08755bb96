"""Reductions (dense/matmul with weights packed [K, N] at import, pooling, mean, softmax sums).

Parallel over the fused spatial loops; a lanes-divisible innermost spatial loop moves below the
reduction loops and is vectorized, so each FMA updates a whole vector of outputs."""

from __future__ import annotations

from kiln.compiler.backends.tvm.schedules.common import (MIN_PARALLEL_WORK, REDUCE, SPATIAL, CpuSpec, Rule, blocks,
                                                       extent, inline_spatial, is_reduction, vectorize_init, work)
from kiln.compiler.backends.tvm.schedules.elementwise import schedule_block as schedule_elementwise


def schedule_block(sch, block, spec: CpuSpec) -> None:
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    if len(loops) != len(kinds):  # loops already reshaped: leave it
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


def _applies(sch) -> bool:
    return any(is_reduction(sch, b) for b in blocks(sch))


def _apply(sch, spec: CpuSpec) -> None:
    inline_spatial(sch)
    for block in blocks(sch):
        (schedule_block if is_reduction(sch, block) else schedule_elementwise)(sch, block, spec)


REDUCTION = Rule("reduction", _applies, _apply)
