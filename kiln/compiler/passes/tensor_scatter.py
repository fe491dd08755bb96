"""A TensorScatter (a KV-cache write) as a gather of the update and a Where over the cache.

TVM 0.27's importer has no converter for TensorScatter (opset 24). ONNX defines it as a loop: batch row b writes
update row s at cache position write_indices[b] + s (modulo the cache length in circular mode). Seen from the cache,
position p of row b takes update row p - write_indices[b] (that offset taken modulo the cache length in circular
mode) where it lies in 0 .. sequence_length - 1 and keeps its past value elsewhere: offsets from a constant range
(write_indices may be given at run time; zeros when absent), clipped into the update for a GatherElements along
`axis`, and a Where on the in-range mask. Every shape is static; a linear write past the cache's end, which
ONNX's reference raises on, is dropped rather than read or written out of bounds. A TensorScatter whose shapes
are not static is left as it is, and the support check (kiln.compiler.backends.tvm.ops) names why with
`tensor_scatter_refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import is_onnx_op, rewrite_nodes, static_dims

if TYPE_CHECKING:
    import onnx


def tensor_scatter_refusal(node: "onnx.NodeProto", dims: Mapping[str, Sequence[int | None]]) -> str | None:
    """Why tensor_scatter leaves the TensorScatter `node` as it is; None where it rewrites it. `dims` holds the
    values' shapes (None: symbolic)."""
    cache, update = dims.get(node.input[0]), dims.get(node.input[1])
    if cache is None or update is None or None in cache or None in update:
        return "past_cache or update shape not static; pin the input shapes"
    attributes = _attributes(node)
    axis = attributes["axis"] + len(cache) if attributes["axis"] < 0 else attributes["axis"]
    if len(cache) != len(update) or not 0 < axis < len(cache):
        return f"axis {attributes['axis']} is not a sequence axis of both past_cache and update"
    if attributes["mode"] not in ("linear", "circular"):
        return f"mode {attributes['mode']!r}"
    if any(c != u for i, (c, u) in enumerate(zip(cache, update)) if i != axis) or update[axis] > cache[axis]:
        return f"update {list(update)} does not fit past_cache {list(cache)}"
    if update[axis] == 0:
        return "update has no rows along the axis"
    return None


def tensor_scatter(graph: Graph) -> Graph:
    dims = static_dims(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "TensorScatter") or tensor_scatter_refusal(node, dims):
            return None
        return _rewrite(node, dims[node.input[0]], dims[node.input[1]][_attributes(node)["axis"]])

    return rewrite_nodes(graph, replace)


def _attributes(node: "onnx.NodeProto") -> dict:
    from onnx import helper

    given = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mode = given.get("mode", b"linear")
    return {"axis": given.get("axis", -2), "mode": mode.decode() if isinstance(mode, bytes) else mode}


def _rewrite(node: "onnx.NodeProto", cache: tuple[int, ...], length: int) -> tuple[list, dict]:
    """The nodes that compute the TensorScatter `node` (past_cache of shape `cache`, `length` update rows), and
    the constants they read."""
    from onnx import helper

    attributes = _attributes(node)
    rank = len(cache)
    axis = attributes["axis"] % rank
    stem = node.name or node.output[0]

    def name(role: str) -> str:
        return f"{stem}_{role}"

    along_axis = [1] * rank
    along_axis[axis] = cache[axis]
    constants = {name("positions"): np.arange(cache[axis], dtype=np.int64).reshape(along_axis),
                 name("batch_shape"): np.array([cache[0]] + [1] * (rank - 1), np.int64),
                 name("zero"): np.array(0, np.int64), name("last"): np.array(length - 1, np.int64),
                 name("length"): np.array(length, np.int64), name("cache_length"): np.array(cache[axis], np.int64),
                 name("cache_shape"): np.array(cache, np.int64)}
    nodes = []
    if len(node.input) > 2 and node.input[2]:
        nodes.append(helper.make_node("Reshape", [node.input[2], name("batch_shape")], [name("starts")]))
    else:
        constants[name("starts")] = np.zeros([cache[0]] + [1] * (rank - 1), np.int64)
    nodes.append(helper.make_node("Sub", [name("positions"), name("starts")], [name("offsets")]))
    offsets = name("offsets")
    if attributes["mode"] == "circular":
        nodes.append(helper.make_node("Mod", [offsets, name("cache_length")], [name("wrapped")]))
        offsets = name("wrapped")
    nodes += [
        helper.make_node("GreaterOrEqual", [offsets, name("zero")], [name("after_start")]),
        helper.make_node("Less", [offsets, name("length")], [name("before_end")]),
        helper.make_node("And", [name("after_start"), name("before_end")], [name("written")]),
        helper.make_node("Max", [offsets, name("zero")], [name("floored")]),
        helper.make_node("Min", [name("floored"), name("last")], [name("rows")]),
        helper.make_node("Expand", [name("rows"), name("cache_shape")], [name("indices")]),
        helper.make_node("GatherElements", [node.input[1], name("indices")], [name("gathered")], axis=axis),
        helper.make_node("Where", [name("written"), name("gathered"), node.input[0]], [node.output[0]],
                         name=node.name),
    ]
    return nodes, constants
