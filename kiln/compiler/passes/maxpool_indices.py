"""A MaxPool whose Indices output is read, written as a Gather of its windows, an ArgMax, and constant index tables.

TVM 0.27's converter computes only MaxPool's values. ONNX defines Indices as the flat index, in the whole input
(batch and channels included: [0, N x C x D1 x ... x Dn)), of the first maximum of each window, padding never
chosen; storage_order 1 numbers the spatial dims column-major. With static shapes every window's positions are
known at compile time: one Gather takes the flattened spatial dims of x into [N, C, windows, window size], ArgMax
(first maximum on ties) picks one, and GatherElements the value, a Gather of a constant table its spatial index,
plus the constant offset of its batch and channel. A padded position is read as the window's first real one, which
it then never beats: ties go to the earlier position, and a copy of the first real one names that one.
Where a shape is not static or a window holds no real position, the node is left as it is and the support check
refuses it (TVM's converter computes only the values).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import is_onnx_op, rewrite_nodes, static_shapes

MAX_TABLE = 1 << 22  # window positions (outputs x kernel size) kiln writes out as constants at most


def maxpool_indices(graph: Graph) -> Graph:
    from onnx import helper

    shapes = static_shapes(graph.body.graph)

    def replace(node):
        if (not is_onnx_op(node, "MaxPool") or len(node.output) < 2 or not node.output[1]
                or node.input[0] not in shapes):
            return None
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        tables = _tables(shapes[node.input[0]], attributes)
        if tables is None:
            return None
        outputs, sources, flat_indices = tables
        batch, channels = shapes[node.input[0]][:2]
        windows, size = sources.shape
        spatial = math.prod(shapes[node.input[0]][2:])
        stem = node.name or node.output[0]
        n = {role: f"{stem}_{role}" for role in ("flat_shape", "flat", "sources", "windows", "argmax", "value",
                                                  "output_shape", "starts", "positions", "table", "spatial",
                                                  "offsets", "index")}
        nodes = [
            helper.make_node("Reshape", [node.input[0], n["flat_shape"]], [n["flat"]]),
            helper.make_node("Gather", [n["flat"], n["sources"]], [n["windows"]], axis=2),
            helper.make_node("ArgMax", [n["windows"]], [n["argmax"]], axis=3, keepdims=1),  # clamped by arg_extremes
            helper.make_node("GatherElements", [n["windows"], n["argmax"]], [n["value"]], axis=3),
            helper.make_node("Reshape", [n["value"], n["output_shape"]], [node.output[0]], name=node.name),
            helper.make_node("Add", [n["argmax"], n["starts"]], [n["positions"]]),
            helper.make_node("Gather", [n["table"], n["positions"]], [n["spatial"]]),
            helper.make_node("Add", [n["spatial"], n["offsets"]], [n["index"]]),
            helper.make_node("Reshape", [n["index"], n["output_shape"]], [node.output[1]]),
        ]
        constants = {
            n["flat_shape"]: np.array([batch, channels, spatial], np.int64),
            n["sources"]: sources,
            n["output_shape"]: np.array((batch, channels, *outputs), np.int64),
            n["starts"]: (np.arange(windows, dtype=np.int64) * size).reshape(windows, 1),
            n["table"]: flat_indices.reshape(-1),
            n["offsets"]: (np.arange(batch * channels, dtype=np.int64) * spatial).reshape(batch, channels, 1, 1),
        }
        return nodes, constants

    return rewrite_nodes(graph, replace)


def _tables(input_shape: Sequence[int], attributes: dict):
    """The output's spatial shape, and for each output position (row-major) and each kernel position: the
    flattened spatial position of x the window reads (its first real one for a padded position) and the index ONNX
    gives that position (in storage_order). None for an auto_pad ONNX does not define, where a window holds no real
    position, or where the tables would be over MAX_TABLE."""
    spatial = tuple(input_shape[2:])
    kernel = tuple(attributes["kernel_shape"])
    rank = len(kernel)
    strides = tuple(attributes.get("strides", [1] * rank))
    dilations = tuple(attributes.get("dilations", [1] * rank))
    geometry = _geometry(spatial, kernel, strides, dilations, attributes)
    if geometry is None or len(spatial) != rank:
        return None
    outputs, begins = geometry
    if math.prod(outputs) * math.prod(kernel) > MAX_TABLE:
        return None
    positions = np.array(list(itertools.product(*map(range, outputs))), np.int64).reshape(-1, 1, rank)
    taps = np.array(list(itertools.product(*map(range, kernel))), np.int64).reshape(1, -1, rank)
    coordinates = positions * np.array(strides) - np.array(begins) + taps * np.array(dilations)
    real = np.all((coordinates >= 0) & (coordinates < np.array(spatial)), axis=2)
    if not real.any(axis=1).all():
        return None
    first = coordinates[np.arange(len(coordinates)), real.argmax(axis=1)]
    coordinates = np.moveaxis(np.where(real[..., None], coordinates, first[:, None, :]), 2, 0)
    order = "F" if attributes.get("storage_order", 0) else "C"
    return (outputs, np.ravel_multi_index(tuple(coordinates), spatial),
            np.ravel_multi_index(tuple(coordinates), spatial, order=order))


def _geometry(spatial, kernel, strides, dilations, attributes) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The output's spatial shape and the padding before each spatial dim, as ONNX's MaxPool defines them from
    auto_pad, pads and ceil_mode; None for an auto_pad ONNX does not define."""
    rank = len(kernel)
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    extents = [(k - 1) * dilation + 1 for k, dilation in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        outputs = tuple(-(-size // stride) for size, stride in zip(spatial, strides))
        totals = [max(0, (out - 1) * stride + extent - size)
                  for out, stride, extent, size in zip(outputs, strides, extents, spatial)]
        return outputs, tuple(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2 for total in totals)
    if auto_pad not in ("NOTSET", "VALID"):
        return None
    pads = attributes.get("pads", [0] * 2 * rank) if auto_pad == "NOTSET" else [0] * 2 * rank
    ceil = attributes.get("ceil_mode", 0)
    outputs = []
    for size, extent, stride, begin, end in zip(spatial, extents, strides, pads[:rank], pads[rank:]):
        span = size + begin + end - extent
        out = (-(-span // stride) if ceil else span // stride) + 1
        # ceil_mode's last window must start inside the input or its padding before
        outputs.append(out - 1 if ceil and (out - 1) * stride >= size + begin else out)
    return tuple(outputs), tuple(pads[:rank])
