"""Refusals that depend on a node's constant inputs and static shapes: values TVM 0.27's converters compute wrong
or fail on, where other values of the same op convert fine (kiln.compiler.backends.tvm.ops asks for them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from kiln.compiler.onnx_graph import is_onnx_op

if TYPE_CHECKING:
    import numpy as np
    import onnx

Dims = dict[str, list["int | None"]]  # value name -> its dims (None where symbolic)


def value_reason(node: "onnx.NodeProto", initializers: dict[str, "onnx.TensorProto"], dims: Dims) -> str | None:
    """Why the converter cannot take `node` with these constant inputs and shapes; None where it can."""
    import onnx

    check = _CHECKS.get(node.op_type)
    if check is None or not is_onnx_op(node):
        return None
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def constant(index: int) -> "np.ndarray | None":
        name = node.input[index] if index < len(node.input) else ""
        return onnx.numpy_helper.to_array(initializers[name]) if name in initializers else None

    return check(node, attributes, constant, dims)


def _resize(node, attributes: dict, constant: Callable, dims: Dims) -> str | None:
    """The converter resizes the spatial dims of a rank 3-5 tensor to sizes (scales turned into sizes first) and maps
    output coordinates to input ones by the ratio of the sizes, where ONNX maps them by the scale."""
    if attributes.get("antialias", 0):
        return "antialias (the converter ignores it)"
    ignored = (["axes attribute"] if "axes" in attributes else []) + (
        [f"keep_aspect_ratio_policy {attributes['keep_aspect_ratio_policy'].decode()}"]
        if attributes.get("keep_aspect_ratio_policy", b"stretch") != b"stretch" else [])
    if ignored:  # what kiln.compiler.passes.resize_axes and resize_exact left
        return f"{' and '.join(ignored)} (ignored by the converter)"
    if attributes.get("coordinate_transformation_mode") == b"half_pixel_symmetric":
        return "coordinate_transformation_mode half_pixel_symmetric (the converter rejects it)"
    shape = dims.get(node.input[0])
    if shape is None or None in shape:
        return None
    if len(shape) not in (3, 4, 5):
        return f"rank {len(shape)} (the converter resizes tensors of rank 3 to 5)"
    scales, sizes = constant(2), constant(3)
    if scales is not None and scales.size:
        if list(scales[:2]) != [1, 1]:
            return "scales of the batch or channel dim (the converter ignores them)"
        if any(abs(scale * size - round(scale * size)) > 1e-6 for scale, size in zip(scales[2:], shape[2:])):
            return (f"scales {scales[2:].tolist()} of sizes {shape[2:]} that are not whole (the converter maps "
                    "coordinates by the rounded sizes, ONNX by the scales)")
    if sizes is not None and sizes.size and list(sizes[:2]) != shape[:2]:
        return "sizes of the batch or channel dim (the converter ignores them)"
    return None


def _split(node, attributes: dict, constant: Callable, dims: Dims) -> str | None:
    """The converter splits at the running sums of all sizes but the last, which must increase."""
    split = constant(1)
    if split is None:
        split = attributes.get("split")
    return "zero-size splits before the last (the converter needs increasing split points)" if split is not None \
        and 0 in list(split)[:-1] else None


def _max_unpool(node, attributes: dict, constant: Callable, dims: Dims) -> str | None:
    given = len(node.input) > 2 and node.input[2]
    return "output_shape input (the converter fails on it)" if given else None


_CHECKS = {"Resize": _resize, "Split": _split, "MaxUnpool": _max_unpool}
