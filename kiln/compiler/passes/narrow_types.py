"""Values of the narrow types (float8, float4, int4, uint4, int2, uint2) held in carriers TVM computes right.

TVM 0.27 converts float8 wrongly and packs the sub-byte types below a byte, so TVM never sees them: every value,
initializer, Constant and graph input/output of a narrow type becomes its carrier (kiln.dtypes.CARRIERS: float32 for
the floats, int8 / uint8 for the integers; the runner converts inputs and outputs), and the ops that make narrow
values become carrier arithmetic giving exactly onnx.reference's result:
- Cast / CastLike to a narrow float: rounded half to even onto the type's grid (subnormals included) by comparisons,
  Round and multiplications by powers of two (_round_float); out of range: the largest value where saturating (float4
  always), else NaN or infinity as the type has; fnuz types have no -0; NaN: NaN (float4, which has none: -0, as
  ml_dtypes converts it);
- to float8e8m0 (powers of two 2^-127 .. 2^127 and NaN; TVM 0.27 rounds it to nearest only): the float32 value's
  power of two found by comparisons (_step_of), raised by one as round_mode says (up: any fraction;
  nearest: a fraction of half or more; below the normal floats, from 2^-127 to 2^-126 where above 0 or above 2^-127),
  sign dropped; beyond 2^127 the largest where saturating, else NaN; NaN and infinity NaN (onnx.numpy_helper's
  to_float8e8m0, which looks at the float32 bits; ONNX leaves negative values unspecified);
- to a narrow integer: from a float, truncated toward zero, 0 where out of range, NaN or infinite (ml_dtypes'
  conversion, which onnx.reference uses; ONNX leaves it undefined); from an integer, wrapped to the type's bits;
- QuantizeLinear to a narrow type: x / scale rounded half to even, plus the zero point, clamped (integers), or cast
  as above (floats: float8's zero point is 0); DequantizeLinear of one: (x - zero point) * scale in float32; both
  per tensor, per axis or blocked.
Ops that only move or select values (_EXACT_ON_CARRIER) give the same values on the carrier. A graph where another op
makes a narrow value, or a subgraph holds one, is left as it is, and the support check refuses that node for the
reason narrow_refusal gives (kiln.compiler.backends.tvm.ops).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import WIDE_FLOATS, infer_shapes, is_onnx_op, subgraphs
from kiln.dtypes import CARRIERS

if TYPE_CHECKING:
    import onnx

_MAKERS = frozenset({"Cast", "CastLike", "QuantizeLinear", "DequantizeLinear", "Constant"})
_EXACT_ON_CARRIER = frozenset({
    "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Tile", "Expand", "Pad", "Where", "ConstantOfShape", "DepthToSpace",
    "SpaceToDepth", "Compress", "Max", "Min", "ReduceMax", "ReduceMin"})


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    """A narrow float type's grid and specials: explicit mantissa bits, the exponent of its smallest normal value,
    its largest value, what an unsaturated overflow becomes (None: the largest value, float4 always saturating),
    whether it has -0, and what NaN becomes."""

    mantissa: int
    min_exponent: int
    max_value: float
    overflow: float | None
    negative_zero: bool = True
    nan: float = math.nan


FLOAT_FORMATS = {  # ONNX elem type -> format
    17: FloatFormat(3, -6, 448.0, math.nan),  # FLOAT8E4M3FN
    18: FloatFormat(3, -7, 240.0, math.nan, negative_zero=False),  # FLOAT8E4M3FNUZ
    19: FloatFormat(2, -14, 57344.0, math.inf),  # FLOAT8E5M2
    20: FloatFormat(2, -15, 57344.0, math.nan, negative_zero=False),  # FLOAT8E5M2FNUZ
    23: FloatFormat(1, 0, 6.0, None, nan=-0.0),  # FLOAT4E2M1
}
INT_RANGES = {22: (-8, 7), 21: (0, 15), 26: (-2, 1), 25: (0, 3)}  # INT4, UINT4, INT2, UINT2 -> (lowest, highest)
E8M0 = 24  # FLOAT8E8M0
NARROW = frozenset({*FLOAT_FORMATS, E8M0, *INT_RANGES})
_FLOAT, _DOUBLE, _INT64, _BOOL = 1, 11, 7, 9
_FLOATS = WIDE_FLOATS | {*FLOAT_FORMATS, E8M0}


def carrier_type(elem_type: int) -> int:
    """The ONNX elem type TVM holds `elem_type` in (itself where it is not narrow)."""
    from onnx import helper

    name = helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type in NARROW else None
    return helper.np_dtype_to_tensor_dtype(np.dtype(CARRIERS[name])) if name else elem_type


def narrow_refusal(node: "onnx.NodeProto", types: dict[str, int], nested: bool) -> str | None:
    """Why this pass leaves the graph of `node` with its narrow types (which TVM cannot hold); None where it can
    compute `node` on carriers. `types`: value name -> ONNX elem type."""
    from onnx import TensorProto

    narrow = [types[n] for n in (*node.input, *node.output) if types.get(n) in NARROW]
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):  # an omitted zero point: the type from the attribute
        narrow += [a.i for a in node.attribute if a.name == "output_dtype" and a.i in NARROW]
    if not narrow:
        return None
    named = TensorProto.DataType.Name(narrow[0]).lower()
    if nested:
        return f"{named} values inside a subgraph (kiln computes narrow types in carriers in the main graph only)"
    if E8M0 in narrow and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return "float8e8m0 scales (kiln computes float8e8m0 values only by Cast, CastLike and ops that move values)"
    made = [types.get(n) in NARROW for n in node.output]
    if is_onnx_op(node) and (node.op_type in _MAKERS or node.op_type in _EXACT_ON_CARRIER or not any(made)):
        return None
    return (f"makes {named} values, which kiln computes (in a wider carrier) only by Cast, CastLike, QuantizeLinear, "
            "DequantizeLinear and ops that move values")


def narrow_types(graph: Graph) -> Graph:
    import onnx

    model = infer_shapes(graph.body)
    types = value_types(model.graph)
    if not any(t in NARROW for t in types.values()) and not _narrow_attributes(model.graph):
        return graph
    if any(narrow_refusal(node, types, False) for node in model.graph.node) or any(
            _nested_narrow(node) for node in model.graph.node):
        return graph
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    shapes = _shapes(model.graph)
    nodes = []
    for node in model.graph.node:
        nodes.extend(_rewrite(node, types, shapes))
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    for value in (*rewritten.graph.input, *rewritten.graph.value_info, *rewritten.graph.output):
        if value.type.WhichOneof("value") == "tensor_type":
            value.type.tensor_type.elem_type = carrier_type(value.type.tensor_type.elem_type)
    for tensor in rewritten.graph.initializer:
        tensor.CopyFrom(_carried(tensor))
    return dataclasses.replace(graph, body=infer_shapes(rewritten))


def value_types(graph: "onnx.GraphProto") -> dict[str, int]:
    """Value name -> ONNX elem type, as declared, inferred, or stored (initializers, Constant nodes)."""
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.WhichOneof("value") == "tensor_type" and value.type.tensor_type.elem_type:
            types.setdefault(value.name, value.type.tensor_type.elem_type)
    for node in graph.node:
        if node.op_type == "Constant":
            types.update({node.output[0]: a.t.data_type for a in node.attribute if a.name == "value"})
    return types


def _narrow_attributes(graph: "onnx.GraphProto") -> bool:
    """Whether a Cast / QuantizeLinear asks for a narrow type by attribute (its output's type not inferred)."""
    return any(a.name in ("to", "output_dtype") and a.i in NARROW
               for node in graph.node for a in node.attribute)


def _nested_narrow(node: "onnx.NodeProto") -> bool:
    for body in subgraphs(node):
        types = value_types(body)
        if any(narrow_refusal(n, types, True) for n in body.node) or any(_nested_narrow(n) for n in body.node):
            return True
    return False


def _shapes(graph: "onnx.GraphProto") -> dict[str, tuple]:
    """Value name -> dims (None where symbolic), where the rank is known."""
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        tensor = value.type.tensor_type
        if value.type.WhichOneof("value") == "tensor_type" and tensor.HasField("shape"):
            shapes.setdefault(value.name, tuple(d.dim_value if d.HasField("dim_value") else None
                                                for d in tensor.shape.dim))
    return shapes


def _carried(tensor: "onnx.TensorProto") -> "onnx.TensorProto":
    from onnx import numpy_helper

    if tensor.data_type not in NARROW:
        return tensor
    array = numpy_helper.to_array(tensor)
    return numpy_helper.from_array(array.astype(CARRIERS[array.dtype.name]), tensor.name)


class _Nodes:
    """The nodes replacing one node: new values named under its name, constants as Constant nodes."""

    def __init__(self, node: "onnx.NodeProto"):
        self.stem = node.name or node.output[0]
        self.nodes: list = []

    def add(self, op: str, *inputs: str, output: str | None = None, **attributes) -> str:
        from onnx import helper

        output = output or f"{self.stem}/narrow/{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attributes))
        return output

    def const(self, value, elem_type: int) -> str:
        from onnx import helper, numpy_helper

        array = np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(elem_type))
        return self.add("Constant", value=numpy_helper.from_array(array))

    def cast(self, value: str, from_type: int, to_type: int) -> str:
        """`value` (of ONNX type `from_type`, held in its carrier) as `to_type`."""
        return value if carrier_type(from_type) == to_type else self.add("Cast", value, to=to_type)


