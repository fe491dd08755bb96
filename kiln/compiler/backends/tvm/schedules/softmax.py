"""Softmax over the last axis (attention's scores), as TOPI or kiln (kernels/compute.py: the sum's reciprocal)
computes it: the row's max, exp(x - max), their sum, each exp over the sum; elementwise ops after it (a NaN guard)
applied as it is written.

Parallel over the rows; each row's max, exp and sum are computed under the row loop, the exp once into a row
buffer (inlined, it ran twice: in the sum and in the normalization), the exp and the normalization vectorized
across the row. The max and the sum go into one vector of partial results, then across its lanes by halves (a
vector of half the lanes at each step, where a loop over the lanes is a chain of dependent instructions). A row
that ends in a partial vector (ViT's 197 keys) has its vector loops partitioned, so only the last vector is
bounded per lane (a per-lane bound in every vector made TVM emit scalar code for them all):

    parallel(rows) . [steps . vector(lanes) . partial max] . [2 . vector(lanes / 2) . max] ... 2 . max
                   . vector(row) . exp
                   . [steps . vector(lanes) . partial sum] . [2 . vector(lanes / 2) . sum] ... 2 . sum
                   . vector(row) . exp / sum"""

from __future__ import annotations

from kiln.compiler.backends.tvm.kernels.compute import SOFTMAX_EXP as FAST_EXP
from kiln.compiler.backends.tvm.kernels.compute import SOFTMAX_MAX as MAX
from kiln.compiler.backends.tvm.kernels.compute import SOFTMAX_NORM as NORM
from kiln.compiler.backends.tvm.kernels.compute import SOFTMAX_SUM as SUM
from kiln.compiler.backends.tvm.schedules.common import (MIN_PARALLEL_WORK, CpuSpec, Rule, block_names, blocks,
                                                       extent, fuse_epilogue, inline_spatial, is_reduction, work)

EXP = "T_softmax_exp"  # TOPI's softmax with libm's exp; its fast_softmax and kiln's name theirs FAST_EXP


def _applies(sch) -> bool:
    names = block_names(sch)
    if not {MAX, SUM, NORM} <= names or not names & {EXP, FAST_EXP}:
        return False
    if any(is_reduction(sch, block) for block in blocks(sch) if sch.get(block).name_hint not in (MAX, SUM)):
        return False
    norm = sch.get(sch.get_sblock(NORM))
    return int(norm.annotations.get("axis", -1)) == len(norm.iter_vars) - 1


def _vectorize_row(sch, loop, spec: CpuSpec) -> None:
    columns = extent(sch, loop)
    if columns < spec.lanes:
        return
    outer, lanes = sch.split(loop, [None, spec.lanes])
    sch.vectorize(lanes)
    if columns % spec.lanes:
        sch.annotate(outer, "pragma_loop_partition_hint", 1)


def _partial_reduce(sch, name: str, row, spec: CpuSpec):
    """The row's max or sum (a block under the `row` loop) as a vector of partial results, one per lane, then
    across the lanes by halves: a plain loop carries each step's result into the next (a chain of dependent max or
    add instructions). A row that ends in a partial vector bounds the lanes of its last step only (the steps loop
    partitioned, as in `_vectorize_row`). Each rfactor puts its partials under a copy of the row loop, merged back
    into `row`: the row loop, which the caller uses from then on."""
    loop = sch.get_loops(sch.get_sblock(name))[-1]
    columns = extent(sch, loop)
    if columns <= spec.lanes:  # (one step: nothing to carry)
        return row
    _, inner = sch.split(loop, [None, spec.lanes])
    partial = sch.rfactor(inner, -1)  # the partials last: a row's lanes side by side
    copy, *_, steps, vector = sch.get_loops(partial)
    sch.vectorize(vector)
    if columns % spec.lanes:
        sch.annotate(steps, "pragma_loop_partition_hint", 1)
    copies, lanes = [copy], spec.lanes
    while lanes > 2:  # the lanes' halves added (or maxed) as vectors: lanes / 2, ..., 2 partials left
        lanes //= 2
        _, half = sch.split(sch.get_loops(sch.get_sblock(name))[-1], [2, lanes])
        halves = sch.rfactor(half, -1)
        sch.vectorize(sch.get_loops(halves)[-1])
        copies.append(sch.get_loops(halves)[0])
    return sch.merge(*copies, sch.get_loops(sch.get_sblock(name))[0])


def _apply(sch, spec: CpuSpec) -> None:
    exp = EXP if EXP in block_names(sch) else FAST_EXP
    inline_spatial(sch, keep=frozenset({MAX, SUM, NORM, exp}))  # fast_softmax's delta, an epilogue's producers
    norm = sch.get_sblock(NORM)
    fuse_epilogue(sch, norm)  # e.g. GPT-2's export: where(isnan(softmax), 0, softmax)
    total = work(sch, norm)
    *rows, _ = sch.get_loops(norm)
    row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    for name in (SUM, exp, MAX):  # each reduction split while it is the row's first block, as rfactor needs
        sch.compute_at(sch.get_sblock(name), row)
        if name != exp:
            row = _partial_reduce(sch, name, row, spec)
    for name in (exp, NORM):
        _vectorize_row(sch, sch.get_loops(sch.get_sblock(name))[-1], spec)
    if total >= MIN_PARALLEL_WORK:
        sch.parallel(row)


SOFTMAX = Rule("softmax", _applies, _apply, int32_indices=True)
