"""A CumProd with a constant axis of static length unrolled into a running product of its slices.

TVM 0.27's importer has no converter for CumProd, and there is no closed form to write it in (a log-sum-exp loses
signs, zeros and integers). Along a static axis of length L it is L slices (one Split), each output slice the product
of the input slices before it (exclusive) or up to it (inclusive), counted from the end with reverse, the first
exclusive one all ones: L - 1 Muls and a Concat. Longer axes would blow the graph up, and others are not static:
those, and axes given at run time, are left as they are, and the support check (kiln.compiler.backends.tvm.ops)
names why with `cumprod_refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, rewrite_nodes, static_dims

if TYPE_CHECKING:
    import onnx

MAX_LENGTH = 256  # slices unrolled at most


def cumprod_refusal(node: "onnx.NodeProto", values: Mapping[str, "onnx.TensorProto"],
                    dims: Mapping[str, Sequence[int | None]]) -> str | None:
    """Why unroll_cumprod leaves the CumProd `node` as it is; None where it unrolls it. `values` holds the
    constants known here, `dims` the values' shapes (None: symbolic)."""
    if node.input[1] not in values:
        return "axis must be constant"
    shape = dims.get(node.input[0])
    if shape is None or None in shape:
        return "input shape not static; pin the input shapes"
    axis = _axis(values[node.input[1]], len(shape))
    if not 0 <= axis < len(shape):
        return f"axis {axis} outside the input's {len(shape)} dims"
    length = shape[axis]
    if length == 0:
        return "no elements along the axis"
    if length > MAX_LENGTH:
        return f"{length} elements along the axis, over the {MAX_LENGTH} kiln unrolls"
    return None


def unroll_cumprod(graph: Graph) -> Graph:
    from onnx import helper

    values = {t.name: t for t in graph.body.graph.initializer}
    dims = static_dims(graph.body.graph)
    types = element_types(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "CumProd") or cumprod_refusal(node, values, dims):
            return None
        shape = dims[node.input[0]]
        axis = _axis(values[node.input[1]], len(shape))
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        exclusive, reverse = attributes.get("exclusive", 0), attributes.get("reverse", 0)
        stem = node.name or node.output[0]
        length = shape[axis]
        slices = [f"{stem}_slice{i}" for i in range(length)]
        nodes = [helper.make_node("Split", [node.input[0], f"{stem}_split"], slices, axis=axis)]
        constants = {f"{stem}_split": np.ones(length, np.int64)}
        order = list(reversed(range(length)) if reverse else range(length))
        running, products = None, {}
        for i in order[:-1] if exclusive else order:
            if running is not None:
                nodes.append(helper.make_node("Mul", [running, slices[i]], [f"{stem}_product{i}"]))
            running = slices[i] if running is None else f"{stem}_product{i}"
            products[i] = running
        if exclusive:
            dtype = helper.tensor_dtype_to_np_dtype(types[node.input[0]])
            constants[f"{stem}_ones"] = np.ones(shape[:axis] + (1,) + shape[axis + 1:], dtype)
            products = dict(zip(order, [f"{stem}_ones"] + [products[i] for i in order[:-1]]))
        nodes.append(helper.make_node("Concat", [products[i] for i in range(length)], [node.output[0]],
                                      name=node.name, axis=axis))
        return nodes, constants

    return rewrite_nodes(graph, replace)


def _axis(value: "onnx.TensorProto", rank: int) -> int:
    from onnx import numpy_helper

    axis = int(numpy_helper.to_array(value))
    return axis + rank if axis < 0 else axis
