"""Rewrite a 2-D ConvTranspose as one ordinary Conv whose outputs are interleaved: sub-pixel decomposition.

A stride-s ConvTranspose scatters each input pixel through the whole kernel; output phase r (the outputs at
positions = r mod s, along each axis) receives only the kernel taps r, r + s, r + 2s, ... So each phase is an
ordinary convolution of the input with that flipped sub-kernel (T = ceil(K / s) taps, zero-filled past K), and
the s x s phases stack as the output channels of one Conv [OC * sh * sw, IC, Th, Tw]:

    x [N, IC, H, W] -> Conv (pads Th-1-q0 .. , no stride) [N, OC*sh*sw, Qh, Qw]
      -> Reshape [N, OC, sh, sw, Qh, Qw] -> Transpose [N, OC, Qh, sh, Qw, sw] -> Reshape [N, OC, Qh*sh, Qw*sw]
      -> Slice (the ConvTranspose's pads and output_padding) [N, OC, OH, OW]

with as many multiply-adds as the ConvTranspose when s divides K (kernel 4, stride 2: 4 phases of 2x2 taps), and
kiln's conv2d kernels run it where TVM's generic conv2d_transpose is unscheduled (GluonCV's simple_pose spent 99%
of its time there). Exact up to float summation order.

Rewritten: group 1, dilations 1, auto_pad NOTSET without output_shape, constant weights (and bias), an input of
static shape. Any other ConvTranspose is left as is.

Before that, any ConvTranspose's output_shape (which TVM's converter ignores) is written as the pads and
output_padding that give it, by ONNX's equations: total padding = the shape without pads - output_shape, split
evenly, its odd pixel at the start (at the end for SAME_UPPER); a negative total grows the output at the end as
output_padding does, up to the strides (ONNX Runtime rejects more). Where that cannot be done (shapes not static,
auto_pad VALID, a SAME_UPPER output grown, where ONNX's reference and ONNX Runtime disagree), the support check
(kiln.compiler.backends.tvm.ops) names why with `output_shape_refusal`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import is_onnx_op, rewrite_nodes, static_dims, static_shapes

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import onnx


def conv_transpose(graph: Graph) -> Graph:
    if not any(node.op_type == "ConvTranspose" for node in graph.body.graph.node):
        return graph
    weights = {t.name: t for t in graph.body.graph.initializer}
    shapes = static_shapes(graph.body.graph)
    dims = static_dims(graph.body.graph)

    def replace(node):
        explicit = _explicit_padding(node, dims)
        return _subpixel(explicit or node, weights, shapes) or (([explicit], {}) if explicit else None)

    return rewrite_nodes(graph, replace)


def output_shape_refusal(node: "onnx.NodeProto", dims: "Mapping[str, Sequence[int | None]]") -> str | None:
    """Why conv_transpose leaves the output_shape of the ConvTranspose `node` as it is; None where it has none or
    the pass writes it as pads. `dims` holds the values' shapes (None: symbolic)."""
    padding = _padding(node, dims)
    return padding if isinstance(padding, str) else None


def _explicit_padding(node: "onnx.NodeProto", dims: "Mapping[str, Sequence[int]]") -> "onnx.NodeProto | None":
    """The ConvTranspose `node` with its output_shape written as pads and output_padding; None where it has no
    output_shape or it cannot be."""
    from onnx import helper

    padding = _padding(node, dims)
    if padding is None or isinstance(padding, str):
        return None
    pads, output_padding = padding
    explicit = helper.make_node("ConvTranspose", node.input, node.output, name=node.name, pads=pads,
                                output_padding=output_padding)
    explicit.attribute.extend(a for a in node.attribute
                              if a.name not in ("output_shape", "auto_pad", "pads", "output_padding"))
    return explicit


def _padding(node: "onnx.NodeProto", dims: "Mapping[str, Sequence[int | None]]") -> "tuple[list, list] | str | None":
    """(pads, output_padding) that give the ConvTranspose `node` its output_shape, why they cannot, or None where it
    has no output_shape."""
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    wanted = attributes.get("output_shape")
    if not is_onnx_op(node, "ConvTranspose") or not wanted:
        return None
    refused = f"output_shape {list(wanted)} (the converter ignores it)"
    data, weight = dims.get(node.input[0]), dims.get(node.input[1])
    spatial = len(wanted)
    kernel = attributes.get("kernel_shape") or (weight[2:] if weight is not None else None)
    if data is None or kernel is None or None in (*data[2:], *kernel):
        return f"{refused}: input or weight shape not static; pin the input shapes"
    if len(data) != spatial + 2:
        return f"{refused}: {spatial} dims for the input's {len(data) - 2} spatial axes"
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER"):
        return f"{refused} with auto_pad {auto_pad}"
    strides, dilations = attributes.get("strides", [1] * spatial), attributes.get("dilations", [1] * spatial)
    extra = list(attributes.get("output_padding", [0] * spatial))
    begins, ends = [], []
    for i in range(spatial):
        total = (strides[i] * (data[2 + i] - 1) + extra[i] + (kernel[i] - 1) * dilations[i] + 1) - wanted[i]
        if total < 0 and auto_pad == "SAME_UPPER":
            return f"{refused}: a SAME_UPPER output grown (ONNX's reference and ONNX Runtime grow it apart)"
        if total < 0 and extra[i] - total >= strides[i]:
            return f"{refused}: grown past what output_padding reaches (ONNX Runtime rejects it too)"
        extra[i] -= min(total, 0)
        half = max(total, 0) // 2
        begins.append(half if auto_pad == "SAME_UPPER" else max(total, 0) - half)
        ends.append(max(total, 0) - begins[-1])
    return begins + ends, extra


