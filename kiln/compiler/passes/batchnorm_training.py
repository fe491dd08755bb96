"""A training-mode BatchNormalization written as the reductions and arithmetic ONNX defines it by.

TVM 0.27's converter computes BatchNormalization in inference mode only (the given mean and variance, the first
output). With training_mode=1 (opset 14 on) ONNX normalizes X with the batch's own statistics over every axis but
the channels (axis 1): mean, and the biased variance mean((X - mean)^2); Y = scale * (X - mean) / sqrt(var +
epsilon) + B, and the running statistics are input_mean * momentum + batch_mean * (1 - momentum) (the same for the
variance), in the type of the given mean and variance (onnx.reference's op_batch_normalization).
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.frontends.onnx import opset_of
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import declared_dims, element_types, is_onnx_op, rewrite_nodes


def batchnorm_training(graph: Graph) -> Graph:
    from onnx import helper

    dims = declared_dims(graph.body.graph)
    types = element_types(graph.body.graph)
    axes_input = opset_of(graph.body) >= 18  # ReduceMean's axes: an attribute before opset 18

    def replace(node):
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (not is_onnx_op(node, "BatchNormalization") or not attributes.get("training_mode")
                or node.input[0] not in dims or not types.get(node.input[0])):
            return None
        return _training(node, len(dims[node.input[0]]), types, attributes, axes_input)

    return rewrite_nodes(graph, replace)


def _training(node, rank: int, types: dict[str, int], attributes: dict, axes_input: bool):
    from onnx import helper

    x, scale, bias, mean, var = node.input[:5]
    stats_type = types.get(mean) or types[x]
    stem = node.name or node.output[0]
    reduced = [0, *range(2, rank)]
    nodes = []

    def add(op: str, *inputs: str, output: str | None = None, **attrs) -> str:
        output = output or f"{stem}_training_{len(nodes)}"
        nodes.append(helper.make_node(op, list(inputs), [output], **attrs))
        return output

    def like_x(value: str) -> str:  # scale and B may have another float type than X (opset 15)
        return value if types.get(value, types[x]) == types[x] else add("Cast", value, to=types[x])

    def reduce_mean(value: str) -> str:
        if axes_input:
            return add("ReduceMean", value, f"{stem}_axes", keepdims=0)
        return add("ReduceMean", value, axes=reduced, keepdims=0)

    def per_channel(value: str) -> str:  # (C,) against X's [N, C, ...]; [N, C] takes it as it is
        return add("Unsqueeze", value, f"{stem}_channel_axes") if rank > 2 else value

    batch_mean = reduce_mean(x)
    centered = add("Sub", x, per_channel(batch_mean))
    batch_var = reduce_mean(add("Mul", centered, centered))
    deviation = add("Sqrt", add("Add", per_channel(batch_var), f"{stem}_epsilon"))
    normalized = add("Div", add("Mul", per_channel(like_x(scale)), centered), deviation)
    nodes.append(helper.make_node("Add", [normalized, per_channel(like_x(bias))], [node.output[0]], name=node.name))
    for given, batch, output in ((mean, batch_mean, 1), (var, batch_var, 2)):
        if len(node.output) > output and node.output[output]:
            batch = batch if stats_type == types[x] else add("Cast", batch, to=stats_type)
            add("Add", add("Mul", given, f"{stem}_momentum"), add("Mul", batch, f"{stem}_rest"),
                output=node.output[output])
    momentum = attributes.get("momentum", 0.9)
    x_numpy, stats_numpy = (helper.tensor_dtype_to_np_dtype(t) for t in (types[x], stats_type))
    constants = {f"{stem}_epsilon": np.array(attributes.get("epsilon", 1e-5), x_numpy),
                 f"{stem}_momentum": np.array(momentum, stats_numpy),
                 f"{stem}_rest": np.array(1 - momentum, stats_numpy),
                 **({f"{stem}_channel_axes": np.arange(1, rank - 1, dtype=np.int64)} if rank > 2 else {}),
                 **({f"{stem}_axes": np.array(reduced, np.int64)} if axes_input else {})}
    return nodes, constants
