"""A NonMaxSuppression's absent optional inputs given as the constants ONNX defines for them.

TVM's importer fills an absent iou_threshold with 0.5 and an absent score_threshold with 0.0, where ONNX means 0
(suppress any overlap) and no threshold at all: boxes scoring 0 or less (logits) were dropped and overlapping boxes
kept, with no error. An absent max_output_boxes_per_class is 0 in both. No threshold becomes -inf, which keeps
every score but -inf and NaN.
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import is_onnx_op, rewrite_nodes

# input 2, 3, 4 -> (name suffix, ONNX's meaning when absent)
_DEFAULTS = (("max_output", np.array([0], np.int64)), ("iou_threshold", np.array([0.0], np.float32)),
             ("score_threshold", np.array([-np.inf], np.float32)))


def nms_defaults(graph: Graph) -> Graph:
    import onnx

    def replace(node):
        given = list(node.input) + [""] * (5 - len(node.input))
        if not is_onnx_op(node, "NonMaxSuppression") or all(given[2:]):
            return None
        stem = node.name or node.output[0]
        inputs, constants = given[:2], {}
        for name, (role, value) in zip(given[2:], _DEFAULTS):
            if not name:
                name = f"{stem}_{role}"
                constants[name] = value
            inputs.append(name)
        filled = onnx.NodeProto()
        filled.CopyFrom(node)
        del filled.input[:]
        filled.input.extend(inputs)
        return [filled], constants

    return rewrite_nodes(graph, replace)
