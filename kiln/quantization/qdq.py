"""The one pass that applies a `Plan`: insert QuantizeLinear/DequantizeLinear pairs.

For a planned activation tensor T, `Q(T) -> T_quantized`, `DQ -> T_dequantized` is inserted after
T's producer, and the quantized nodes read T_dequantized; float nodes keep reading T. When T is a
graph output, the producer writes `T_prequant` and the DQ writes T, so the output keeps its name.
A quantized node's constant weight becomes int8 + per-channel DQ, its bias int32 + DQ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.onnx_graph import drop_unused_initializers, output_channel_axis
from kiln.quantization.config import ActivationType
from kiln.quantization.policy import WEIGHTED, Plan, QParams, quantize_bias, quantize_weight

if TYPE_CHECKING:
    import onnx

QDQ_OPSET = 13  # DequantizeLinear with `axis` (per-channel)


def dequantized_name(tensor: str, outputs: set[str]) -> str:
    """What quantized consumers read in place of `tensor`."""
    return tensor if tensor in outputs else f"{tensor}_dequantized"


def insert_qdq(model: "onnx.ModelProto", plan: Plan) -> "onnx.ModelProto":
    import onnx
    from onnx import helper, numpy_helper, version_converter

    from kiln.compiler.frontends.onnx import opset_of

    if opset_of(model) < QDQ_OPSET:
        model = version_converter.convert_version(model, QDQ_OPSET)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    new_nodes: list = []
    initializers: list = []

    def add_initializer(array: np.ndarray, name: str) -> str:
        initializers.append(numpy_helper.from_array(array, name))
        return name

    def quantize_activation(tensor: str) -> None:
        params: QParams = plan.activations[tensor]
        source = f"{tensor}_prequant" if tensor in outputs else tensor
        dtype = np.uint8 if params.dtype is ActivationType.UINT8 else np.int8
        scale = add_initializer(np.array(params.scale, np.float32), f"{tensor}_scale")
        zero = add_initializer(np.array(params.zero_point, dtype), f"{tensor}_zero_point")
        new_nodes.append(helper.make_node("QuantizeLinear", [source, scale, zero], [f"{tensor}_quantized"],
                                          name=f"{tensor}_QuantizeLinear"))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}_quantized", scale, zero],
                                          [dequantized_name(tensor, outputs)], name=f"{tensor}_DequantizeLinear"))

    def dequantize_constant(values: np.ndarray, scales: np.ndarray, name: str, axis: int) -> str:
        zeros = np.zeros(scales.shape, values.dtype)
        inputs = [add_initializer(values, f"{name}_quantized"), add_initializer(scales, f"{name}_scale"),
                  add_initializer(zeros, f"{name}_zero_point")]
        new_nodes.append(helper.make_node("DequantizeLinear", inputs, [f"{name}_dequantized"],
                                          name=f"{name}_DequantizeLinear", axis=axis))
        return f"{name}_dequantized"

    for tensor in (v.name for v in graph.input):
        if tensor in plan.activations:
            quantize_activation(tensor)
    # every reader of a quantized node's output reads it dequantized, float ops too: the integer kernel that
    # replaces the node produces only the quantized value
    chosen_outputs = {name for node in graph.node if node.name in plan.nodes for name in node.output
                      if name in plan.activations}
    for node in graph.node:
        if node.name in plan.nodes:
            _rewrite_inputs(node, plan, weights, outputs, dequantize_constant)
        else:
            node.input[:] = [dequantized_name(name, outputs) if name in chosen_outputs else name
                             for name in node.input]
        produced = list(node.output)
        for index, name in enumerate(produced):
            if name in plan.activations and name in outputs:
                node.output[index] = f"{name}_prequant"
        new_nodes.append(node)
        for name in produced:
            if name in plan.activations:
                quantize_activation(name)
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(initializers)
    drop_unused_initializers(result)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(result)


def _rewrite_inputs(node, plan: Plan, weights: dict[str, np.ndarray], outputs: set[str], dequantize_constant) -> None:
    weight_scales = None
    input_params = plan.activations.get(node.input[0])
    for index, name in enumerate(node.input):
        if name in plan.activations:
            node.input[index] = dequantized_name(name, outputs)
        elif node.op_type in WEIGHTED and index == 1 and name in weights and weights[name].dtype == np.float32:
            axis = output_channel_axis(node, weights[name].ndim)
            values, weight_scales = quantize_weight(weights[name], axis, plan.reduce_range)
            node.input[index] = dequantize_constant(values, weight_scales, f"{node.name}_weight", axis)
        elif (index == 2 and weight_scales is not None and input_params is not None
              and _takes_int32_bias(node, weights.get(name), weight_scales)):
            values, scales = quantize_bias(weights[name], input_params.scale, weight_scales)
            node.input[index] = dequantize_constant(values, scales, f"{node.name}_bias", 0)


def _takes_int32_bias(node, bias: np.ndarray | None, weight_scales: np.ndarray) -> bool:
    if bias is None or bias.ndim != 1 or bias.shape[0] != weight_scales.shape[0] or node.op_type == "MatMul":
        return False
    scaled = any(a.name in ("alpha", "beta") and a.f != 1.0 for a in node.attribute)
    grouped = node.op_type == "ConvTranspose" and any(a.name == "group" and a.i != 1 for a in node.attribute)
    return not scaled and not grouped
