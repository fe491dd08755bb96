"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose or Gemm that feeds it.

y = (x - mean) * gamma / sqrt(var + eps) + beta after W x + b becomes W' x + b' with
W' = W * f along the output-channel axis and b' = (b - mean) * f + beta, f = gamma / sqrt(var + eps).
A BatchNormalization is folded only when its input comes from such a node with constant weights,
that node's output feeds nothing else, and it is not a graph output.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import drop_unused_initializers, output_channel_axis


def fold_batchnorm(graph: Graph) -> Graph:
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(graph.body)
    nodes = model.graph.node
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {out: node for node in nodes for out in node.output}
    uses = Counter(name for node in nodes for name in node.input)
    uses.update(o.name for o in model.graph.output)
    folded = []
    for bn in nodes:
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        producer = producers.get(bn.input[0])
        axis = _channel_axis(producer, weights) if producer is not None and uses[bn.input[0]] == 1 else None
        if axis is None or not all(name in weights for name in bn.input[1:5]):
            continue
        gamma, beta, mean, var = (weights[name].astype(np.float64) for name in bn.input[1:5])
        epsilon = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + epsilon)
        kernel = weights[producer.input[1]]
        shape = [1] * kernel.ndim
        shape[axis] = -1
        bias = weights[producer.input[2]] if len(producer.input) > 2 and producer.input[2] else np.zeros_like(mean)
        new_kernel = (kernel * factor.reshape(shape)).astype(kernel.dtype)
        new_bias = ((bias - mean) * factor + beta).astype(kernel.dtype)
        names = [f"{producer.name or producer.output[0]}_{role}_bnfolded" for role in ("weight", "bias")]
        model.graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in zip((new_kernel, new_bias), names))
        del producer.input[1:]
        producer.input.extend(names)
        producer.output[0] = bn.output[0]
        folded.append(bn)
    if not folded:
        return graph
    for bn in folded:
        nodes.remove(bn)
    drop_unused_initializers(model)
    live = {out for node in nodes for out in node.output} | {v.name for v in model.graph.input}
    kept_info = [v for v in model.graph.value_info if v.name in live]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
    return dataclasses.replace(graph, body=model)


def _channel_axis(node, weights: dict[str, np.ndarray]) -> int | None:
    """The output-channel axis of the node's constant weight, or None when it cannot take a fold."""
    if len(node.input) < 2 or node.input[1] not in weights:
        return None
    if len(node.input) > 2 and node.input[2] and (node.input[2] not in weights or weights[node.input[2]].ndim != 1):
        return None
    attrs = {a.name: a for a in node.attribute}
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
        return None
    if node.op_type == "ConvTranspose" and "group" in attrs and attrs["group"].i != 1:
        return None  # its weight's axis 1 holds one group's output channels, not all of them
    if node.op_type == "Gemm" and (any(name in attrs and attrs[name].f != 1.0 for name in ("alpha", "beta"))
                                   or ("transA" in attrs and attrs["transA"].i)):
        return None
    return output_channel_axis(node, weights[node.input[1]].ndim)
