"""A CenterCropPad of a static-shape input written as a Slice and a Pad, or, where the target shape is computed at
run time, as a Gather of each axis at indices from a Range and a Where that zeroes the padding.

TVM 0.27's importer has no converter for CenterCropPad. ONNX defines it as a function whose Pad reads amounts
computed from the shape input's values, which the importer takes only as constants (so
kiln.compiler.passes.function_expansion keeps the node where the shape is not constant). Along each axis of size
`dim` cut or grown to `size`, ONNX starts the crop window at floor((dim - size) / 2) and pads floor((size - dim) / 2)
before, the odd element after; either way output index j reads input index j + offset, offset = floor(crop / 2) -
floor(pad / 2), and is 0 where that index is outside the input. Inputs of symbolic shape, and run-time shapes of an
input with an empty axis (no index to gather), are left as they are, and the support check
(kiln.compiler.backends.tvm.ops) names why with `center_crop_pad_refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import declared_dims, element_types, is_onnx_op, rewrite_nodes

if TYPE_CHECKING:
    import onnx


def center_crop_pad_refusal(node: "onnx.NodeProto", values: Mapping[str, "onnx.TensorProto"],
                            dims: Mapping[str, Sequence[int | None]]) -> str | None:
    """Why center_crop_pad leaves the CenterCropPad `node` as it is; None where it rewrites it. `values` holds the
    constants known here, `dims` the values' shapes (None: symbolic)."""
    shape, sizes = dims.get(node.input[0]), dims.get(node.input[1])
    if shape is None or None in shape:
        return "input shape not static; pin the input shapes"
    if sizes is None or None in sizes:
        return "shape's length unknown"
    axes = _axes(node, len(shape))
    if len(set(axes)) != len(axes) or not all(0 <= axis < len(shape) for axis in axes):
        return f"axes {axes} not distinct axes of the input's {len(shape)} dims"
    if sizes != [len(axes)]:
        return f"shape of {sizes} values for {len(axes)} axes"
    if node.input[1] in values:
        return "negative shape" if (_sizes(values[node.input[1]]) < 0).any() else None
    empty = [axis for axis in axes if shape[axis] == 0]
    return f"empty input axes {empty} with a shape computed at run time" if empty else None


def center_crop_pad(graph: Graph) -> Graph:
    values = {t.name: t for t in graph.body.graph.initializer}
    dims = declared_dims(graph.body.graph)
    types = element_types(graph.body.graph)

    def replace(node):
        if (not is_onnx_op(node, "CenterCropPad") or not types.get(node.input[0])
                or center_crop_pad_refusal(node, values, dims)):
            return None
        shape = tuple(dims[node.input[0]])
        axes = _axes(node, len(shape))
        if not axes:
            return _crop_and_pad(node, shape, {})
        if node.input[1] in values:
            return _crop_and_pad(node, shape, dict(zip(axes, _sizes(values[node.input[1]]).tolist())))
        return _gather(node, shape, axes, types)

    return rewrite_nodes(graph, replace)


