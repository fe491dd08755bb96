"""The Winograd conv2d (compute.conv2d_winograd, integer.conv2d_winograd_int8): its three blocks, each a
parallel loop over the whole tensor.

Input transform: parallel(n, ic/ib) . tiles . [16 positions] . vector(ib).
Products: parallel(16, n, oc/oc_t) . tiles/reg . ic . [reg x oc_t accumulators] . vector(ob), the register
tile of a conv (conv.py) with the tiles as its pixels; the integer one sums int16 pairs, tensorized with the
target's pair multiply-add.
Output transform: parallel(n, oc/ob) . tile rows . tile columns . [2 x 2 outputs] . vector(ob), with the
epilogue (bias/relu/residual, or the requantization) fused in."""

from __future__ import annotations

from kiln.compiler.backends.tvm.kernels.compute import WINOGRAD, WINOGRAD_IN, WINOGRAD_OUT
from kiln.compiler.backends.tvm.kernels.integer import INT8_WINOGRAD, INT8_WINOGRAD_IN, INT8_WINOGRAD_OUT
from kiln.compiler.backends.tvm.schedules.common import (CpuSpec, Rule, block_names, blocks, extent, fuse_epilogue,
                                                       inline_spatial, tensorize, vectorize_init)
from kiln.compiler.backends.tvm.schedules.conv import INT8_OPERANDS, int8_register_tile, register_tile, tile_loops
from kiln.compiler.backends.tvm.schedules.elementwise import schedule_block as schedule_elementwise


def _input_transform(sch, name: str) -> None:
    xi, n, c, t, lanes = sch.get_loops(sch.get_sblock(name))
    sch.reorder(n, c, t, xi, lanes)
    sch.unroll(xi)  # the (p, q, s) of each position become constants
    sch.vectorize(lanes)
    sch.parallel(sch.fuse(n, c))


def _products(sch, name: str, spec: CpuSpec) -> None:
    block = sch.get_sblock(name)
    xi, n, oc, t, ob, ico, *reduce_inner = sch.get_loops(block)
    pair = []
    if name == INT8_WINOGRAD:  # the int16 pair goes inside the intrinsic
        pair = [reduce_inner.pop()]
        reg, oc_t = int8_register_tile(extent(sch, t), extent(sch, oc), spec.max_accumulators - INT8_OPERANDS)
    else:
        reg, oc_t = register_tile(extent(sch, t), extent(sch, oc), spec.registers)
    to, ti = sch.split(t, [None, reg])
    oco, oci = sch.split(oc, [None, oc_t])
    sch.reorder(xi, n, oco, to, ico, *reduce_inner, *tile_loops(ti, oci, reg, oc_t, name == INT8_WINOGRAD), ob, *pair)
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, to)
    if name == WINOGRAD:
        sch.vectorize(ob)
    sch.unroll(ti)
    sch.unroll(oci)
    sch.vectorize(sch.get_loops(write_back)[-1])
    sch.parallel(sch.fuse(xi, n, oco))
    vectorize_init(sch, block, ico)
    if name == INT8_WINOGRAD:
        tensorize(sch, sch.get_loops(block)[-2], spec.int8.pair_intrinsic)


def _output_transform(sch, name: str) -> None:
    block = sch.get_sblock(name)
    fuse_epilogue(sch, block)
    n, oc, y, x, ob = sch.get_loops(block)
    yo, yi = sch.split(y, [None, 2])
    xo, xi = sch.split(x, [None, 2])
    sch.reorder(n, oc, yo, xo, yi, xi, ob)
    sch.unroll(yi)  # the output's row and column in its tile become constants
    sch.unroll(xi)
    sch.vectorize(ob)
    sch.parallel(sch.fuse(n, oc))


def _rule(name: str, names: tuple[str, str, str], rule_name: str) -> Rule:
    tiles, products, output = names

    def apply(sch, spec: CpuSpec) -> None:
        inline_spatial(sch, keep=frozenset(names))
        _input_transform(sch, tiles)
        _products(sch, products, spec)
        _output_transform(sch, output)
        for block in blocks(sch):  # an epilogue the output transform could not take in
            if not sch.get(block).name_hint.startswith(names):
                schedule_elementwise(sch, block, spec)

    return Rule(rule_name, lambda sch: name in block_names(sch), apply)


CONV2D_WINOGRAD = _rule(WINOGRAD, (WINOGRAD_IN, WINOGRAD, WINOGRAD_OUT), "conv2d_winograd")
CONV2D_WINOGRAD_INT8 = _rule(INT8_WINOGRAD, (INT8_WINOGRAD_IN, INT8_WINOGRAD, INT8_WINOGRAD_OUT),
                             "conv2d_winograd_int8")
