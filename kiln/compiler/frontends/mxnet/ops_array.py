"""Converters for MXNet's array ops: creating arrays, copying them along axes, splitting, gathering, top-k.

Shapes are static after import, so sizes MXNet computes at run time (shape_array, zeros_like) are constants here.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.compiler.frontends.mxnet.attrs import Attrs, Unsupported
from kiln.compiler.frontends.mxnet.builder import GraphBuilder

_INT64_MIN = np.iinfo(np.int64).min
_DTYPES = frozenset({"float16", "float32", "float64", "uint8", "int8", "int32", "int64", "bool"})


def _dtype(a: Attrs, key: str, default: str) -> str:
    dtype = a.str(key, default)
    if dtype not in _DTYPES:
        raise Unsupported(f"{key}={dtype}")
    return dtype


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _filled(g: GraphBuilder, value, tensor: str) -> str:
    """An array of `value` with the shape and element type of `tensor`."""
    return g.op("Expand", [g.const_like(value, tensor), g.ints(g.shape(tensor))])


def cast(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.cast(x[0], _dtype(a, "dtype", "float32"))


def zeros_like(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return _filled(g, 0, x[0])


def ones_like(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return _filled(g, 1, x[0])


def shape_array(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.op("Identity", [g.ints(g.shape(x[0]))])


def arange(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """MXNet's _arange: [0, start) when stop is None; each value `repeat` times; start + i * step computed in the
    output's type, as MXNet's kernel computes it (an int32 range by -1.5 steps by -1)."""
    if a.bool("infer_range", False):
        raise Unsupported("infer_range=True")
    start, stop, step = a.float("start", 0.0), a.optional_float("stop"), a.float("step", 1.0)
    if stop is None:
        start, stop = 0.0, start
    count = math.ceil((stop - start) / step) if step else 0
    if count < 1:  # MXNet refuses empty ranges too
        raise ValueError(f"the range from {start} to {stop} by {step} is empty")
    dtype = np.dtype(_dtype(a, "dtype", "float32"))
    values = dtype.type(start) + np.arange(count).astype(dtype) * dtype.type(step)
    return g.op("Identity", [g.const(np.repeat(values, a.int("repeat", 1)), dtype)])


def tile(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """numpy.tile: reps shorter than the rank repeat the last axes; longer ones add leading axes of size 1."""
    shape, reps = g.shape(x[0]), a.ints("reps")
    data = x[0]
    if len(reps) > len(shape):
        data = g.op("Reshape", [data, g.ints((1,) * (len(reps) - len(shape)) + shape)])
    return g.op("Tile", [data, g.ints((1,) * (len(shape) - len(reps)) + reps)])


def repeat(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """numpy.repeat: each element `repeats` times along `axis`; with axis None, of the flattened array."""
    shape, repeats = g.shape(x[0]), a.int("repeats")
    data = x[0]
    axis = a.optional_int("axis")
    if axis is None:
        data, shape, axis = g.op("Reshape", [data, g.ints([-1])]), (math.prod(shape),), 0
    axis = _axis(axis, len(shape))
    expanded = g.op("Expand", [g.op("Unsqueeze", [data, g.ints([axis + 1])]),
                               g.ints(shape[:axis + 1] + (repeats,) + shape[axis + 1:])])
    return g.op("Reshape", [expanded, g.ints(shape[:axis] + (shape[axis] * repeats,) + shape[axis + 1:])])


def split(g: GraphBuilder, x: list[str], a: Attrs) -> "str | list[str]":
    """SliceChannel: num_outputs equal parts along axis, each without that axis with squeeze_axis."""
    shape, parts = g.shape(x[0]), a.int("num_outputs")
    axis = _axis(a.int("axis", 1), len(shape))
    if parts < 1 or shape[axis] % parts:
        raise ValueError(f"axis {axis} of size {shape[axis]} does not split into {parts} equal parts")
    outputs = g.op("Split", [x[0], g.ints([shape[axis] // parts] * parts)], outputs=parts, axis=axis)
    outputs = [outputs] if parts == 1 else outputs
    if a.bool("squeeze_axis", False):
        outputs = [g.op("Squeeze", [output, g.ints([axis])]) for output in outputs]
    return outputs


def reverse(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    rank = len(g.shape(x[0]))
    axes = sorted(set(a.ints("axis")))
    if axes[0] < 0 or axes[-1] >= rank:  # MXNet's reverse fails on negative axes too
        raise Unsupported(f"axis={a.raw['axis']} on rank {rank} (MXNet's reverse takes axes 0 to {rank - 1})")
    count = len(axes)
    return g.op("Slice", [x[0], g.ints([-1] * count), g.ints([_INT64_MIN] * count), g.ints(axes),
                          g.ints([-1] * count)])


def stack(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    axis = _axis(a.int("axis", 0), len(g.shape(x[0])) + 1)
    return g.op("Concat", [g.op("Unsqueeze", [item, g.ints([axis])]) for item in x], axis=axis)


def broadcast_axis(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    shape = list(g.shape(x[0]))
    axes, sizes = a.ints("axis", ()), a.ints("size", ())
    if len(axes) != len(sizes):
        raise ValueError(f"axis {axes} and size {sizes} differ in length")
    for axis, size in zip(axes, sizes):
        if shape[axis] != 1:
            raise ValueError(f"axis {axis} has size {shape[axis]}, not 1")
        shape[axis] = size
    return g.op("Expand", [x[0], g.ints(shape)])


def slice_like(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """The leading part of data with shape_like's size on `axes` (every axis of shape_like when empty)."""
    shape, like = g.shape(x[0]), g.shape(x[1])
    axes = a.ints("axes", ())
    if not axes:
        if len(like) > len(shape):
            raise ValueError(f"shape_like has rank {len(like)}, above data's {len(shape)}")
        axes = tuple(range(len(like)))
    axes = tuple(_axis(axis, len(shape)) for axis in axes)
    if any(axis >= len(like) for axis in axes):
        raise ValueError(f"axes {axes} reach beyond shape_like's rank {len(like)}")
    return g.op("Slice", [x[0], g.ints([0] * len(axes)), g.ints([like[axis] for axis in axes]), g.ints(axes)])


