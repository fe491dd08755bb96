"""A Resize TVM's converter computes otherwise than ONNX, written as constant gathers and weights per resized axis.

The converter turns scales into sizes and maps output coordinates to input ones by the sizes' ratio, where ONNX maps
them by the scale (they differ where scale * size is not whole); it ignores antialias, rejects half_pixel_symmetric,
resizes only the spatial dims of rank 3-5 tensors, and cannot take what kiln.compiler.passes.resize_axes leaves of
axes and keep_aspect_ratio_policy. With a static input shape and constant scales / sizes / roi, ONNX's Resize is
separable, one axis after another: each output along an axis is a weighted sum of a window of inputs (edges
repeated), the window and weights depending on the sizes, scale, mode and attributes only. onnx.reference computes it
so (_interpolate_1d_along_axis; its coordinate mapping and windows are written again here, on its own coefficient
functions), and so does the rewrite: a Gather of each output's window, a Mul by its weights and a ReduceSum over the
window (float16 and bfloat16 in float32), or in nearest mode a Gather of the nearest input; a tf_crop_and_resize
output outside the roi is extrapolation_value, by a Where. Only the Resizes the support check refuses are rewritten:
TVM's own kernel stays for the rest. What cannot be computed this way stays refused, for the reason
`resize_refusal` gives.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Callable

import numpy as np

from kiln.compiler.frontends.onnx import opset_of
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, node_attributes, rewrite_nodes, static_dims

if TYPE_CHECKING:
    import onnx

_TRANSFORMS = frozenset({"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                         "tf_crop_and_resize"})
# FLOAT, DOUBLE, FLOAT16, BFLOAT16 -> the type the weights are applied in
_WEIGHT_TYPES = {1: 1, 11: 11, 10: 1, 16: 1}


@dataclasses.dataclass(frozen=True)
class _Axis:
    """One resized axis: for each output, the inputs of its window (edges repeated) and their weights ([out, taps]),
    and whether it lies outside a tf_crop_and_resize roi."""

    axis: int
    indices: np.ndarray
    weights: np.ndarray
    outside: np.ndarray


def resize_refusal(node: "onnx.NodeProto", values: Mapping[str, "onnx.TensorProto"],
                   dims: Mapping[str, Sequence[int | None]], types: Mapping[str, int]) -> str | None:
    """Why resize_exact cannot compute the Resize `node`; None where it can. `values` holds the constants known here,
    `dims` the values' shapes (None: symbolic), `types` their ONNX element types."""
    plan = _plan(node, values, dims, types)
    return plan if isinstance(plan, str) else None


def resize_exact(graph: Graph) -> Graph:
    from onnx import helper

    from kiln.compiler.backends.tvm.value_checks import value_reason

    values = {t.name: t for t in graph.body.graph.initializer}
    dims = {name: list(shape) for name, shape in static_dims(graph.body.graph).items()}
    types = element_types(graph.body.graph)
    axes_input = opset_of(graph.body) >= 13  # ReduceSum's axes: an attribute before opset 13

    def replace(node):
        if not is_onnx_op(node, "Resize") or value_reason(node, values, dims) is None:
            return None
        plan = _plan(node, values, dims, types)
        if isinstance(plan, str):
            return None
        attributes = node_attributes(node)
        source = types[node.input[0]]
        nearest = attributes.get("mode", b"nearest") == b"nearest"
        carrier = source if nearest else _WEIGHT_TYPES[source]
        dtype = helper.tensor_dtype_to_np_dtype(carrier)
        stem = node.name or node.output[0]
        rank = len(dims[node.input[0]])
        nodes, constants, current = [], {}, node.input[0]
        if carrier != source:
            nodes.append(helper.make_node("Cast", [current], [f"{stem}_wide"], to=carrier))
            current = f"{stem}_wide"
        for step in plan:
            prefix, trailing = f"{stem}_axis{step.axis}", (1,) * (rank - 1 - step.axis)
            if nearest:
                constants[f"{prefix}_indices"] = step.indices[np.arange(len(step.indices)), step.weights.argmax(axis=1)]
                nodes.append(helper.make_node("Gather", [current, f"{prefix}_indices"], [f"{prefix}_out"],
                                              axis=step.axis))
            else:
                constants[f"{prefix}_indices"] = step.indices
                constants[f"{prefix}_weights"] = step.weights.astype(dtype).reshape(step.weights.shape + trailing)
                nodes += [helper.make_node("Gather", [current, f"{prefix}_indices"], [f"{prefix}_window"],
                                           axis=step.axis),
                          helper.make_node("Mul", [f"{prefix}_window", f"{prefix}_weights"], [f"{prefix}_weighted"]),
                          _sum_taps(f"{prefix}_weighted", f"{prefix}_out", step.axis + 1, axes_input, constants)]
            current = f"{prefix}_out"
            if step.outside.any():
                constants[f"{prefix}_outside"] = step.outside.reshape((-1,) + trailing)
                constants[f"{prefix}_extrapolation"] = np.array(attributes.get("extrapolation_value", 0.0), dtype)
                nodes.append(helper.make_node("Where", [f"{prefix}_outside", f"{prefix}_extrapolation", current],
                                              [f"{prefix}_filled"]))
                current = f"{prefix}_filled"
        if carrier != source:
            nodes.append(helper.make_node("Cast", [current], [f"{stem}_narrow"], to=source))
        nodes[-1].output[0] = node.output[0]
        nodes[-1].name = node.name
        return nodes, constants

    return rewrite_nodes(graph, replace)


