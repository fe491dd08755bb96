"""A QLinearMatMul written as the integer MatMul and float64 requantization its reference computes.

TVM 0.27's importer has no converter for QLinearMatMul. ONNX's reference (onnx.reference) computes

    C = (int32(a) - int32(a_zero_point)) @ (int32(b) - int32(b_zero_point))        int32, wrapping
    y = saturate(round_half_even(float64(C) * float64(a_scale * b_scale / y_scale) + y_zero_point))

with the scales' product and quotient in their own type (float16 ones rounded as float16) and y of y_zero_point's
type. The zero points and scales broadcast as numpy does (per tensor, or per row / column in the shapes [..., M, 1] /
[..., 1, N]), so the graph below is written with them as they are, run-time inputs or constants.
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, rewrite_nodes

_INTEGERS = {2: np.uint8, 3: np.int8}  # UINT8, INT8: the types QLinearMatMul takes


def qlinear_matmul(graph: Graph) -> Graph:
    from onnx import TensorProto, helper

    types = element_types(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "QLinearMatMul"):
            return None
        a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = node.input
        integer = _INTEGERS.get(types.get(y_zero))
        if integer is None:
            return None
        stem = node.name or node.output[0]
        n = {role: f"{stem}_{role}" for role in ("a", "a_zero", "a_centred", "b", "b_zero", "b_centred", "product",
                                                  "wide", "scales", "multiplier", "wide_multiplier", "scaled",
                                                  "zero", "shifted", "rounded", "low", "high", "floor", "clipped")}
        nodes = [
            helper.make_node("Cast", [a], [n["a"]], to=TensorProto.INT32),
            helper.make_node("Cast", [a_zero], [n["a_zero"]], to=TensorProto.INT32),
            helper.make_node("Sub", [n["a"], n["a_zero"]], [n["a_centred"]]),
            helper.make_node("Cast", [b], [n["b"]], to=TensorProto.INT32),
            helper.make_node("Cast", [b_zero], [n["b_zero"]], to=TensorProto.INT32),
            helper.make_node("Sub", [n["b"], n["b_zero"]], [n["b_centred"]]),
            helper.make_node("MatMul", [n["a_centred"], n["b_centred"]], [n["product"]], name=node.name),
            helper.make_node("Cast", [n["product"]], [n["wide"]], to=TensorProto.DOUBLE),
            helper.make_node("Mul", [a_scale, b_scale], [n["scales"]]),
            helper.make_node("Div", [n["scales"], y_scale], [n["multiplier"]]),
            helper.make_node("Cast", [n["multiplier"]], [n["wide_multiplier"]], to=TensorProto.DOUBLE),
            helper.make_node("Mul", [n["wide"], n["wide_multiplier"]], [n["scaled"]]),
            helper.make_node("Cast", [y_zero], [n["zero"]], to=TensorProto.DOUBLE),
            helper.make_node("Add", [n["scaled"], n["zero"]], [n["shifted"]]),
            helper.make_node("Round", [n["shifted"]], [n["rounded"]]),  # half to even, as numpy's rint
            # Max and Min rather than Clip, whose bounds are float attributes before opset 11
            helper.make_node("Max", [n["rounded"], n["low"]], [n["floor"]]),
            helper.make_node("Min", [n["floor"], n["high"]], [n["clipped"]]),
            helper.make_node("Cast", [n["clipped"]], [node.output[0]], to=types[y_zero]),
        ]
        bounds = np.iinfo(integer)
        return nodes, {n["low"]: np.array(bounds.min, np.float64), n["high"]: np.array(bounds.max, np.float64)}

    return rewrite_nodes(graph, replace)
