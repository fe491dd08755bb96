"""Softmax over the last axis (attention's scores), as TOPI computes it: the row's max, exp(x - max), their sum,
each exp over the sum; elementwise ops after it (a NaN guard) applied as it is written.

Parallel over the rows; each row's max, exp and sum are computed under the row loop, the exp once into a row
buffer (inlined, it ran twice: in the sum and in the normalization), the exp and the normalization vectorized
across the row. A row that ends in a partial vector (ViT's 197 keys) has its vector loop partitioned, so only
the last vector is bounded per lane (a per-lane bound in every vector made TVM emit scalar code for them all).
A row of whole vectors sums (and maxes) into one vector of partial results, then across its lanes:

    parallel(rows) . [steps . vector(lanes) . partial max] . lanes . max
                   . vector(row) . exp
                   . [steps . vector(lanes) . partial sum] . lanes . sum
                   . vector(row) . exp / sum"""

from __future__ import annotations

from kiln.compiler.backends.tvm.schedules.common import (MIN_PARALLEL_WORK, CpuSpec, Rule, block_names, blocks,
                                                       extent, fuse_epilogue, inline_spatial, is_reduction,
                                                       largest_divisor, work)

MAX, SUM, NORM = "T_softmax_maxelem", "T_softmax_expsum", "T_softmax_norm"
DELTA, EXP, FAST_EXP = "T_softmax_delta", "T_softmax_exp", "T_fast_exp"  # fast_softmax: delta, then its exp
MIN_REDUCE_LANES = 4  # the fewest partial results a row's max or sum is worth splitting into


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


def _partial_reduce(sch, name: str, spec: CpuSpec):
    """The row's max or sum as a block of partial results, one per lane, which the rule vectorizes, and the
    reduction of those: the plain loop carries each step's result into the next (a chain of dependent max or
    add instructions). None where the row splits into too few lanes: rfactor takes no partial vector, so ViT's
    197 keys stay one loop."""
    loop = sch.get_loops(sch.get_sblock(name))[-1]
    columns = extent(sch, loop)
    lanes = largest_divisor(columns, spec.lanes)
    if lanes < MIN_REDUCE_LANES or columns == lanes:  # (one step: nothing to carry)
        return None
    _, inner = sch.split(loop, [None, lanes])
    return sch.rfactor(inner, 0)


def _apply(sch, spec: CpuSpec) -> None:
    exp = EXP if EXP in block_names(sch) else FAST_EXP
    inline_spatial(sch, keep=frozenset({MAX, SUM, NORM, exp}))  # fast_softmax's delta, an epilogue's producers
    norm = sch.get_sblock(NORM)
    fuse_epilogue(sch, norm)  # e.g. GPT-2's export: where(isnan(softmax), 0, softmax)
    total = work(sch, norm)
    partials = {name: _partial_reduce(sch, name, spec) for name in (MAX, SUM)}
    *rows, _ = sch.get_loops(norm)
    row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    for block in (sch.get_sblock(SUM), partials[SUM], sch.get_sblock(exp), sch.get_sblock(MAX), partials[MAX]):
        if block is not None:
            sch.compute_at(block, row)
    for name in (exp, NORM):
        _vectorize_row(sch, sch.get_loops(sch.get_sblock(name))[-1], spec)
    for partial in partials.values():
        if partial is not None:  # (lanes, steps) -> steps . vector(lanes)
            *_, lanes, steps = sch.get_loops(partial)
            sch.reorder(steps, lanes)
            sch.vectorize(lanes)
    if total >= MIN_PARALLEL_WORK:
        sch.parallel(row)


SOFTMAX = Rule("softmax", _applies, _apply)