def gather_nd(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """MXNet's indices hold one coordinate per data axis along their first axis; ONNX's along their last."""
    rank = len(g.shape(x[1]))
    indices = g.op("Transpose", [g.cast(x[1], "int64")], perm=(*range(1, rank), 0))
    return g.op("GatherND", [x[0], indices])


def topk(g: GraphBuilder, x: list[str], a: Attrs) -> "str | list[str]":
    """The k largest (smallest with is_ascend) along axis; axis None flattens; k < 1 sorts the whole axis.
    ret_typ: value, indices (as `dtype`), both, or mask (1 at the top k). Ties go to the lower index, ONNX's
    rule; MXNet's std::sort agrees on axes of up to 16 elements and orders ties arbitrarily on longer ones."""
    data, ret_typ = x[0], a.str("ret_typ", "indices")
    if ret_typ not in ("value", "indices", "both", "mask"):
        raise Unsupported(f"ret_typ={ret_typ}")
    if a.raw.get("axis", "-1") == "None":
        data, axis = g.op("Reshape", [data, g.ints([-1])]), 0
    else:
        axis = _axis(a.int("axis", -1), len(g.shape(data)))
    size, k = g.shape(data)[axis], a.int("k", 1)
    k = size if k < 1 else k
    if k > size:
        raise ValueError(f"k={k} exceeds the {size} elements of axis {axis}")
    dtype = _dtype(a, "dtype", "float32")
    largest = int(not a.bool("is_ascend", False))
    values, indices = g.op("TopK", [data, g.ints([k])], outputs=2, axis=axis, largest=largest, sorted=1)
    if ret_typ == "value":
        return values
    if ret_typ == "mask":  # in the shape of the input, flattened or not
        mask = g.op("ScatterElements", [_filled(g, 0, data), indices, _filled(g, 1, values)], axis=axis)
        return g.op("Reshape", [mask, g.ints(g.shape(x[0]))])
    positions = g.cast(indices, dtype)
    return [values, positions] if ret_typ == "both" else positions