def _sum_taps(weighted: str, output: str, axis: int, axes_input: bool, constants: dict) -> "onnx.NodeProto":
    """A ReduceSum of `weighted` over its `axis`, the window's, dropped."""
    from onnx import helper

    if not axes_input:
        return helper.make_node("ReduceSum", [weighted], [output], axes=[axis], keepdims=0)
    constants[f"{output}_axes"] = np.array([axis], np.int64)
    return helper.make_node("ReduceSum", [weighted, f"{output}_axes"], [output], keepdims=0)


def _plan(node, values: Mapping[str, "onnx.TensorProto"], dims: Mapping[str, Sequence[int | None]],
          types: Mapping[str, int]) -> "list[_Axis] | str":
    """The axes the Resize `node` changes, in order, with their weights; or why they cannot be computed here."""
    from onnx import numpy_helper

    def constant(index: int) -> np.ndarray | None:
        name = node.input[index] if index < len(node.input) else ""
        value = numpy_helper.to_array(values[name]) if name in values else None
        return value if value is not None and value.size else None

    if len(node.input) < 3:
        return "opset-10 Resize (scales as its second input)"
    shape = dims.get(node.input[0])
    if shape is None or None in shape:
        return "input shape not static; pin the input shapes"
    attributes = node_attributes(node)
    mode = attributes.get("mode", b"nearest").decode()
    transform = attributes.get("coordinate_transformation_mode", b"half_pixel").decode()
    if transform not in _TRANSFORMS:
        return f"coordinate_transformation_mode {transform}"
    if mode == "nearest" and attributes.get("antialias", 0):
        return "antialias in nearest mode (ONNX defines it for linear and cubic)"
    if not types.get(node.input[0]):
        return "input type not known"
    if mode != "nearest" and types[node.input[0]] not in _WEIGHT_TYPES:
        return f"{mode} mode of a non-float input (ONNX does not say how the weighted sums are rounded)"
    roi = constant(1) if transform == "tf_crop_and_resize" else None
    if transform == "tf_crop_and_resize" and roi is None:
        return "tf_crop_and_resize without a constant roi"
    resized = _sizes(shape, attributes, roi, constant(2), constant(3))
    if isinstance(resized, str):
        return resized
    coefficients = _coefficients(mode, attributes)
    plan = []
    for axis, (length, scale, roi) in enumerate(resized):
        size = shape[axis]
        if math.isclose(scale, 1.0) and length == size and (roi is None or (
                math.isclose(roi[0], 0.0) and math.isclose(roi[1], 1.0))):
            continue  # onnx.reference leaves such an axis as it is
        if not size or not length:
            return f"an empty input or output along axis {axis}"
        if transform == "pytorch_half_pixel" and length == 1:
            return "pytorch_half_pixel to one output (ONNX's reference and its text place it differently)"
        indices, weights, outside = _window(size, length, scale, roi, transform, coefficients,
                                            bool(attributes.get("exclude_outside", 0)))
        if mode == "nearest" and not ((weights.max(axis=1) == 1) | outside).all():
            return "nearest mode with exclude_outside, where an output's nearest input lies outside (weight 0)"
        plan.append(_Axis(axis, indices, weights, outside))
    return plan


