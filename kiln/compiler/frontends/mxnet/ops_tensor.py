"""Converters for MXNet's tensor ops: arithmetic, comparisons, scalar ops, shapes, slicing, reductions.

Factories (`binary`, `scalar`, ...) make the one-line converters of op families; the op table in
`ops.py` names every MXNet op explicitly.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kiln.compiler.frontends.mxnet.attrs import Attrs, Unsupported
from kiln.compiler.frontends.mxnet.builder import GraphBuilder
from kiln.compiler.frontends.mxnet.reshape import infer_reshape

Converter = Callable[[GraphBuilder, list, Attrs], "str | list[str]"]
_COMPARISONS = frozenset({"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "NotEqual"})
_INT64_MAX, _INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def _apply(g: GraphBuilder, onnx_op: str, a: str, b: str) -> str:
    """One binary ONNX op; comparisons return 0/1 in the operands' type, as MXNet's do."""
    if onnx_op == "NotEqual":
        return g.cast(g.op("Not", [g.op("Equal", [a, b])]), g.dtype(a))
    if onnx_op == "Mod":
        return _mod(g, a, b)
    result = g.op(onnx_op, [a, b])
    return g.cast(result, g.dtype(a)) if onnx_op in _COMPARISONS else result


def _mod(g: GraphBuilder, a: str, b: str) -> str:
    """MXNet's mod: the remainder takes the divisor's sign (Python's %), and is 0 where the divisor is 0."""
    zero = g.const_like(0, b)
    by_zero = g.op("Equal", [b, zero])
    divisor = g.op("Where", [by_zero, g.const_like(1, b), b])  # an integer division by zero would trap
    remainder = g.op("Mod", [a, divisor], fmod=1)  # C's fmod: the dividend's sign
    signs_differ = g.op("Xor", [g.op("Less", [remainder, zero]), g.op("Less", [divisor, zero])])
    shift = g.op("And", [signs_differ, g.op("Not", [g.op("Equal", [remainder, zero])])])
    remainder = g.op("Where", [shift, g.op("Add", [remainder, divisor]), remainder])
    return g.op("Where", [by_zero, zero, remainder])


def binary(onnx_op: str) -> Converter:
    """elemwise_* and broadcast_*: ONNX broadcasting covers both."""
    return lambda g, x, a: _apply(g, onnx_op, x[0], x[1])


def scalar(onnx_op: str, *, reverse: bool = False) -> Converter:
    """_*_scalar: the tensor against attribute `scalar`; `reverse` puts the scalar first (_rminus_scalar)."""

    def convert(g: GraphBuilder, x: list[str], a: Attrs) -> str:
        constant = g.const_like(a.float("scalar"), x[0])
        return _apply(g, onnx_op, *((constant, x[0]) if reverse else (x[0], constant)))

    return convert


def unary(onnx_op: str) -> Converter:
    return lambda g, x, a: g.op(onnx_op, [x[0]])


def square(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.op("Mul", [x[0], x[0]])


def rsqrt(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.op("Reciprocal", [g.op("Sqrt", [x[0]])])


def identity(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.op("Identity", [x[0]])


def add_n(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.op("Sum", x)


def flatten(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.op("Flatten", [x[0]], axis=1)


def concat(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.op("Concat", x, axis=a.int("dim", 1))


def reshape(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    if "target_shape" in a.raw and "shape" not in a.raw:
        raise Unsupported("target_shape (the pre-1.0 spelling; re-export with `shape`)")
    shape = infer_reshape(g.shape(x[0]), a.ints("shape"), reverse=a.bool("reverse", False))
    return g.op("Reshape", [x[0], g.ints(shape)])


def transpose(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    axes = a.ints("axes", ()) or tuple(reversed(range(len(g.shape(x[0])))))
    return g.op("Transpose", [x[0]], perm=axes)


def clip(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    bounds = [g.const_like(a.float(key), x[0]) for key in ("a_min", "a_max")]
    return g.op("Clip", [x[0], *bounds])


def expand_dims(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.op("Unsqueeze", [x[0], g.ints([a.int("axis")])])


def squeeze(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    axes = a.ints("axis", ()) if a.raw.get("axis", "None") != "None" else ()
    return g.op("Squeeze", [x[0], g.ints(axes)] if axes else [x[0]])


def slice_(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    begin, end = a.optional_ints("begin"), a.optional_ints("end")
    step = a.optional_ints("step", ()) or (None,) * len(begin)
    steps = [1 if s is None else s for s in step]
    starts = [(0 if s > 0 else _INT64_MAX) if b is None else b for b, s in zip(begin, steps)]
    ends = [(_INT64_MAX if s > 0 else _INT64_MIN) if e is None else e for e, s in zip(end, steps)]
    axes = range(len(begin))
    return g.op("Slice", [x[0], g.ints(starts), g.ints(ends), g.ints(axes), g.ints(steps)])


def slice_axis(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    end = a.optional_int("end")
    return g.op("Slice", [x[0], g.ints([a.int("begin")]), g.ints([_INT64_MAX if end is None else end]),
                          g.ints([a.int("axis")])])


def reduction(onnx_op: str) -> Converter:
    """sum/mean/max/min/prod over `axis` (all axes when empty), `keepdims`, `exclude` (the other axes)."""

    def convert(g: GraphBuilder, x: list[str], a: Attrs) -> str:
        axes = a.ints("axis", ()) if a.raw.get("axis", "None") != "None" else ()
        rank = len(g.shape(x[0]))
        if a.bool("exclude", False):
            axes = tuple(i for i in range(rank) if i not in {axis % rank for axis in axes})
        axes = axes or tuple(range(rank))
        keepdims = int(a.bool("keepdims", False))
        if onnx_op == "ReduceSum":  # since opset 13 ReduceSum takes its axes as an input
            reduced = g.op(onnx_op, [x[0], g.ints(axes)], keepdims=keepdims)
        else:
            reduced = g.op(onnx_op, [x[0]], axes=axes, keepdims=keepdims)
        if keepdims or len({axis % rank for axis in axes}) < rank:
            return reduced
        return g.op("Reshape", [reduced, g.ints([1])])  # MXNet's full reductions keep one dim

    return convert


def where(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    condition = x[0]
    data_rank, condition_rank = len(g.shape(x[1])), len(g.shape(condition))
    if condition_rank == 1 and data_rank > 1:  # a 1-D condition picks whole rows
        condition = g.op("Reshape", [condition, g.ints([-1] + [1] * (data_rank - 1))])
    return g.op("Where", [g.cast(condition, "bool"), x[1], x[2]])


def take(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    axis, mode = a.int("axis", 0), a.str("mode", "clip")
    size = g.shape(x[0])[axis]
    indices = g.cast(x[1], "int64")
    if mode == "wrap":
        indices = g.op("Mod", [indices, g.const(size, "int64")])
    else:  # "clip", and "raise", which cannot fail on the valid indices it accepts
        indices = g.op("Clip", [indices, g.const(0, "int64"), g.const(size - 1, "int64")])
    return g.op("Gather", [x[0], indices], axis=axis)
