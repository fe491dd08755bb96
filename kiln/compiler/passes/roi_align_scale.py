"""A half_pixel RoiAlign's spatial_scale applied to its ROIs by a Mul before it, leaving a scale of 1.

ONNX scales a ROI, then moves it half a pixel (roi * scale - 0.5); TVM's importer moves it first ((roi - 0.5) *
scale), which agrees only at scale 1: Faster R-CNN-style models (scale 1/16) pooled the wrong pixels with no error.
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.frontends.onnx import opset_of
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import is_onnx_op, rewrite_nodes


def roi_align_scale(graph: Graph) -> Graph:
    import onnx

    default_mode = b"half_pixel" if opset_of(graph.body) >= 16 else b"output_half_pixel"

    def replace(node):
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        scale = attributes.get("spatial_scale", 1.0)
        if (not is_onnx_op(node, "RoiAlign") or scale == 1.0
                or attributes.get("coordinate_transformation_mode", default_mode) != b"half_pixel"):
            return None
        name = node.name or node.output[0]
        constant, typed, scaled = f"{name}_spatial_scale", f"{name}_spatial_scale_typed", f"{name}_scaled_rois"
        cast = onnx.helper.make_node("CastLike", [constant, node.input[1]], [typed], name=f"{name}_scale_type")
        multiply = onnx.helper.make_node("Mul", [node.input[1], typed], [scaled], name=f"{name}_scale_rois")
        pooled = onnx.helper.make_node("RoiAlign", [node.input[0], scaled, *node.input[2:]], list(node.output),
                                       name=node.name, **{**attributes, "spatial_scale": 1.0})
        return [cast, multiply, pooled], {constant: np.array(scale, np.float32)}

    return rewrite_nodes(graph, replace)