def _subpixel(node: "onnx.NodeProto", weights: dict, shapes: dict) -> tuple[list, dict] | None:
    """The nodes that replace one ConvTranspose and the constants they add, or None to keep it."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if (node.op_type != "ConvTranspose" or len(node.input) < 2 or node.input[1] not in weights
            or node.input[0] not in shapes or (len(node.input) > 2 and node.input[2] and node.input[2] not in weights)):
        return None
    weight = numpy_helper.to_array(weights[node.input[1]])
    if (weight.ndim != 4 or attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1]))
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in attrs):
        return None
    n, _, *size = shapes[node.input[0]]
    in_channels, out_channels, *kernel = weight.shape
    strides = list(attrs.get("strides", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    extra = list(attrs.get("output_padding", [0, 0]))
    taps = [-(-k // s) for k, s in zip(kernel, strides)]
    axes = [_axis(h, k, s, t, begin, end, more)
            for h, k, s, t, begin, end, more in zip(size, kernel, strides, taps, pads[:2], pads[2:], extra)]
    # [IC, OC, K] zero-filled to [IC, OC, T*s], kernel index m*s + r -> [OC, rh, rw, IC, Th, Tw], taps flipped
    filled = np.zeros((in_channels, out_channels, taps[0] * strides[0], taps[1] * strides[1]), weight.dtype)
    filled[:, :, :kernel[0], :kernel[1]] = weight
    phases = filled.reshape(in_channels, out_channels, taps[0], strides[0], taps[1], strides[1])
    conv_weight = phases.transpose(1, 3, 5, 0, 2, 4)[..., ::-1, ::-1].reshape(
        out_channels * strides[0] * strides[1], in_channels, *taps)
    stem = node.name or node.output[0]
    pending = {f"{stem}_subpixel_weight": np.ascontiguousarray(conv_weight)}
    conv_inputs = [node.input[0], f"{stem}_subpixel_weight"]
    if len(node.input) > 2 and node.input[2]:
        bias = numpy_helper.to_array(weights[node.input[2]])
        pending[f"{stem}_subpixel_bias"] = np.repeat(bias, strides[0] * strides[1])
        conv_inputs.append(f"{stem}_subpixel_bias")
    (qh, ph, eh, crop_h, oh), (qw, pw, ew, crop_w, ow) = axes
    pending[f"{stem}_subpixel_phases"] = np.array([n, out_channels, *strides, qh, qw], np.int64)
    pending[f"{stem}_subpixel_interleaved"] = np.array([n, out_channels, qh * strides[0], qw * strides[1]],
                                                       np.int64)
    conv = helper.make_node("Conv", conv_inputs, [f"{stem}_subpixel_conv"], name=f"{stem}_subpixel_conv",
                            kernel_shape=taps, pads=[ph, pw, eh, ew])
    split = helper.make_node("Reshape", [conv.output[0], f"{stem}_subpixel_phases"], [f"{stem}_subpixel_split"],
                             name=f"{stem}_subpixel_split")
    interleave = helper.make_node("Transpose", split.output, [f"{stem}_subpixel_transposed"],
                                  name=f"{stem}_subpixel_transpose", perm=[0, 1, 4, 2, 5, 3])
    crop = (crop_h, crop_w) != (0, 0) or (oh, ow) != (qh * strides[0], qw * strides[1])
    merge = helper.make_node("Reshape", [interleave.output[0], f"{stem}_subpixel_interleaved"],
                             [f"{stem}_subpixel_merged" if crop else node.output[0]], name=f"{stem}_subpixel_merge")
    result = [conv, split, interleave, merge]
    if crop:
        pending[f"{stem}_subpixel_starts"] = np.array([crop_h, crop_w], np.int64)
        pending[f"{stem}_subpixel_ends"] = np.array([crop_h + oh, crop_w + ow], np.int64)
        pending[f"{stem}_subpixel_axes"] = np.array([2, 3], np.int64)
        result.append(helper.make_node("Slice", [merge.output[0], *(f"{stem}_subpixel_{role}" for role in
                                                                     ("starts", "ends", "axes"))],
                                       list(node.output[:1]), name=f"{stem}_subpixel_crop"))
    return result, pending


def _axis(size: int, kernel: int, stride: int, taps: int, begin: int, end: int,
          output_padding: int) -> tuple[int, int, int, int, int]:
    """Along one axis: (Q outputs per phase, the Conv's begin and end pads, the crop's start, the output size).

    Phase r's output j is the full (unpadded) ConvTranspose's output s * (j + q0) + r; q0 is the first phase row
    the crop keeps, unless reaching it would need a negative begin pad."""
    out = stride * (size - 1) + kernel + output_padding - begin - end
    first = min(begin // stride, taps - 1)
    crop = begin - stride * first
    rows = -(-(crop + out) // stride)
    conv_begin = taps - 1 - first
    conv_end = max(0, rows - size - conv_begin + taps - 1)
    return size + conv_begin + conv_end - taps + 1, conv_begin, conv_end, crop, out

