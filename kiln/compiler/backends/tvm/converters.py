"""ONNX ops TVM 0.27's importer has no converter for, converted by kiln into Relax while the importer runs.

BitCast reinterprets each element's bits as another type of the same width (little endian, so a plain reinterpret
on the little-endian targets kiln builds for): TOPI's reinterpret, an LLVM bitcast per element, computes exactly
that. A bool is one bit in TVM (held in a byte), so no reinterpret reaches or leaves it: a bool's byte is its 0 or
1, which a Cast to (u)int8 gives; a byte other than 0 or 1 is no bool TVM can hold, so BitCast to bool is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from kiln.compat.tvm import onnx_converters_added

if TYPE_CHECKING:
    import onnx
    import tvm

# ONNX element type -> the TVM dtype BitCast reinterprets it as or into.
_REINTERPRETED = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 12: "uint32",
                  13: "uint64", 1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
_BOOL, _BYTES = 9, frozenset({2, 3})  # BOOL; UINT8, INT8


def bitcast_refusal(node: "onnx.NodeProto", types: Mapping[str, int]) -> str | None:
    """Why `node` (a BitCast) cannot be converted; None where it can. `types`: value name -> ONNX elem type."""
    from onnx import TensorProto, helper

    source = types.get(node.input[0], 0)
    target = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), 0)
    if not source:
        return "input type unknown"
    if target == _BOOL and source != _BOOL:
        return "to bool (a byte other than 0 or 1 is no bool TVM holds)"
    if source == _BOOL:
        return None if target in _BYTES | {_BOOL} else "bool to a type wider than a byte"
    unknown = [TensorProto.DataType.Name(t).lower() for t in (source, target) if t not in _REINTERPRETED]
    if unknown:
        return f"{' and '.join(unknown)} (kiln reinterprets the ints, uints and floats of 8 to 64 bits)"
    if helper.tensor_dtype_to_np_dtype(source).itemsize != helper.tensor_dtype_to_np_dtype(target).itemsize:
        return "types of different widths"
    return None


def _bitcast(bb, inputs: list, attrs: dict):
    from tvm import relax, topi

    data, target = inputs[0], attrs["to"]
    if data.ty.dtype == "bool":
        return relax.op.astype(data, "bool" if target == _BOOL else _REINTERPRETED[target])
    return bb.emit_te(topi.reinterpret, data, _REINTERPRETED[target])


# op -> function(block builder, inputs, attributes) giving the node's Relax expression
CONVERTERS = {"BitCast": _bitcast}
# op -> function(node, value name -> ONNX elem type) giving why its converter cannot take the node, or None
CONVERTER_REFUSALS = {"BitCast": bitcast_refusal}


def import_onnx(model: "onnx.ModelProto") -> "tvm.IRModule":
    """TVM's ONNX importer's module for `model` (parameters as constants), kiln's converters added to its own."""
    from tvm.relax.frontend.onnx import from_onnx

    with onnx_converters_added(CONVERTERS):
        return from_onnx(model, keep_params_in_input=False)
