"""A TopK of uint64 values computed on int64 values in the same order.

TVM 0.27's topk rejects uint64 input. Flipping the top bit maps uint64 onto int64 keeping the order (u - 2^63 as
two's complement), so TopK of the flipped values picks the same elements at the same indices (ties included: the
same values tie); its values flipped back are the uint64 ones.
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, rewrite_nodes


def topk_unsigned(graph: Graph) -> Graph:
    from onnx import TensorProto, helper

    types = element_types(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "TopK") or types.get(node.input[0]) != TensorProto.UINT64:
            return None
        stem = node.name or node.output[0]
        top_bit, signed, picked = f"{stem}_top_bit", f"{stem}_signed", f"{stem}_signed_values"
        flipped, unsigned = f"{stem}_flipped", f"{stem}_unsigned"
        nodes = [
            helper.make_node("BitwiseXor", [node.input[0], top_bit], [flipped]),
            helper.make_node("Cast", [flipped], [signed], to=TensorProto.INT64),
            helper.make_node("TopK", [signed, *node.input[1:]], [picked, *node.output[1:]], name=node.name,
                             domain=node.domain),
            helper.make_node("Cast", [picked], [unsigned], to=TensorProto.UINT64),
            helper.make_node("BitwiseXor", [unsigned, top_bit], [node.output[0]]),
        ]
        nodes[2].attribute.extend(node.attribute)
        return nodes, {top_bit: np.array(1 << 63, np.uint64)}

    return rewrite_nodes(graph, replace)
