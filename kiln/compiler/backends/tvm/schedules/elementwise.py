"""Elementwise ops and layout transforms: vectorize the innermost loop, parallelize the outer ones."""

from __future__ import annotations

from kiln.compiler.backends.tvm.schedules.common import (MIN_PARALLEL_WORK, CpuSpec, Rule, blocks, extent,
                                                       inline_spatial, is_reduction, parallel_outer, work)

_SHARED_READERS = 4  # a block with this many reading blocks is computed once, not inlined into each


def schedule_block(sch, block, spec: CpuSpec) -> None:
    loops = list(sch.get_loops(block))
    if not loops:
        return
    total = work(sch, block)
    width = spec.block(extent(sch, loops[-1]))
    if width:
        outer, lanes = sch.split(loops[-1], [None, width])
        sch.vectorize(lanes)
        loops[-1] = outer
    if total >= MIN_PARALLEL_WORK:
        parallel_outer(sch, loops[:-1] or loops)


def _shared(sch) -> frozenset[str]:
    """The blocks that many others read into outputs larger than themselves (decoded boxes sliced per class and
    concatenated again): inlined, each element of theirs would be recomputed, index arithmetic included, for each
    output element that reads it. Where the outputs are no larger (x read four times by GELU's terms), the
    compiler computes the inlined value once per element anyway, and a loop of its own only adds a pass."""
    written = sum(work(sch, b) for b in sch.get_output_blocks(sch.get_sblock("root")))
    return frozenset(sch.get(b).name_hint for b in blocks(sch)
                     if len(sch.get_consumers(b)) >= _SHARED_READERS and written >= 2 * work(sch, b))


def _applies(sch) -> bool:
    return not any(is_reduction(sch, b) for b in blocks(sch))


def _apply(sch, spec: CpuSpec) -> None:
    inline_spatial(sch, _shared(sch))
    for block in blocks(sch):
        schedule_block(sch, block, spec)


ELEMENTWISE = Rule("elementwise", _applies, _apply)
