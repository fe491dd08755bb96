"""A OneHot with constant depth and values written as a comparison against a range and a Where.

TVM's converter passes depth and values on as Python numbers: building fails on a float or one-element depth and
on float indices, and the output takes float64 or int64 whatever the values' type. ONNX's meaning is simple to
write with ops TVM converts exactly: indices (cast to int64 where they are not integers) with negative ones
counted from depth, compared to 0 .. depth-1 laid along `axis`; values[1] where equal, values[0] elsewhere (an
index out of range matches nothing).
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.frontends.onnx import opset_of
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, rewrite_nodes, static_shapes


def onehot(graph: Graph) -> Graph:
    from onnx import TensorProto, helper, numpy_helper

    initializers = {t.name: t for t in graph.body.graph.initializer}
    shapes = static_shapes(graph.body.graph)
    types = element_types(graph.body.graph)
    axes_input = opset_of(graph.body) >= 13  # Unsqueeze's axes: an attribute before opset 13

    def replace(node):
        if (not is_onnx_op(node, "OneHot") or node.input[0] not in shapes
                or node.input[1] not in initializers or node.input[2] not in initializers):
            return None
        rank = len(shapes[node.input[0]])
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
        axis = axis + rank + 1 if axis < 0 else axis
        depth = int(numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64).reshape(()))
        off, on = numpy_helper.to_array(initializers[node.input[2]]).reshape(2)
        stem = node.name or node.output[0]
        names = {role: f"{stem}_{role}" for role in ("indices", "negative", "wrapped", "normalized", "expanded",
                                                      "range", "axis", "zero", "depth", "equal", "on", "off")}
        indices = node.input[0]
        nodes = []
        if types.get(indices) not in (TensorProto.INT64, TensorProto.INT32):
            nodes.append(helper.make_node("Cast", [indices], [names["indices"]], to=TensorProto.INT64))
            indices = names["indices"]
        integer = np.int32 if types.get(indices) == TensorProto.INT32 else np.int64
        nodes += [
            helper.make_node("Less", [indices, names["zero"]], [names["negative"]]),
            helper.make_node("Add", [indices, names["depth"]], [names["wrapped"]]),
            helper.make_node("Where", [names["negative"], names["wrapped"], indices], [names["normalized"]]),
            helper.make_node("Unsqueeze", [names["normalized"], names["axis"]], [names["expanded"]])
            if axes_input else helper.make_node("Unsqueeze", [names["normalized"]], [names["expanded"]], axes=[axis]),
            helper.make_node("Equal", [names["expanded"], names["range"]], [names["equal"]]),
            helper.make_node("Where", [names["equal"], names["on"], names["off"]], [node.output[0]], name=node.name),
        ]
        constants = {names["zero"]: np.array(0, integer), names["depth"]: np.array(depth, integer),
                     **({names["axis"]: np.array([axis], np.int64)} if axes_input else {}),
                     names["range"]: np.arange(depth, dtype=integer).reshape((depth,) + (1,) * (rank - axis)),
                     names["on"]: np.array(on), names["off"]: np.array(off)}
        return nodes, constants

    return rewrite_nodes(graph, replace)
