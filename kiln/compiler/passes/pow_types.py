"""A Pow whose base is an integer, or whose exponent has another type than the base, computed in float64.

Relax's power takes two tensors of one float type, so TVM's converter raises on the other Pows ONNX allows. ONNX's
result has the base's type. ONNX Runtime computes C's pow of doubles and casts it to the base's type, an integer
result truncated toward zero (2 ** 0.5 is 1, 2 ** -1 is 0); ONNX's reference computes numpy's power, in float64 for
these pairs but a narrow exponent of a float base (float32 ** int8 in float32: one rounding apart). Both inputs cast
to float64, a float64 Pow and a Cast back compute what ONNX Runtime does (float64 holds every exponent and integer
result below 2 ** 53 exactly).
"""

from __future__ import annotations

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import WIDE_FLOATS, element_types, is_onnx_op, rewrite_nodes



def pow_types(graph: Graph) -> Graph:
    from onnx import TensorProto, helper

    types = element_types(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "Pow"):
            return None
        base, exponent = (types.get(name) for name in node.input)
        if not base or not exponent or (base == exponent and base in WIDE_FLOATS):
            return None
        stem = node.name or node.output[0]
        nodes, inputs = [], []
        for role, name, elem_type in (("base", node.input[0], base), ("exponent", node.input[1], exponent)):
            if elem_type != TensorProto.DOUBLE:
                nodes.append(helper.make_node("Cast", [name], [f"{stem}_{role}"], to=TensorProto.DOUBLE))
                name = f"{stem}_{role}"
            inputs.append(name)
        if base == TensorProto.DOUBLE:
            return nodes + [helper.make_node("Pow", inputs, [node.output[0]], name=node.name)], {}
        return nodes + [helper.make_node("Pow", inputs, [f"{stem}_power"], name=node.name),
                        helper.make_node("Cast", [f"{stem}_power"], [node.output[0]], to=base)], {}

    return rewrite_nodes(graph, replace)
