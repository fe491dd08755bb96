"""A max-mode RoiAlign with a fixed sampling grid written as the gathers and arithmetic ONNX defines it by.

TVM 0.27's RoiAlign (TOPI's kernel, which CUDA and `--schedule none` builds use) computes max mode otherwise than
ONNX. ONNX's max (onnx.reference's op_roi_align, after ONNX Runtime) is not the max of the interpolated values: at
each of a bin's sampling_ratio x sampling_ratio points it takes the largest of the four corners' values each
multiplied by its bilinear weight, then the largest over the points; a point outside [-1, size] on either axis
gives 0. Along each axis a point p (clamped below at 0) reads low = floor(p) and low + 1 with weights 1 - f and f,
f = p - low, both corners the last row (column) with f = 0 where low reaches it. Written out: the points' rows and
columns per ROI ([rois, pooled * ratio]), one GatherND of the (batch, row, column) corners from X moved to
[N, H, W, C] per corner, and ReduceMax over each bin's points. An adaptive grid (sampling_ratio 0: per ROI) has no
static shape; it is left as it is, and the support check refuses it (the converter's max).
"""

from __future__ import annotations

import numpy as np

from kiln.compiler.frontends.onnx import opset_of
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, rewrite_nodes, static_shapes


def roi_align_max(graph: Graph) -> Graph:
    from onnx import helper

    shapes = static_shapes(graph.body.graph)
    types = element_types(graph.body.graph)
    opset = opset_of(graph.body)

    def replace(node):
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (not is_onnx_op(node, "RoiAlign") or attributes.get("mode", b"avg") != b"max"
                or attributes.get("sampling_ratio", 0) <= 0 or len(shapes.get(node.input[0], ())) != 4
                or node.input[1] not in shapes or not types.get(node.input[0])):
            return None
        half_pixel = attributes.get("coordinate_transformation_mode",
                                    b"half_pixel" if opset >= 16 else b"output_half_pixel") == b"half_pixel"
        return _max_pool(node, shapes[node.input[0]], shapes[node.input[1]][0], types[node.input[0]], attributes,
                         half_pixel, opset >= 18)

    return rewrite_nodes(graph, replace)


def _max_pool(node, x_shape: tuple[int, ...], count: int, elem_type: int, attributes: dict, half_pixel: bool,
              axes_input: bool):
    from onnx import TensorProto, helper

    x, rois, batch = node.input[:3]
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    _, _, height, width = x_shape
    ratio = attributes["sampling_ratio"]
    pooled = (attributes.get("output_height", 1), attributes.get("output_width", 1))
    stem = node.name or node.output[0]
    nodes, constants = [], {}

    def add(op: str, *inputs: str, output: str | None = None, **attrs) -> str:
        output = output or f"{stem}_max_{len(nodes)}"
        nodes.append(helper.make_node(op, list(inputs), [output], **attrs))
        return output

    def const(value, kind=dtype) -> str:
        name = f"{stem}_max_c{len(constants)}"
        constants[name] = np.asarray(value, kind)
        return name

    def column(index: int) -> str:  # rois[:, index] * spatial_scale, less half a pixel
        scaled = add("Mul", add("Gather", rois, const(index, np.int64), axis=1),
                     const(attributes.get("spatial_scale", 1.0)))
        return add("Sub", scaled, const(0.5)) if half_pixel else scaled

    def points(start: str, end: str, bins: int, size: int) -> tuple[list[tuple[str, str]], str]:
        """[(corner index [rois, bins * ratio] int64, its weight)] x 2 along one axis, and where points are
        outside."""
        extent = add("Sub", end, start)
        if not half_pixel:
            extent = add("Max", extent, const(1.0))
        step = add("Unsqueeze", add("Div", extent, const(float(bins))), const([1], np.int64))
        first = add("Add", add("Unsqueeze", start, const([1], np.int64)),
                    add("Mul", const(np.repeat(np.arange(bins), ratio)), step))
        position = add("Add", first, add("Div", add("Mul", const(np.tile(np.arange(ratio) + 0.5, bins)), step),
                                         const(float(ratio))))
        outside = add("Or", add("Less", position, const(-1.0)), add("Greater", position, const(float(size))))
        clamped = add("Max", position, const(0.0))
        last = const(float(size - 1))
        edge = add("GreaterOrEqual", add("Floor", clamped), last)
        low = add("Where", edge, last, add("Floor", clamped))
        high = add("Where", edge, last, add("Add", low, const(1.0)))
        fraction = add("Where", edge, const(0.0), add("Sub", clamped, low))
        corners = [(add("Cast", low, to=TensorProto.INT64), add("Sub", const(1.0), fraction)),
                   (add("Cast", high, to=TensorProto.INT64), fraction)]
        return corners, outside

    rows, outside_y = points(column(1), column(3), pooled[0], height)
    columns, outside_x = points(column(0), column(2), pooled[1], width)
    spread = [count, pooled[0] * ratio, pooled[1] * ratio, 1]
    image = add("Expand", add("Reshape", add("Cast", batch, to=TensorProto.INT64), const([-1, 1, 1, 1], np.int64)),
                const(spread, np.int64))
    channels_last = add("Transpose", x, perm=[0, 2, 3, 1])
    values = []
    for row, row_weight in rows:
        row_index = add("Expand", add("Unsqueeze", row, const([2, 3], np.int64)), const(spread, np.int64))
        for col, col_weight in columns:
            col_index = add("Expand", add("Unsqueeze", col, const([1, 3], np.int64)), const(spread, np.int64))
            read = add("GatherND", channels_last, add("Concat", image, row_index, col_index, axis=-1))
            weight = add("Mul", add("Unsqueeze", row_weight, const([2, 3], np.int64)),
                         add("Unsqueeze", col_weight, const([1, 3], np.int64)))
            values.append(add("Mul", read, weight))
    outside = add("Or", add("Unsqueeze", outside_y, const([2, 3], np.int64)),
                  add("Unsqueeze", outside_x, const([1, 3], np.int64)))
    sampled = add("Where", outside, const(0.0), add("Max", *values))
    binned = add("Reshape", sampled, const([count, pooled[0], ratio, pooled[1], ratio, -1], np.int64))
    pooled_max = (add("ReduceMax", binned, const([2, 4], np.int64), keepdims=0) if axes_input
                  else add("ReduceMax", binned, axes=[2, 4], keepdims=0))
    nodes.append(helper.make_node("Transpose", [pooled_max], [node.output[0]], name=node.name, perm=[0, 3, 1, 2]))
    return nodes, constants
