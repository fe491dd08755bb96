"""A QLinearConv or ConvInteger written as an int32 Conv and, for QLinearConv, the requantization QuantizeLinear
defines, computed in float64.

TVM 0.27's importer has no converter for either. Both compute

    acc = conv(int32(x) - int32(x_zero_point), int32(w) - int32(w_zero_point)) + B             int32
    y = saturate(round_half_even(float64(acc) * float64(x_scale * w_scale / y_scale)) + y_zero_point)

ConvInteger's output being acc (no B), QLinearConv's y of y_zero_point's type, the scales' product and quotient in
float32, their product with acc in float64 (exact: rounded once). The zero point is added after rounding, as
QuantizeLinear and ONNX Runtime add it; onnx.reference adds it before, which differs on a sum landing on a half when
the zero point is odd. w_zero_point and w_scale are per tensor or, 1-D, per output channel: reshaped to [M, 1, ...]
to broadcast over the weight's and the output's channels. The Conv keeps the node's attributes. kiln's QDQ integer
kernels are no shortcut: they requantize in float32, which rounds some products otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import declared_dims, element_types, is_onnx_op, rewrite_nodes

if TYPE_CHECKING:
    import onnx

_INTEGERS = {2: np.uint8, 3: np.int8}  # UINT8, INT8: the types QLinearConv's output takes


def integer_conv_refusal(node: "onnx.NodeProto", dims: Mapping[str, Sequence[int | None]],
                         types: Mapping[str, int]) -> str | None:
    """Why integer_conv leaves the QLinearConv or ConvInteger `node` as it is; None where it rewrites it. `dims`
    holds the values' declared shapes (None: symbolic), `types` their element types."""
    if len(dims.get(_weight(node), ())) < 3:
        return "the weight's rank is not known"
    if node.op_type == "QLinearConv" and types.get(node.input[7]) not in _INTEGERS:
        return "y_zero_point not typed uint8 or int8"
    return None


def integer_conv(graph: Graph) -> Graph:
    from onnx import helper

    types = element_types(graph.body.graph)
    dims = declared_dims(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "QLinearConv", "ConvInteger") or integer_conv_refusal(node, dims, types):
            return None
        quantized = node.op_type == "QLinearConv"
        x, w, x_zero, w_zero = ((node.input[0], node.input[3], node.input[2], node.input[5]) if quantized else
                                (list(node.input) + ["", ""])[:4])
        bias = node.input[8] if quantized and len(node.input) > 8 else ""
        stem = node.name or node.output[0]
        rank = len(dims[w])
        # [M] -> [M, 1, ...] over the weight's dims, [M, 1, ...] over the output's but the batch
        channels, output_channels = f"{stem}_channels", f"{stem}_output_channels"
        x_nodes, x_centred = _centred(x, x_zero, None, f"{stem}_x")
        w_nodes, w_centred = _centred(w, w_zero, channels, f"{stem}_w")
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        accumulated = node.output[0] if not quantized else f"{stem}_accumulated"
        conv = helper.make_node("Conv", [x_centred, w_centred] + ([bias] if bias else []), [accumulated],
                                name=node.name if not quantized else f"{stem}_conv", **attributes)
        constants = {channels: np.array([-1] + [1] * (rank - 1), np.int64),
                     output_channels: np.array([-1] + [1] * (rank - 2), np.int64)}
        nodes = x_nodes + w_nodes + [conv]
        if quantized:
            requantized, bounds = _requantized(node, accumulated, output_channels, stem, types)
            nodes += requantized
            constants.update(bounds)
        return nodes, constants

    return rewrite_nodes(graph, replace)


def _centred(value: str, zero: str, channels: str | None, stem: str):
    """Nodes computing int32(value) - int32(zero) (zero reshaped by the shape `channels` names, where given); the
    nodes and the name of the difference (the int32 value alone where there is no zero point)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", [value], [f"{stem}_wide"], to=TensorProto.INT32)]
    if not zero:
        return nodes, f"{stem}_wide"
    nodes.append(helper.make_node("Cast", [zero], [f"{stem}_zero"], to=TensorProto.INT32))
    if channels:
        nodes.append(helper.make_node("Reshape", [f"{stem}_zero", channels], [f"{stem}_zero_channels"]))
    subtrahend = f"{stem}_zero_channels" if channels else f"{stem}_zero"
    nodes.append(helper.make_node("Sub", [f"{stem}_wide", subtrahend], [f"{stem}_centred"]))
    return nodes, f"{stem}_centred"


def _requantized(node, accumulated: str, channels: str, stem: str, types):
    """QLinearConv's requantization of the int32 `accumulated` into its output; the nodes, and the bounds they
    read."""
    from onnx import TensorProto, helper

    _, x_scale, _, _, w_scale, _, y_scale, y_zero = node.input[:8]
    n = {role: f"{stem}_{role}" for role in ("wide", "scales", "multiplier", "multiplier_channels",
                                              "wide_multiplier", "scaled", "zero", "shifted", "rounded", "low",
                                              "high", "floor", "clipped")}
    nodes = [
        helper.make_node("Cast", [accumulated], [n["wide"]], to=TensorProto.DOUBLE),
        helper.make_node("Mul", [x_scale, w_scale], [n["scales"]]),
        helper.make_node("Div", [n["scales"], y_scale], [n["multiplier"]]),
        helper.make_node("Reshape", [n["multiplier"], channels], [n["multiplier_channels"]]),
        helper.make_node("Cast", [n["multiplier_channels"]], [n["wide_multiplier"]], to=TensorProto.DOUBLE),
        helper.make_node("Mul", [n["wide"], n["wide_multiplier"]], [n["scaled"]]),
        helper.make_node("Round", [n["scaled"]], [n["rounded"]]),  # half to even
        helper.make_node("Cast", [y_zero], [n["zero"]], to=TensorProto.DOUBLE),
        helper.make_node("Add", [n["rounded"], n["zero"]], [n["shifted"]]),
        helper.make_node("Max", [n["shifted"], n["low"]], [n["floor"]]),
        helper.make_node("Min", [n["floor"], n["high"]], [n["clipped"]]),
        helper.make_node("Cast", [n["clipped"]], [node.output[0]], name=node.name, to=types[y_zero]),
    ]
    bounds = np.iinfo(_INTEGERS[types[y_zero]])
    return nodes, {n["low"]: np.array(bounds.min, np.float64), n["high"]: np.array(bounds.max, np.float64)}


def _weight(node: "onnx.NodeProto") -> str:
    return node.input[3 if node.op_type == "QLinearConv" else 1]
