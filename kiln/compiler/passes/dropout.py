"""A Dropout whose outcome is not random written as an Identity and a mask of ones.

TVM 0.27's converter computes a Dropout's first output only, and in inference mode only. ONNX's Dropout is the
identity, with a mask all true, wherever it drops nothing: in inference mode (training_mode absent or constant
false; always before opset 12, and kiln upgrades older models to opset 13 before any pass) and, whatever
training_mode is, with a ratio constant 0 (whose scale 1 / (1 - ratio) is 1). Those are rewritten, the mask
expanded to the data's shape. A training-mode Dropout with another ratio is random, and one whose training_mode is
computed at run time may be: both are left as they are, and the support check (kiln.compiler.backends.tvm.ops)
refuses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.frontends.onnx import opset_of
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import is_onnx_op, rewrite_nodes

if TYPE_CHECKING:
    import onnx


def inference_dropout(graph: Graph) -> Graph:
    from onnx import helper

    opset = opset_of(graph.body)
    values = {t.name: t for t in graph.body.graph.initializer}

    def replace(node):
        if not is_onnx_op(node, "Dropout") or not _drops_nothing(node, opset, values):
            return None
        nodes = [helper.make_node("Identity", node.input[:1], node.output[:1], name=node.name)]
        if len(node.output) < 2 or not node.output[1]:
            return nodes, {}
        stem = node.name or node.output[0]
        nodes += [helper.make_node("Shape", node.input[:1], [f"{stem}_shape"]),
                  helper.make_node("Expand", [f"{stem}_true", f"{stem}_shape"], [node.output[1]])]
        return nodes, {f"{stem}_true": np.array(True)}

    return rewrite_nodes(graph, replace)


def _drops_nothing(node: "onnx.NodeProto", opset: int, values: dict) -> bool:
    """Whether the Dropout `node` is the identity whatever its inputs' values (`values`: the constants known)."""
    from onnx import numpy_helper

    if opset < 12:
        return True

    def constant(index: int):
        name = node.input[index] if index < len(node.input) else ""
        return numpy_helper.to_array(values[name]) if name in values else None

    training = constant(2)
    if len(node.input) < 3 or not node.input[2] or (training is not None and not training.any()):
        return True
    ratio = constant(1) if len(node.input) > 1 and node.input[1] else np.array(0.5)
    return ratio is not None and not ratio.any()