def _crop_and_pad(node: "onnx.NodeProto", shape: tuple[int, ...], sizes: dict[int, int]):
    """One Slice over the axes cut and one Pad over the axes grown (an Identity where none is either)."""
    from onnx import helper

    stem = node.name or node.output[0]
    cut = {axis: (shape[axis] - size) // 2 for axis, size in sizes.items() if size < shape[axis]}
    pads = np.zeros((2, len(shape)), np.int64)
    for axis, size in sizes.items():
        if size > shape[axis]:
            pads[0, axis] = (size - shape[axis]) // 2
            pads[1, axis] = size - shape[axis] - pads[0, axis]
    steps = [("Slice", bool(cut)), ("Pad", bool(pads.any()))]
    chain = [op for op, needed in steps if needed] or ["Identity"]
    names = [node.input[0]] + [f"{stem}_{op.lower()}" for op in chain[:-1]] + [node.output[0]]
    nodes, constants = [], {}
    for op, source, target in zip(chain, names, names[1:]):
        inputs = {"Identity": [source], "Slice": [source, f"{stem}_starts", f"{stem}_ends", f"{stem}_axes"],
                  "Pad": [source, f"{stem}_pads"]}[op]
        nodes.append(helper.make_node(op, inputs, [target], name=node.name if target == node.output[0] else ""))
    if cut:
        constants[f"{stem}_starts"] = np.array(list(cut.values()), np.int64)
        constants[f"{stem}_ends"] = np.array([start + sizes[axis] for axis, start in cut.items()], np.int64)
        constants[f"{stem}_axes"] = np.array(list(cut), np.int64)
    if pads.any():
        constants[f"{stem}_pads"] = pads.reshape(-1)
    return nodes, constants


def _gather(node: "onnx.NodeProto", shape: tuple[int, ...], axes: list[int], types: Mapping[str, int]):
    """Per axis: the indices offset .. offset + size from a Range, clamped into the input, gathered, and a Where
    that keeps the gathered values where the clamp changed nothing, 0 elsewhere."""
    from onnx import TensorProto, helper

    stem = node.name or node.output[0]
    sizes = node.input[1]
    nodes = []
    if types.get(sizes) != TensorProto.INT64:
        nodes.append(helper.make_node("Cast", [sizes], [f"{stem}_sizes"], to=TensorProto.INT64))
        sizes = f"{stem}_sizes"
    constants = {f"{stem}_zero": np.array(0, np.int64), f"{stem}_one": np.array(1, np.int64),
                 f"{stem}_two": np.array(2, np.int64),
                 f"{stem}_fill": np.zeros((), helper.tensor_dtype_to_np_dtype(types[node.input[0]]))}
    source = node.input[0]
    for k, axis in enumerate(axes):
        n = {role: f"{stem}_{axis}_{role}" for role in (
            "k", "size", "dim", "last", "crop_by", "crop", "pad_by", "pad", "half_crop", "half_pad", "offset",
            "end", "indices", "low", "clamped", "inside", "trailing", "mask", "gathered", "out")}
        target = node.output[0] if k == len(axes) - 1 else n["out"]
        zero, one, two = (f"{stem}_{role}" for role in ("zero", "one", "two"))
        nodes += [
            helper.make_node("Gather", [sizes, n["k"]], [n["size"]]),
            helper.make_node("Sub", [n["dim"], n["size"]], [n["crop_by"]]),
            helper.make_node("Max", [n["crop_by"], zero], [n["crop"]]),
            helper.make_node("Sub", [n["size"], n["dim"]], [n["pad_by"]]),
            helper.make_node("Max", [n["pad_by"], zero], [n["pad"]]),
            helper.make_node("Div", [n["crop"], two], [n["half_crop"]]),
            helper.make_node("Div", [n["pad"], two], [n["half_pad"]]),
            helper.make_node("Sub", [n["half_crop"], n["half_pad"]], [n["offset"]]),
            helper.make_node("Add", [n["offset"], n["size"]], [n["end"]]),
            helper.make_node("Range", [n["offset"], n["end"], one], [n["indices"]]),
            helper.make_node("Max", [n["indices"], zero], [n["low"]]),
            helper.make_node("Min", [n["low"], n["last"]], [n["clamped"]]),
            helper.make_node("Equal", [n["indices"], n["clamped"]], [n["inside"]]),
            helper.make_node("Gather", [source, n["clamped"]], [n["gathered"]], axis=axis),
        ]
        mask = n["inside"]
        if axis < len(shape) - 1:
            nodes.append(helper.make_node("Unsqueeze", [n["inside"], n["trailing"]], [n["mask"]]))
            constants[n["trailing"]] = np.arange(1, len(shape) - axis, dtype=np.int64)
            mask = n["mask"]
        nodes.append(helper.make_node("Where", [mask, n["gathered"], f"{stem}_fill"], [target],
                                      name=node.name if target == node.output[0] else ""))
        constants.update({n["k"]: np.array(k, np.int64), n["dim"]: np.array(shape[axis], np.int64),
                          n["last"]: np.array(shape[axis] - 1, np.int64)})
        source = target
    return nodes, constants


def _axes(node: "onnx.NodeProto", rank: int) -> list[int]:
    from onnx import helper

    axes = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axes"), range(rank))
    return [axis + rank if axis < 0 else axis for axis in axes]


def _sizes(value: "onnx.TensorProto") -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(value).astype(np.int64).reshape(-1)
