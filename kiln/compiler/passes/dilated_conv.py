"""Rewrite a dilated 2-D Conv as an undilated one over the input's d x d phases: space-to-batch.

With dilation d, output row d * u + r reads only input rows = r mod d (of the padded input), which the kernel's
taps visit one after another: so each phase of the input, taken alone, is convolved with the kernel undilated.
The phases become the batch of one ordinary Conv, and its outputs are interleaved back:

    x [N, C, H, W] -> Pad [N, C, d*Lh, d*Lw] -> Reshape [N, C, Lh, dh, Lw, dw] -> Transpose [dh, dw, N, C, Lh, Lw]
      -> Reshape [dh*dw*N, C, Lh, Lw] -> Conv (no pads, no dilation) [dh*dw*N, M, Qh, Qw]
      -> Reshape [dh, dw, N, M, Qh, Qw] -> Transpose [N, M, Qh, dh, Qw, dw] -> Reshape [N, M, Qh*dh, Qw*dw]
      -> Slice [N, M, OH, OW]

(L = Q + K - 1, Q = ceil(OH / d): the Pad's end rows beyond the Conv's own pads only fill the last phases out
to whole ones, and their outputs are cropped). kiln's blocked conv2d kernels run the Conv, where the dilated
one fell to TVM's generic, unscheduled conv2d (FCN and DeepLab's backbones ran 10-20x slower than ONNX Runtime).
Exact up to float summation order.

Where the phases would be narrower than MAX_PHASE_WIDTH outputs (DeepLab's ASPP: dilation 12-36 over a 32x32 map
made up to 1,296 phases of one output each, mostly padding), a group-1 Conv instead reads its taps as channels:
each kernel tap (i, j) is the padded input's window shifted by (i*d, j*d), the windows are concatenated along the
channels, and one 1x1 Conv with the taps' weights side by side sums them: the same multiply-adds on kiln's conv
kernel. Only over the outputs where a tap reads the map, though: taps are grouped by that rectangle, each group
is one such 1x1 Conv over its rectangle, padded back to the whole output, and the groups are summed (then the
bias added). A tap whose window lies wholly in the padding is left out (at a dilation past the map's size, all
but the centre one); at dilation 24 on a 32x32 map the rest read it for a quarter of the outputs.

Rewritten: strides 1, auto_pad NOTSET, any group, constant weights, an input of static shape. Other Convs are
left as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import rewrite_nodes, static_shapes

if TYPE_CHECKING:
    import onnx


def dilated_conv(graph: Graph) -> Graph:
    if not any(node.op_type == "Conv" and _dilations(node) != [1, 1] for node in graph.body.graph.node):
        return graph
    weights = {t.name: t for t in graph.body.graph.initializer}
    shapes = static_shapes(graph.body.graph)
    return rewrite_nodes(graph, lambda node: _rewrite(node, weights, shapes))


def _dilations(node: "onnx.NodeProto") -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "dilations"), [1, 1])


MAX_PHASE_WIDTH = 8  # output columns per phase below which taps-as-channels replaces space-to-batch
MAX_READ_SHARE = 0.75  # of taps x outputs read on the map, above which the taps are one Conv over every output


def _rewrite(node: "onnx.NodeProto", weights: dict, shapes: dict) -> tuple[list, dict] | None:
    """The nodes that replace one dilated Conv and the constants they add, or None to keep it."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    dilation = _dilations(node)
    if (node.op_type != "Conv" or dilation == [1, 1] or len(dilation) != 2 or node.input[0] not in shapes
            or node.input[1] not in weights or any(s != 1 for s in attrs.get("strides", [1, 1]))
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        return None
    size = shapes[node.input[0]][2:]
    kernel = list(weights[node.input[1]].dims[2:])
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    outputs = [h + begin + end - d * (k - 1) for h, begin, end, d, k in zip(size, pads[:2], pads[2:], dilation, kernel)]
    rows = [-(-o // d) for o, d in zip(outputs, dilation)]
    if attrs.get("group", 1) == 1 and rows[1] < MAX_PHASE_WIDTH:
        return _taps_as_channels(node, attrs, weights[node.input[1]], size, pads, dilation, outputs)
    return _space_to_batch(node, attrs, shapes, tuple(weights[node.input[1]].dims), pads, dilation, outputs, rows)


def _taps_as_channels(node: "onnx.NodeProto", attrs: dict, weight: "onnx.TensorProto", size: list[int],
                      pads: list[int], dilation: list[int], outputs: list[int]) -> tuple[list, dict] | None:
    from onnx import helper, numpy_helper

    kernel = numpy_helper.to_array(weight)
    # tap -> the outputs whose reads of it fall on the map: [(first, end) of rows, (first, end) of columns]
    spans = {(i, j): [_on_map(k * d - pad, o, h) for k, d, pad, o, h in zip((i, j), dilation, pads, outputs, size)]
             for i in range(kernel.shape[2]) for j in range(kernel.shape[3])}
    groups: dict[tuple, list] = {}
    for tap, span in spans.items():
        if all(first < end for first, end in span):  # a tap wholly in the padding is left out
            groups.setdefault(tuple(span), []).append(tap)
    if not groups:  # every output lies in the padding
        return None
    full = tuple((0, o) for o in outputs)
    reads = sum(len(taps) * _area(span) for span, taps in groups.items())
    if reads > MAX_READ_SHARE * sum(map(len, groups.values())) * _area(full):
        groups = {full: [tap for taps in groups.values() for tap in taps]}  # one Conv: the few zeros cost less
    stem = node.name or node.output[0]
    constants = {f"{stem}_taps_pads": np.array([0, 0, *pads[:2], 0, 0, *pads[2:]], np.int64),
                 f"{stem}_taps_axes": np.array([2, 3], np.int64)}
    padded = f"{stem}_taps_padded"
    nodes = [helper.make_node("Pad", [node.input[0], f"{stem}_taps_pads"], [padded], name=padded)]
    conv_attrs = {key: value for key, value in attrs.items() if key not in ("dilations", "pads", "auto_pad")}
    conv_attrs["kernel_shape"] = [1, 1]
    bias = list(node.input[2:])
    pieces = []
    for g, (span, taps) in enumerate(groups.items()):
        piece = f"{stem}_taps{g}"
        windows = []
        for i, j in taps:
            window = f"{piece}_{i}_{j}"
            start = [k * d + first for k, d, (first, _) in zip((i, j), dilation, span)]
            constants[f"{window}_starts"] = np.array(start, np.int64)
            constants[f"{window}_ends"] = np.array([s + end - first for s, (first, end) in zip(start, span)],
                                                   np.int64)
            nodes.append(helper.make_node("Slice", [padded, f"{window}_starts", f"{window}_ends",
                                                    f"{stem}_taps_axes"], [window], name=window))
            windows.append(window)
        if len(windows) > 1:
            nodes.append(helper.make_node("Concat", windows, [f"{piece}_windows"], name=f"{piece}_windows", axis=1))
        constants[f"{piece}_weight"] = np.ascontiguousarray(
            np.concatenate([kernel[:, :, i, j] for i, j in taps], axis=1)[:, :, None, None])
        whole = span == full and len(groups) == 1
        out = node.output[0] if whole else f"{piece}_conv"
        nodes.append(helper.make_node("Conv", [nodes[-1].output[0], f"{piece}_weight", *(bias if whole else [])],
                                      [out], name=f"{piece}_conv", **conv_attrs))
        if span != full:
            constants[f"{piece}_place"] = np.array(
                [0, 0, *(first for first, _ in span), 0, 0, *(o - end for o, (_, end) in zip(outputs, span))],
                np.int64)
            nodes.append(helper.make_node("Pad", [out, f"{piece}_place"], [f"{piece}_placed"], name=f"{piece}_placed"))
        pieces.append(nodes[-1].output[0])
    if pieces[0] == node.output[0]:
        return nodes, constants
    summed = f"{stem}_taps_sum" if bias else node.output[0]
    nodes.append(helper.make_node("Sum", pieces, [summed], name=f"{stem}_taps_sum"))
    if bias:
        constants[f"{stem}_bias_shape"] = np.array([1, -1, 1, 1], np.int64)
        nodes.append(helper.make_node("Reshape", [bias[0], f"{stem}_bias_shape"], [f"{stem}_bias"],
                                      name=f"{stem}_bias"))
        nodes.append(helper.make_node("Add", [summed, f"{stem}_bias"], list(node.output), name=f"{stem}_taps_bias"))
    return nodes, constants


def _area(span: tuple) -> int:
    return (span[0][1] - span[0][0]) * (span[1][1] - span[1][0])


def _on_map(offset: int, outputs: int, size: int) -> tuple[int, int]:
    """The outputs [first, end) whose read of a tap starting `offset` rows into the (unpadded) input lands on one
    of its `size` rows (first >= end: none does)."""
    return max(0, -offset), min(outputs, size - offset)


def _space_to_batch(node: "onnx.NodeProto", attrs: dict, shapes: dict, weight_shape: tuple[int, ...],
                    pads: list[int], dilation: list[int], outputs: list[int], rows: list[int]) -> tuple[list, dict]:
    from onnx import helper

    n, channels, *size = shapes[node.input[0]]
    out_channels, _, *kernel = weight_shape
    phase_size = [q + k - 1 for q, k in zip(rows, kernel)]
    ends = [d * length - h - begin for d, length, h, begin in zip(dilation, phase_size, size, pads[:2])]
    stem = node.name or node.output[0]

    def name(role: str) -> str:
        return f"{stem}_phases_{role}"

    constants = {
        name("pads"): np.array([0, 0, *pads[:2], 0, 0, *ends], np.int64),
        name("split"): np.array([n, channels, phase_size[0], dilation[0], phase_size[1], dilation[1]], np.int64),
        name("batch"): np.array([dilation[0] * dilation[1] * n, channels, *phase_size], np.int64),
        name("unbatch"): np.array([*dilation, n, out_channels, *rows], np.int64),
        name("merged"): np.array([n, out_channels, rows[0] * dilation[0], rows[1] * dilation[1]], np.int64),
    }
    conv_attrs = {key: value for key, value in attrs.items() if key not in ("dilations", "pads", "auto_pad")}
    chain = [("Pad", [node.input[0], name("pads")], {}), ("Reshape", [name("split")], {}),
             ("Transpose", [], {"perm": [3, 5, 0, 1, 2, 4]}), ("Reshape", [name("batch")], {}),
             ("Conv", node.input[1:], conv_attrs), ("Reshape", [name("unbatch")], {}),
             ("Transpose", [], {"perm": [2, 3, 4, 0, 5, 1]}), ("Reshape", [name("merged")], {})]
    crop = outputs != [q * d for q, d in zip(rows, dilation)]
    if crop:
        constants[name("starts")], constants[name("ends")] = np.zeros(2, np.int64), np.array(outputs, np.int64)
        constants[name("axes")] = np.array([2, 3], np.int64)
        chain.append(("Slice", [name("starts"), name("ends"), name("axes")], {}))
    result, previous = [], None
    for i, (op, inputs, attributes) in enumerate(chain):
        output = node.output[0] if i == len(chain) - 1 else name(f"{op.lower()}{i}")
        result.append(helper.make_node(op, ([previous] if previous else []) + list(inputs), [output],
                                       name=name(f"{op.lower()}{i}"), **attributes))
        previous = output
    return result, constants
