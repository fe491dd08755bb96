"""An ArgMax / ArgMin whose reduced row holds nothing but the type's lowest value (highest, for ArgMin) gives
index 0 (the last index with select_last_index), as ONNX defines it.

TVM 0.27's argmax starts from index -1 and the lowest value and takes an element only where it is greater: a row
of -inf (an attention row whose keys are all masked, say) got -1, and with select_last_index (the row reversed,
then n - 1 - index) it got n, past the end. The index is clamped to 0 or, with select_last_index, to n - 1 (where
the input's length along the axis is known), which changes nothing where the row holds another value.
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import declared_dims, is_onnx_op, rewrite_nodes


def arg_extremes(graph: Graph) -> Graph:
    from onnx import helper

    dims = declared_dims(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "ArgMax", "ArgMin"):
            return None
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        last = attributes.get("select_last_index", 0)
        shape = dims.get(node.input[0]) or []
        axis = attributes.get("axis", 0)
        if last and not (-len(shape) <= axis < len(shape) and shape[axis]):
            return None  # (the length unknown: such a row keeps TVM's answer)
        stem = node.name or node.output[0]
        index = f"{stem}_unclamped"
        bound = np.array(shape[axis] - 1 if last else 0, np.int64)
        return ([helper.make_node(node.op_type, node.input, [index], name=node.name, **attributes),
                 helper.make_node("Min" if last else "Max", [index, f"{stem}_bound"], node.output)],
                {f"{stem}_bound": bound})

    return rewrite_nodes(graph, replace)
