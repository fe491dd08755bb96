"""Reductions over an axis of size 0 replaced by what ONNX defines them to give: the reduction's identity.

A sum over nothing is 0, a product 1, a max -inf (the type's least value for integers), a min +inf (its greatest),
a log-sum and a log-sum-exp -inf. TVM's kernels give NaN (and 0 rows to loop over). Only static shapes are known
to be empty; ReduceMean's 0 / 0 is NaN in both.
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, rewrite_nodes, static_shapes

_ZERO = ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2")
_LEAST = ("ReduceMax", "ReduceLogSum", "ReduceLogSumExp")


def empty_reductions(graph: Graph) -> Graph:
    from onnx import helper, numpy_helper

    shapes = static_shapes(graph.body.graph)
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.body.graph.initializer}
    types = element_types(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node) or not node.op_type.startswith("Reduce") or node.op_type == "ReduceMean":
            return None
        shape, elem_type = shapes.get(node.input[0]), types.get(node.input[0])
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = _axes(node, attributes, initializers)
        if shape is None or not elem_type or axes is False:
            return None
        reduced = {axis % len(shape) for axis in axes} if axes else set(range(len(shape)))
        if not reduced or all(shape[axis] for axis in reduced):
            return None
        keep = attributes.get("keepdims", 1)
        dims = [1 if axis in reduced else size for axis, size in enumerate(shape) if keep or axis not in reduced]
        dtype = helper.tensor_dtype_to_np_dtype(elem_type)
        value = np.full(dims, _identity(node.op_type, dtype), dtype=dtype)
        name = f"{node.name or node.output[0]}_empty"
        return [helper.make_node("Identity", [name], [node.output[0]], name=node.name)], {name: value}

    return rewrite_nodes(graph, replace)


def _axes(node, attributes: dict, initializers: dict) -> "list[int] | None | bool":
    """The reduced axes as given (None: all of them), or False where they are unknown or none is reduced."""
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in initializers:
            return False
        axes = initializers[node.input[1]].ravel().tolist()
    else:
        axes = attributes.get("axes")
    if not axes and attributes.get("noop_with_empty_axes", 0):
        return False
    return axes or None


def _identity(op: str, dtype: np.dtype):
    if op in _ZERO:
        return 0
    if op == "ReduceProd":
        return 1
    if dtype.kind == "b":
        return op not in _LEAST
    if dtype.kind in "iu":
        return np.iinfo(dtype).min if op in _LEAST else np.iinfo(dtype).max
    return -np.inf if op in _LEAST else np.inf
