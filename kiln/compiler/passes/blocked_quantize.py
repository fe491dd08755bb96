"""A blocked QuantizeLinear / DequantizeLinear (block_size > 0) written as the elementwise arithmetic ONNX defines.

TVM 0.27's converters raise on block_size. Blocked quantization gives each run of block_size consecutive indices
along `axis` its own scale and zero point: the scale has x's shape with that dim divided by block_size (rounded up;
the last block may be short). Along a static axis one Gather of the constant indices i // block_size spreads them to
x's shape, and onnx.reference's arithmetic follows:

    QuantizeLinear:   y = saturate(round_half_even(x / scale) + zero_point)   (NaN: the type's lowest, as the
                      reference's int32 conversion of NaN clamped; x and scale in `precision` where it is set)
    DequantizeLinear: y = (float32(x) - float32(zero_point)) * scale   (float64 for a double scale)

The narrow types (int4, float8, ...) are narrow_types' to rewrite, blocked or not; a non-static axis or a scale of
another shape is left as it is, and the support check refuses the node (the converter rejects block_size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import declared_dims, element_types, is_onnx_op, rewrite_nodes

if TYPE_CHECKING:
    import onnx

_RANGES = {2: (0, 255), 3: (-128, 127), 4: (0, 65535), 5: (-32768, 32767)}  # UINT8, INT8, UINT16, INT16
_FLOAT, _DOUBLE, _INT32 = 1, 11, 6
_DEQUANTIZED = {*_RANGES, _INT32}


def blocked_quantize(graph: Graph) -> Graph:
    from onnx import helper

    types = element_types(graph.body.graph)
    dims = declared_dims(graph.body.graph)

    def replace(node):
        if not is_onnx_op(node, "QuantizeLinear", "DequantizeLinear"):
            return None
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        block = attributes.get("block_size", 0)
        axis = _blocked_axis(node, block, attributes.get("axis", 1), dims)
        if axis is None:
            return None
        blocks = f"{node.name or node.output[0]}_blocks"

        def spread(value: str) -> tuple["onnx.NodeProto", str]:
            """A Gather of `value`'s block for each index along the axis, and its output."""
            return helper.make_node("Gather", [value, blocks], [f"{value}_{blocks}"], axis=axis), f"{value}_{blocks}"

        made = (_quantize if node.op_type == "QuantizeLinear" else _dequantize)(node, attributes, types, spread)
        if made is None:
            return None
        nodes, constants = made
        return nodes, {blocks: np.arange(dims[node.input[0]][axis], dtype=np.int64) // block, **constants}

    return rewrite_nodes(graph, replace)


def _blocked_axis(node: "onnx.NodeProto", block: int, axis: int,
                  dims: Mapping[str, Sequence[int | None]]) -> int | None:
    """The blocked axis of `node` (made non-negative) where blocked_quantize can spread its scale and zero point:
    x's length along it static, and the scale's (and zero point's) the number of blocks it makes."""
    shape = dims.get(node.input[0])
    if block <= 0 or shape is None or not -len(shape) <= axis < len(shape):
        return None
    axis %= len(shape)
    if shape[axis] is None:
        return None
    blocks = -(-shape[axis] // block)
    parameters = [name for name in node.input[1:3] if name]
    if any(len(dims.get(name, ())) != len(shape) or dims[name][axis] != blocks for name in parameters):
        return None
    return axis


def _quantized_type(node: "onnx.NodeProto", attributes: dict, types: Mapping[str, int]) -> int:
    zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
    return types.get(zero, 0) if zero else attributes.get("output_dtype", 0) or 2  # UINT8 where neither says


def _quantize(node, attributes: dict, types: Mapping[str, int], spread):
    from onnx import TensorProto, helper

    target = _quantized_type(node, attributes, types)
    if target not in _RANGES:
        return None
    stem = node.name or node.output[0]
    x, scale = node.input[0], node.input[1]
    zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
    spread_scale, scale = spread(scale)
    compute = _division_type(attributes.get("precision"), types.get(x, _FLOAT), types.get(node.input[1], _FLOAT))
    nodes = [spread_scale, helper.make_node("Cast", [x], [f"{stem}_x"], to=compute),
             helper.make_node("Cast", [scale], [f"{stem}_scale_wide"], to=compute),
             helper.make_node("Div", [f"{stem}_x", f"{stem}_scale_wide"], [f"{stem}_scaled"]),
             helper.make_node("Round", [f"{stem}_scaled"], [f"{stem}_rounded"]),  # half to even
             helper.make_node("Cast", [f"{stem}_rounded"], [f"{stem}_wide"], to=TensorProto.DOUBLE)]
    shifted = f"{stem}_wide"
    if zero:
        spread_zero, zero = spread(zero)
        nodes += [spread_zero, helper.make_node("Cast", [zero], [f"{stem}_zero_wide"], to=TensorProto.DOUBLE),
                  helper.make_node("Add", [f"{stem}_wide", f"{stem}_zero_wide"], [f"{stem}_shifted"])]
        shifted = f"{stem}_shifted"
    nodes += [helper.make_node("Max", [shifted, f"{stem}_low"], [f"{stem}_floor"]),
              helper.make_node("Min", [f"{stem}_floor", f"{stem}_high"], [f"{stem}_clamped"]),
              helper.make_node("Cast", [f"{stem}_clamped"], [f"{stem}_stored"], to=target),
              # NaN chosen after the cast: a float select cast to a signed integer compiles for seconds in TVM
              helper.make_node("IsNaN", [f"{stem}_scaled"], [f"{stem}_nan"]),
              helper.make_node("Where", [f"{stem}_nan", f"{stem}_lowest", f"{stem}_stored"], [node.output[0]],
                               name=node.name)]
    low, high = _RANGES[target]
    return nodes, {f"{stem}_low": np.array(low, np.float64), f"{stem}_high": np.array(high, np.float64),
                   f"{stem}_lowest": np.array(low, helper.tensor_dtype_to_np_dtype(target))}


def _division_type(precision: int | None, x_type: int, scale_type: int) -> int:
    """The type x / scale is computed in: `precision` where set, else numpy's for the two (a float type with
    itself, float64 with a double or an int32, float32 for two float types of 16 and 32 bits)."""
    if precision:
        return precision
    if x_type == scale_type != _INT32:
        return x_type
    return _DOUBLE if {x_type, scale_type} & {_DOUBLE, _INT32} else _FLOAT


def _dequantize(node, attributes: dict, types: Mapping[str, int], spread):
    from onnx import helper

    x, scale = node.input[0], node.input[1]
    if types.get(x) not in _DEQUANTIZED:
        return None
    stem = node.name or node.output[0]
    zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
    scale_type = types.get(scale, _FLOAT)
    compute = _DOUBLE if scale_type == _DOUBLE else _FLOAT
    spread_scale, spread_scale_name = spread(scale)
    nodes = [spread_scale, helper.make_node("Cast", [x], [f"{stem}_x"], to=compute),
             helper.make_node("Cast", [spread_scale_name], [f"{stem}_scale_wide"], to=compute)]
    value = f"{stem}_x"
    if zero:
        spread_zero, zero = spread(zero)
        nodes += [spread_zero, helper.make_node("Cast", [zero], [f"{stem}_zero_wide"], to=compute),
                  helper.make_node("Sub", [value, f"{stem}_zero_wide"], [f"{stem}_centred"])]
        value = f"{stem}_centred"
    nodes += [helper.make_node("Mul", [value, f"{stem}_scale_wide"], [f"{stem}_product"]),
              helper.make_node("Cast", [f"{stem}_product"], [node.output[0]], name=node.name,
                               to=attributes.get("output_dtype") or scale_type)]
    return nodes, {}