def _rewrite(node: "onnx.NodeProto", types: dict[str, int], shapes: dict[str, tuple]) -> list:
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if not is_onnx_op(node):
        return [node]
    if node.op_type in ("Constant", "ConstantOfShape") and "value" in attributes:
        kept = helper.make_node(node.op_type, list(node.input), list(node.output), name=node.name,
                                value=_carried(attributes["value"]))
        return [kept]
    if node.op_type in ("Cast", "CastLike"):
        target = attributes["to"] if node.op_type == "Cast" else types.get(node.input[1], 0)
        if target not in NARROW:
            return [node]
        built = _Nodes(node)
        _convert(built, node.input[0], types.get(node.input[0], _FLOAT), target, bool(attributes.get("saturate", 1)),
                 node.output[0], attributes.get("round_mode", b"up").decode())
        return built.nodes
    if node.op_type == "QuantizeLinear":
        target = types.get(node.input[2], 0) if len(node.input) > 2 and node.input[2] else \
            attributes.get("output_dtype", 0)
        if target in FLOAT_FORMATS or target in INT_RANGES:
            return _quantize(node, target, attributes, types, shapes)
    if node.op_type == "DequantizeLinear" and types.get(node.input[0]) in NARROW:
        return _dequantize(node, attributes, types, shapes)
    return [node]


