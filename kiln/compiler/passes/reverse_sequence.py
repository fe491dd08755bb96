"""A ReverseSequence as a GatherElements along its time axis, with indices computed from sequence_lens.

TVM 0.27's importer has no converter for ReverseSequence. ONNX reverses the first sequence_lens[b] steps of each
batch row b and copies the rest: output step t of row b reads input step len - 1 - t where t < len, step t
elsewhere. The indices come from a constant range and the lengths (which may be given at run time) broadcast against
it, expanded to the input's static shape. Lengths over the time steps count as all of them, as ONNX's reference
slices them, and negative ones as 0 (ONNX Runtime rejects both), so that no index reads past the input. An input
whose shape is not static is left as it is, and the support check (kiln.compiler.backends.tvm.ops) names why
with `reverse_sequence_refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import is_onnx_op, rewrite_nodes, static_dims

if TYPE_CHECKING:
    import onnx


def reverse_sequence_refusal(node: "onnx.NodeProto", dims: Mapping[str, Sequence[int | None]]) -> str | None:
    """Why reverse_sequence leaves the ReverseSequence `node` as it is; None where it rewrites it. `dims` holds the
    values' shapes (None: symbolic)."""
    shape = dims.get(node.input[0])
    if shape is None or None in shape:
        return "input shape not static; pin the input shapes"
    batch_axis, time_axis = _axes(node)
    if len(shape) < 2 or {batch_axis, time_axis} != {0, 1}:
        return f"batch_axis {batch_axis} and time_axis {time_axis} are not axes 0 and 1 of the input"
    return None


def reverse_sequence(graph: Graph) -> Graph:
    dims = static_dims(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "ReverseSequence") or reverse_sequence_refusal(node, dims):
            return None
        return _rewrite(node, dims[node.input[0]])

    return rewrite_nodes(graph, replace)


def _axes(node: "onnx.NodeProto") -> tuple[int, int]:
    """(batch_axis, time_axis), ONNX's defaults 1 and 0 where not set."""
    from onnx import helper

    given = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return given.get("batch_axis", 1), given.get("time_axis", 0)


def _rewrite(node: "onnx.NodeProto", shape: tuple[int, ...]) -> tuple[list, dict]:
    """The nodes that compute the ReverseSequence `node` of an input of `shape`, and the constants they read."""
    from onnx import helper

    batch_axis, time_axis = _axes(node)
    stem = node.name or node.output[0]

    def name(role: str) -> str:
        return f"{stem}_{role}"

    steps, lengths_shape = [1] * len(shape), [1] * len(shape)
    steps[time_axis], lengths_shape[batch_axis] = shape[time_axis], shape[batch_axis]
    constants = {name("steps"): np.arange(shape[time_axis], dtype=np.int64).reshape(steps),
                 name("lengths_shape"): np.array(lengths_shape, np.int64), name("zero"): np.array(0, np.int64),
                 name("one"): np.array(1, np.int64), name("count"): np.array(shape[time_axis], np.int64),
                 name("shape"): np.array(shape, np.int64)}
    nodes = [
        helper.make_node("Reshape", [node.input[1], name("lengths_shape")], [name("lengths")]),
        helper.make_node("Max", [name("lengths"), name("zero")], [name("floored")]),
        helper.make_node("Min", [name("floored"), name("count")], [name("clamped")]),
        helper.make_node("Sub", [name("clamped"), name("one")], [name("last")]),
        helper.make_node("Sub", [name("last"), name("steps")], [name("reversed")]),
        helper.make_node("Less", [name("steps"), name("clamped")], [name("inside")]),
        helper.make_node("Where", [name("inside"), name("reversed"), name("steps")], [name("sources")]),
        helper.make_node("Expand", [name("sources"), name("shape")], [name("indices")]),
        helper.make_node("GatherElements", [node.input[0], name("indices")], [node.output[0]], name=node.name,
                         axis=time_axis),
    ]
    return nodes, constants
