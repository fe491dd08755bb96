"""An LpNormalization written as the input divided by its ReduceL1 / ReduceL2 along the axis.

TVM 0.27's importer has no converter for LpNormalization. ONNX defines it as x / ||x||_p along `axis` (p 1 or 2),
0 where the norm is 0 (opset 22 says so; ONNX Runtime computes 0 at every opset). onnx.reference sums x ** p
without the absolute value, so its L1 norm of negative values is not a norm: ONNX Runtime takes |x|, as the spec's
"Lp norm" does, and so does ReduceL1. Other p, and inputs of unknown rank, are left as they are, and the support
check (kiln.compiler.backends.tvm.ops) names why with `lp_refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.frontends.onnx import opset_of
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import declared_dims, element_types, is_onnx_op, rewrite_nodes

if TYPE_CHECKING:
    import onnx

_REDUCTIONS = {1: "ReduceL1", 2: "ReduceL2"}


def lp_refusal(node: "onnx.NodeProto", dims: Mapping[str, Sequence[int | None]]) -> str | None:
    """Why lp_normalization leaves the LpNormalization `node` as it is; None where it rewrites it. `dims` holds
    the values' shapes (None: symbolic)."""
    p, axis = _attributes(node)
    if p not in _REDUCTIONS:
        return f"p {p} (ONNX defines p 1 and 2)"
    if node.input[0] not in dims:
        return "input rank unknown"
    rank = len(dims[node.input[0]])
    if not -rank <= axis < rank:
        return f"axis {axis} outside the input's {rank} dims"
    return None


def lp_normalization(graph: Graph) -> Graph:
    from onnx import helper

    dims = declared_dims(graph.body.graph)
    types = element_types(graph.body.graph)
    axes_input = opset_of(graph.body) >= 18  # ReduceL1 / ReduceL2's axes: an attribute before opset 18

    def replace(node):
        if not is_onnx_op(node, "LpNormalization") or not types.get(node.input[0]) or lp_refusal(node, dims):
            return None
        p, axis = _attributes(node)
        stem = node.name or node.output[0]
        names = {role: f"{stem}_{role}" for role in ("axes", "norm", "zero", "is_zero", "quotient")}
        reduce = (helper.make_node(_REDUCTIONS[p], [node.input[0], names["axes"]], [names["norm"]], keepdims=1)
                  if axes_input else
                  helper.make_node(_REDUCTIONS[p], [node.input[0]], [names["norm"]], axes=[axis], keepdims=1))
        nodes = [
            reduce,
            helper.make_node("Div", [node.input[0], names["norm"]], [names["quotient"]]),
            helper.make_node("Equal", [names["norm"], names["zero"]], [names["is_zero"]]),
            helper.make_node("Where", [names["is_zero"], names["zero"], names["quotient"]], [node.output[0]],
                             name=node.name),
        ]
        zero = np.zeros((), helper.tensor_dtype_to_np_dtype(types[node.input[0]]))
        return nodes, {names["zero"]: zero, **({names["axes"]: np.array([axis], np.int64)} if axes_input else {})}

    return rewrite_nodes(graph, replace)


def _attributes(node: "onnx.NodeProto") -> tuple[int, int]:
    """The node's p and axis, ONNX's defaults where not given."""
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return attributes.get("p", 2), attributes.get("axis", -1)