def _convert(built: _Nodes, value: str, from_type: int, target: int, saturate: bool, output: str,
             round_mode: str = "up") -> None:
    """Nodes writing `value` (of ONNX type `from_type`, a carrier where narrow) converted to narrow `target`,
    held in its carrier, to `output` (`round_mode`: float8e8m0's)."""
    if target == E8M0:
        built.add("Identity", _round_e8m0(built, built.cast(value, from_type, _FLOAT), round_mode, saturate),
                  output=output)
    elif target in FLOAT_FORMATS:
        compute = _DOUBLE if from_type == _DOUBLE else _FLOAT  # double: rounded once, from its own value
        rounded = _round_float(built, built.cast(value, from_type, compute), compute, FLOAT_FORMATS[target],
                               saturate)
        built.add("Cast", rounded, output=output, to=_FLOAT)
    elif from_type in _FLOATS:
        _truncate(built, value, from_type, target, output)
    else:
        _wrap(built, value, target, output)


def _round_float(built: _Nodes, x: str, compute: int, form: FloatFormat, saturate: bool) -> str:
    """`x` (float or double) rounded half to even onto `form`'s grid, with its overflow, -0 and NaN rules. The
    spacing of the grid at |x| is the largest 2^(k - mantissa) over the exponents k with |x| >= 2^k (the smallest
    normal exponent always)."""
    top = math.frexp(form.max_value)[1] - 1
    exponents = np.arange(form.min_exponent, top + 1, dtype=np.float64)
    thresholds = np.where(exponents == form.min_exponent, 0.0, np.exp2(exponents))
    magnitude = built.add("Abs", x)
    spacing = _step_of(built, magnitude, thresholds, np.exp2(exponents - form.mantissa), compute)
    rounded = built.add("Mul", built.add("Round", built.add("Div", magnitude, spacing)), spacing)
    largest = built.const(form.max_value, compute)
    beyond = largest if saturate or form.overflow is None else built.const(form.overflow, compute)
    rounded = built.add("Where", built.add("Greater", rounded, largest), beyond, rounded)
    negative = built.add("Less", x, built.const(0.0, compute))
    if not form.negative_zero:  # a negative value rounded to 0 is +0
        negative = built.add("And", negative, built.add("Greater", rounded, built.const(0.0, compute)))
    signed = built.add("Where", negative, built.add("Neg", rounded), rounded)
    if form.negative_zero:  # -0 stays -0 (x < 0 is false for it)
        signed = built.add("Where", built.add("Equal", x, built.const(0.0, compute)), x, signed)
    if not math.isnan(form.nan):
        signed = built.add("Where", built.add("IsNaN", x), built.const(form.nan, compute), signed)
    return signed


