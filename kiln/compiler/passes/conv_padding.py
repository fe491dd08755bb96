"""A Conv's padding as its own four (or 2 x rank) numbers: "same" auto-padding resolved, and a zero Pad before it
folded in.

Exporters write "same" convs (PyTorch's padding="same", EfficientNet's) with auto_pad SAME_UPPER/SAME_LOWER, and
TensorFlow-style asymmetric padding as a Pad node before a VALID conv. TVM imports both as a pad kernel of its own
that reads and writes the whole feature map in NCHW, so the blocked layout around it is transformed back and forth;
kiln's conv kernels take any explicit padding. A Pad is folded when it pads with the constant 0, only the spatial
dims, by non-negative amounts, and every reader is a Conv (explicitly padded or VALID) taking it as its data (not a
graph output). A strided
"same" conv needs its input's spatial shape (known once shapes are pinned); without it, or with dilations (which
ONNX Runtime does not run, so nothing could check them), it is left as it is.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import drop_unused_initializers, is_onnx_op, node_attribute, static_shapes


def conv_padding(graph: Graph) -> Graph:
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(graph.body)
    changed = _resolve_same(model) | _fold_pads(model)
    if not changed:
        return graph
    drop_unused_initializers(model)
    return dataclasses.replace(graph, body=model)


def _resolve_same(model) -> bool:
    """auto_pad SAME_UPPER/SAME_LOWER replaced by the pads ONNX defines for it; whether any was."""
    shapes: dict[str, list[int]] | None = None  # inferred once a strided conv needs them
    changed = False
    for conv in model.graph.node:
        mode = node_attribute(conv, "auto_pad", b"NOTSET")
        if not _is_conv(conv) or mode not in (b"SAME_UPPER", b"SAME_LOWER"):
            continue
        kernel = node_attribute(conv, "kernel_shape", None)
        if kernel is None or any(d != 1 for d in node_attribute(conv, "dilations", [])):  # ONNX Runtime refuses those
            continue
        strides = node_attribute(conv, "strides", [1] * len(kernel))
        sizes = None
        if any(s != 1 for s in strides):
            shapes = _spatial_shapes(model) if shapes is None else shapes
            sizes = shapes.get(conv.input[0])
            if sizes is None:
                continue
        begins, ends = [], []
        for axis, (k, s) in enumerate(zip(kernel, strides)):
            size = sizes[axis] if sizes else 1  # stride 1: the total does not depend on the size
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            small = total // 2
            begins.append(total - small if mode == b"SAME_LOWER" else small)
            ends.append(total - begins[-1])
        _set(conv, "auto_pad", b"NOTSET")
        _set(conv, "pads", begins + ends)
        changed = True
    return changed


def _fold_pads(model) -> bool:
    """Each foldable Pad added to its readers' pads and dropped; whether any was."""
    from onnx import numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    folded = []
    for pad in model.graph.node:
        amounts = _spatial_pads(pad, constants) if is_onnx_op(pad, "Pad") else None
        if amounts is None or pad.output[0] in outputs:
            continue
        readers = [node for node in model.graph.node if pad.output[0] in node.input]
        if not readers or not all(_takes_padding(node, pad.output[0], len(amounts) // 2) for node in readers):
            continue
        for conv in readers:
            own = node_attribute(conv, "pads", [0] * len(amounts))
            conv.input[0] = pad.input[0]
            _set(conv, "auto_pad", b"NOTSET")  # VALID: no padding of its own
            _set(conv, "pads", [a + b for a, b in zip(own, amounts)])
        folded.append(pad)
    for pad in folded:
        model.graph.node.remove(pad)
    return bool(folded)


def _spatial_pads(pad, constants: dict[str, np.ndarray]) -> list[int] | None:
    """The Pad's amounts on the spatial dims (begins, then ends) when it is a zero constant pad of those dims only."""
    if node_attribute(pad, "mode", b"constant") != b"constant":
        return None
    inputs = list(pad.input) + [""] * (4 - len(pad.input))
    if inputs[3]:  # axes: rare, left alone
        return None
    if inputs[1]:
        if inputs[1] not in constants:
            return None
        pads = [int(p) for p in constants[inputs[1]].ravel()]
    else:
        pads = list(node_attribute(pad, "pads", []))
    value = constants.get(inputs[2]) if inputs[2] else np.array(node_attribute(pad, "value", 0.0))
    if value is None or value.size != 1 or float(value.ravel()[0]) != 0.0:
        return None
    rank = len(pads) // 2
    begins, ends = pads[:rank], pads[rank:]
    if rank < 3 or any(begins[:2]) or any(ends[:2]) or min(pads) < 0:
        return None
    return begins[2:] + ends[2:]


def _takes_padding(node, name: str, spatial: int) -> bool:
    return (_is_conv(node) and node.input[0] == name and name not in node.input[1:]
            and node_attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")
            and len(node_attribute(node, "pads", [0] * 2 * spatial)) == 2 * spatial)


def _is_conv(node) -> bool:
    return is_onnx_op(node, "Conv")


def _spatial_shapes(model) -> dict[str, list[int]]:
    """The spatial dims (after batch and channels) of the tensors whose shape ONNX shape inference makes static."""
    import onnx

    return {name: list(shape[2:]) for name, shape in
            static_shapes(onnx.shape_inference.infer_shapes(model).graph).items() if len(shape) > 2}


def _set(node, name: str, value) -> None:
    from onnx import helper

    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])