def _sizes(shape: Sequence[int], attributes: dict, roi: np.ndarray | None, scales: np.ndarray | None,
           sizes: np.ndarray | None) -> "list[tuple[int, float, tuple[float, float] | None]] | str":
    """Each dim's output length, scale and roi (None outside tf_crop_and_resize) as onnx.reference computes them;
    or why they cannot be."""
    rank = len(shape)
    axes = [axis + rank if axis < 0 else axis for axis in attributes.get("axes", range(rank))]
    given = scales if scales is not None else sizes
    if (scales is None) == (sizes is None) or given.size != len(axes) or len(set(axes)) != len(axes) \
            or not set(axes) <= set(range(rank)):
        return "scales or sizes that do not match the input's dims or axes"
    if roi is not None and roi.size != 2 * len(axes):
        return "roi that does not match the input's dims or axes"
    bounds = [(0.0, 1.0)] * rank if roi is not None else [None] * rank
    for i, axis in enumerate(axes):
        # kept in the roi's type: onnx.reference subtracts and scales the bounds in it
        bounds[axis] = (roi[i], roi[len(axes) + i]) if roi is not None else None
    if scales is not None:
        if roi is not None and any(bounds[axis] != (0.0, 1.0) for axis in axes):
            return ("tf_crop_and_resize scales with a roi (ONNX's text sizes the output by the roi, its reference "
                    "does not)")
        factors = [1.0] * rank
        for i, axis in enumerate(axes):
            factors[axis] = float(scales[i])
        return [(int(factor * size), factor, bound) for factor, size, bound in zip(factors, shape, bounds)]
    if any(shape[axis] == 0 for axis in axes):
        return "sizes of an empty input"
    lengths = list(shape)
    for i, axis in enumerate(axes):
        lengths[axis] = int(sizes[i])
    factors = [length / size if size else 1.0 for length, size in zip(lengths, shape)]
    policy = attributes.get("keep_aspect_ratio_policy", b"stretch")
    if policy != b"stretch":
        scale = (min if policy == b"not_larger" else max)(factors[axis] for axis in axes)
        factors = [scale if axis in axes else 1.0 for axis in range(rank)]
        lengths = [int(scale * shape[axis] + 0.5) if axis in axes else shape[axis] for axis in range(rank)]
    return list(zip(lengths, factors, bounds))


def _coefficients(mode: str, attributes: dict) -> Callable[[float, float], np.ndarray]:
    """ONNX's interpolation kernel (onnx.reference's): the weights of the window around a source coordinate whose
    fractional part is `ratio` (1 where the coordinate is whole), at `scale`."""
    from onnx.reference.ops import op_resize

    if mode == "nearest":
        rounding = attributes.get("nearest_mode", b"round_prefer_floor").decode()
        return lambda ratio, scale: op_resize._nearest_coeffs(ratio, mode=rounding).astype(np.float64)
    antialias = bool(attributes.get("antialias", 0))
    if mode == "linear":
        return op_resize._linear_coeffs_antialias if antialias else op_resize._linear_coeffs
    kernel = op_resize._cubic_coeffs_antialias if antialias else op_resize._cubic_coeffs
    a = attributes.get("cubic_coeff_a", -0.75)
    return lambda ratio, scale: kernel(ratio, scale, A=a)


def _window(size: int, length: int, scale: float, roi: tuple[float, float] | None, transform: str,
            coefficients: Callable[[float, float], np.ndarray],
            exclude_outside: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of the `length` outputs of one axis, the inputs it weighs (clamped into the axis) and their weights,
    [length, taps] both, and whether it lies outside the roi."""
    x = _source_coordinates(np.arange(length, dtype=np.float64), size, length, scale, roi, transform)
    outside = (x < 0) | (x > size - 1) if transform == "tf_crop_and_resize" else np.zeros(length, bool)
    ratios = np.where(x == np.floor(x), 1.0, x - np.floor(x))
    weights = np.array([coefficients(float(ratio), scale) for ratio in ratios], np.float64)
    # every kernel has an even number n of taps: the n inputs nearest x, ties to the lower, start at ceil(x) - n / 2;
    # onnx.reference finds them on x shifted by its edge padding of n / 2, so in the rounding of that sum
    half = weights.shape[1] // 2
    window = np.ceil(x + half).astype(np.int64)[:, None] - 2 * half + np.arange(weights.shape[1])
    if exclude_outside:
        weights = np.where((window < 0) | (window >= size), 0.0, weights)
        sums = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(sums == 0, 1.0, sums)
    return np.clip(window, 0, size - 1), weights, outside


def _source_coordinates(y: np.ndarray, size: int, length: int, scale: float, roi: tuple[float, float] | None,
                        transform: str) -> np.ndarray:
    """Where each output `y` lies on the input axis (onnx.reference's _compute_x_ori): `scale` * `size` is the
    output width before flooring, which align_corners and tf_crop_and_resize divide by."""
    width = scale * size
    if transform == "align_corners":
        return np.zeros(length) if width == 1 else y * (size - 1) / (width - 1)
    if transform == "asymmetric":
        return y / scale
    if transform == "tf_crop_and_resize":
        start, end = roi
        span = np.full(length, (end - start) * (size - 1) / 2) if width == 1 else \
            y * (end - start) * (size - 1) / (width - 1)
        return span + start * (size - 1)
    offset = size / 2 * (1 - length / width) if transform == "half_pixel_symmetric" else 0.0
    return offset + (y + 0.5) / scale - 0.5