def _step_of(built: _Nodes, magnitude: str, thresholds: np.ndarray, steps: np.ndarray, compute: int) -> str:
    """The step of the last of the ascending `thresholds` that `magnitude` reaches (0 where it reaches none):
    the comparisons broadcast over a new last axis, so no logarithm is taken."""
    above = built.add("GreaterOrEqual", built.add("Unsqueeze", magnitude, built.const([-1], _INT64)),
                      built.const(thresholds, compute))
    reached = built.add("Where", above, built.const(steps, compute), built.const(0.0, compute))
    return built.add("ReduceMax", reached, built.const([-1], _INT64), keepdims=0)


def _round_e8m0(built: _Nodes, x: str, round_mode: str, saturate: bool) -> str:
    """float32 `x` as float8e8m0 (the module's docstring), in float32."""
    magnitude = built.add("Abs", x)
    exponents = np.arange(-127, 128, dtype=np.float64)  # 2^-127 below the normal floats
    power = _step_of(built, magnitude, np.where(exponents == -127, 0.0, np.exp2(exponents)), np.exp2(exponents),
                     _FLOAT)
    tiny = built.add("Less", magnitude, built.const(2.0 ** -126, _FLOAT))
    if round_mode == "up":
        raised = built.add("Where", tiny, built.add("Greater", magnitude, built.const(0.0, _FLOAT)),
                           built.add("Greater", magnitude, power))
    elif round_mode == "nearest":
        raised = built.add("Where", tiny, built.add("Greater", magnitude, power),
                           built.add("GreaterOrEqual", magnitude, built.add("Mul", power, built.const(1.5, _FLOAT))))
    else:
        raised = built.const(False, _BOOL)
    value = built.add("Where", raised, built.add("Mul", power, built.const(2.0, _FLOAT)), power)
    largest = built.const(2.0 ** 127, _FLOAT)
    value = built.add("Min", value, largest) if saturate else built.add(
        "Where", built.add("Greater", value, largest), built.const(math.nan, _FLOAT), value)
    special = built.add("Or", built.add("IsNaN", x), built.add("IsInf", x))
    return built.add("Where", special, built.const(math.nan, _FLOAT), value)


def _truncate(built: _Nodes, value: str, from_type: int, target: int, output: str) -> None:
    """A float converted to narrow integer `target` as ml_dtypes converts it."""
    compute = _DOUBLE if from_type == _DOUBLE else _FLOAT
    x = built.cast(value, from_type, compute)
    whole = built.add("Where", built.add("Less", x, built.const(0.0, compute)), built.add("Ceil", x),
                      built.add("Floor", x))
    low, high = INT_RANGES[target]
    inside = built.add("And", built.add("GreaterOrEqual", whole, built.const(low, compute)),
                       built.add("LessOrEqual", whole, built.const(high, compute)))
    _store_int(built, built.add("Where", inside, whole, built.const(0.0, compute)), compute, target, output)


def _store_int(built: _Nodes, value: str, compute: int, target: int, output: str) -> None:
    """A float holding an integer of narrow `target`'s range written to `output` in its carrier. A signed one goes
    through uint8 offset by its lowest value: TVM 0.27's compile never ends on a float select cast to a signed
    integer (measured: Where of Floor / Ceil, then Cast to int8 or int32)."""
    low = INT_RANGES[target][0]
    if not low:
        built.add("Cast", value, output=output, to=carrier_type(target))
        return
    offset = built.add("Cast", built.add("Sub", value, built.const(low, compute)), to=2)  # UINT8
    built.add("Add", built.add("Cast", offset, to=carrier_type(target)), built.const(low, carrier_type(target)),
              output=output)


def _wrap(built: _Nodes, value: str, target: int, output: str) -> None:
    """An integer (or bool) converted to narrow integer `target`: its low bits, as C and numpy convert integers."""
    low, high = INT_RANGES[target]
    span = high - low + 1
    bits = built.add("BitwiseAnd", built.add("Cast", value, to=_INT64), built.const(span - 1, _INT64))
    if low < 0:
        bits = built.add("Where", built.add("Greater", bits, built.const(high, _INT64)),
                         built.add("Sub", bits, built.const(span, _INT64)), bits)
    built.add("Cast", bits, output=output, to=carrier_type(target))


def _broadcastable(built: _Nodes, value: str, x: str, axis: int, block: int, shapes: dict[str, tuple]) -> str:
    """A scale or zero point `value` shaped to broadcast against `x` as QuantizeLinear / DequantizeLinear apply it:
    one per tensor, per index along `axis`, or (block > 0) per `block` consecutive indices along it."""
    shape, rank = shapes.get(value), len(shapes.get(x, ()))
    if shape is None or math.prod(d or 0 for d in shape) == 1 and len(shape) <= 1:
        return value
    axis = axis % rank
    if not block:
        dims = [1] * rank
        dims[axis] = -1
        return built.add("Reshape", value, built.const(dims, _INT64))
    repeated = list(shape)
    grouped = repeated[:axis + 1] + [block] + repeated[axis + 1:]
    spread = built.add("Expand", built.add("Unsqueeze", value, built.const([axis + 1], _INT64)),
                       built.const(grouped, _INT64))
    merged = built.add("Reshape", spread, built.const(
        repeated[:axis] + [repeated[axis] * block] + repeated[axis + 1:], _INT64))
    return built.add("Slice", merged, built.const([0], _INT64), built.const([shapes[x][axis]], _INT64),
                     built.const([axis], _INT64))


def _quantize(node, target: int, attributes: dict, types: dict[str, int], shapes: dict[str, tuple]) -> list:
    built = _Nodes(node)
    x, scale = node.input[0], node.input[1]
    zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
    axis, block = attributes.get("axis", 1), attributes.get("block_size", 0)
    x_type = attributes.get("precision") or types.get(x, _FLOAT)
    scaled = built.add("Div", built.cast(x, types.get(x, _FLOAT), x_type),
                       built.cast(_broadcastable(built, scale, x, axis, block, shapes), types.get(scale, _FLOAT),
                                  x_type))
    compute = _DOUBLE if x_type == _DOUBLE else _FLOAT
    scaled = built.cast(scaled, x_type, compute)
    shifted_zero = zero and built.cast(_broadcastable(built, zero, x, axis, block, shapes),
                                       carrier_type(target), compute)
    if target in INT_RANGES:
        low, high = INT_RANGES[target]
        rounded = built.add("Round", scaled)
        if shifted_zero:
            rounded = built.add("Add", rounded, shifted_zero)
        clamped = built.add("Min", built.add("Max", rounded, built.const(low, compute)), built.const(high, compute))
        # NaN: the reference's (its int32 conversion of NaN is the lowest integer, clamped to `low`)
        clamped = built.add("Where", built.add("IsNaN", scaled), built.const(low, compute), clamped)
        _store_int(built, clamped, compute, target, node.output[0])
        return built.nodes
    if target == 23 and shifted_zero:  # float4 adds its zero point (float8's is 0)
        scaled = built.add("Add", scaled, shifted_zero)
        # -0 + 0 is +0, which TVM's simplifier loses where the zero point is a constant 0
        zero = built.const(0.0, compute)
        scaled = built.add("Where", built.add("Equal", scaled, zero), zero, scaled)
    rounded = _round_float(built, scaled, compute, FLOAT_FORMATS[target], bool(attributes.get("saturate", 1)))
    built.add("Cast", rounded, output=node.output[0], to=_FLOAT)
    return built.nodes


def _dequantize(node, attributes: dict, types: dict[str, int], shapes: dict[str, tuple]) -> list:
    built = _Nodes(node)
    x, scale = node.input[0], node.input[1]
    zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
    axis, block = attributes.get("axis", 1), attributes.get("block_size", 0)
    scale_type = types.get(scale, _FLOAT)
    compute = _DOUBLE if scale_type == _DOUBLE else _FLOAT
    value = built.cast(x, carrier_type(types[x]), compute)
    if zero and types[x] in INT_RANGES:  # the float types' zero points are 0
        value = built.add("Sub", value, built.cast(_broadcastable(built, zero, x, axis, block, shapes),
                                                   carrier_type(types[zero]), compute))
    product = built.add("Mul", value, built.cast(_broadcastable(built, scale, x, axis, block, shapes), scale_type,
                                                 compute))
    built.add("Cast", product, output=node.output[0], to=attributes.get("output_dtype") or scale_type)
    return built.nodes
