"""Which ONNX nodes the TVM Relax importer can convert: by what it really handles, not by op name alone.

A node is refused (with a reason) when
- its op is in another domain than ai.onnx, except the com.microsoft ops TVM converts ("domain X");
- its op is a default-domain op whose TVM entry is another domain's op (opset-23 Attention: TVM's converter is
  com.microsoft's, and crashes on it);
- an input the importer takes only as a constant (REQUIRED_CONSTANT: ReduceX axes, Resize scales, TopK K, ...) is
  computed at run time ("axes must be constant");
- an attribute value, a missing optional input or an input type makes the converter raise (blocked quantization,
  Pow of mixed types, EyeLike's dtype, ...), or gives a wrong answer (ConvTranspose's output_shape, RoiAlign's max
  mode, a training-mode Dropout);
- the importer has no converter for it at all (no reason: the plain by-name case).
Nodes inside If / Loop / Scan subgraphs are scanned too, named `outer/attribute/node`.
A refused node whose op ONNX defines as a function of other ops (opset-23 Attention, RotaryEmbedding, the losses,
LayerNormalization's Mean and InvStdDev, ...) is replaced by that function's body before this check runs on the
graph, where no node of the body is refused (kiln.compiler.passes.function_expansion); its refusal here stands
otherwise. An op with no converter that one of kiln's passes rewrites in the main graph (LSTM, Scan, CumProd, DFT,
Col2Im, ...: _PASS_REFUSALS) is refused only where that pass leaves it, for the reason the pass gives; an op kiln
converts itself (BitCast) likewise, by kiln.compiler.backends.tvm.converters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from kiln.compat.tvm import onnx_importer_ops
from kiln.compiler.backends.tvm.converters import CONVERTER_REFUSALS, CONVERTERS
from kiln.compiler.backends.tvm.value_checks import value_reason
from kiln.compiler.frontends.onnx import opset_of
from kiln.compiler.onnx_graph import declared_dims, element_types, graph_inputs, is_onnx_op
from kiln.compiler.passes.center_crop_pad import center_crop_pad_refusal
from kiln.compiler.passes.conv_transpose import output_shape_refusal
from kiln.compiler.passes.col2im import col2im_refusal
from kiln.compiler.passes.cumprod import cumprod_refusal
from kiln.compiler.passes.det import det_refusal
from kiln.compiler.passes.integer_conv import integer_conv_refusal
from kiln.compiler.passes.lp_normalization import lp_refusal
from kiln.compiler.passes.narrow_types import narrow_refusal
from kiln.compiler.passes.recurrent import RECURRENT_OPS, unroll_refusal
from kiln.compiler.passes.resize_exact import resize_refusal
from kiln.compiler.passes.reverse_sequence import reverse_sequence_refusal
from kiln.compiler.frontends.sequences import PINNING
from kiln.compiler.passes.scan import scan_refusal
from kiln.compiler.passes.tensor_scatter import tensor_scatter_refusal
from kiln.compiler.passes.tfidf_vectorizer import tfidf_refusal
from kiln.compiler.passes.tree_ensemble import ML_DOMAIN, tree_ensemble_refusal
from kiln.compiler.passes.spectral import SPECTRAL_OPS, spectral_refusal

if TYPE_CHECKING:
    import onnx

# The com.microsoft ops in TVM's converter table (the table is keyed by bare op name).
MICROSOFT_OPS = frozenset({"Attention", "BiasGelu", "EmbedLayerNormalization", "FastGelu", "Gelu",
                           "MatMulInteger16", "SkipLayerNormalization"})
# Default-domain ops whose TVM converter is another domain's op of the same name.
FOREIGN_CONVERTERS = {"Attention": "opset-23 Attention; TVM converts com.microsoft's"}

_REDUCE_AXES = {op: ((1, "axes"),) for op in (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSum", "ReduceSumSquare")}
# Inputs (index, ONNX name) that TVM 0.27's importer reads only as constants (onnx_frontend.py: get_constant then
# an isinstance(..., GenericConst) check, an assert, or `.value.numpy()`), or converts wrongly when computed.
REQUIRED_CONSTANT: dict[str, tuple[tuple[int, str], ...]] = {
    **_REDUCE_AXES,
    "AffineGrid": ((1, "size"),),
    "ConstantOfShape": ((0, "input"),),
    "CumSum": ((1, "axis"),),
    "CumProd": ((1, "axis"),),  # no converter: kiln.compiler.passes.cumprod unrolls it along a constant axis
    # no converters: kiln.compiler.passes.spectral writes them as MatMuls (a Where of a few for some run-time values)
    "DFT": ((1, "dft_length"), (2, "axis")),
    "STFT": ((1, "frame_step"), (3, "frame_length")),
    "MelWeightMatrix": tuple(enumerate(("num_mel_bins", "dft_length", "sample_rate", "lower_edge_hertz",
                                        "upper_edge_hertz"))),
    # a computed shape is taken as broadcast_to's target: a 1 in it does not keep the data's dim (wrong answers)
    "Expand": ((1, "shape"),),
    "MaxUnpool": ((2, "output_shape"),),
    # computed ones are replaced by the defaults (0 boxes, IoU 0.5, score 0): wrong answers
    "NonMaxSuppression": ((2, "max_output_boxes_per_class"), (3, "iou_threshold"), (4, "score_threshold")),
    "OneHot": ((1, "depth"), (2, "values")),
    "Pad": ((1, "pads"), (2, "constant_value"), (3, "axes")),
    "Reshape": ((1, "shape"),),
    "Resize": ((2, "scales"), (3, "sizes")),
    "SequenceAt": ((1, "position"),),
    "SequenceErase": ((1, "position"),),
    "SequenceInsert": ((2, "position"),),
    "Split": ((1, "split"),),
    "SplitToSequence": ((1, "split"),),
    "TopK": ((1, "K"),),
    "Upsample": ((1, "scales"),),
}
# Ops whose converters compute only their first output (the others come back empty or wrong): refused when a graph
# reads more.
FIRST_OUTPUT_ONLY = {"LayerNormalization": "Mean and InvStdDev outputs", "BatchNormalization": "training-mode outputs",
                     "Dropout": "mask output", "MaxPool": "Indices output"}
# Attribute values the converters ignore, computing the default instead (wrong answers): op -> (attribute, the
# value that is honoured), refused when the node sets another. (ConvTranspose's output_shape too, where it is not the
# shape the other attributes give: _output_shape_reason.)
IGNORED_ATTRIBUTES = {"IsInf": (("detect_negative", 1), ("detect_positive", 1)), "SpaceToDepth": (("mode", b"DCR"),)}
# Attribute values the converters raise on, the same way.
REJECTED_ATTRIBUTES = {"QuantizeLinear": (("block_size", 0),), "DequantizeLinear": (("block_size", 0),)}
# Attribute values the converters compute otherwise than ONNX, the same way (RoiAlign's max mode: 71 of the 75 values
# of its conformance case differ).
MISCOMPUTED_ATTRIBUTES = {"RoiAlign": (("mode", b"avg"),)}
# Optional inputs the converters raise without (not listed at all).
REQUIRED_INPUTS = {"OptionalHasElement": "input"}
# Ops whose converters build float32 constants, which Relax will not combine with other float types.
FLOAT32_ONLY = frozenset({"Elu", "Selu"})
# Never constant, whatever their inputs (fold_constants does not fold them either).
_RUNTIME_ONLY = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                           "Bernoulli", "Dropout", "QuantizeLinear", "DequantizeLinear"})
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})


@dataclass(frozen=True)
class _Scope:
    """What a pass's refusal function may read of the graph around a node."""

    graph: "onnx.GraphProto"
    opset: int
    constants: set[str]
    initializers: dict[str, "onnx.TensorProto"]
    dims: dict[str, tuple[int, ...]]


# Ops with no converter that a pass of the main graph rewrites: op -> why the pass leaves a node (None: it does not).
_PASS_REFUSALS: dict[str, Callable[[Any, _Scope], str | None]] = {
    **{op: lambda node, s: unroll_refusal(node, s.initializers, s.dims) for op in RECURRENT_OPS},
    **{op: lambda node, s: spectral_refusal(node, s.graph, s.opset) for op in SPECTRAL_OPS},
    "CumProd": lambda node, s: cumprod_refusal(node, s.initializers, s.dims),
    "Scan": lambda node, s: scan_refusal(node, s.dims),
    "LpNormalization": lambda node, s: lp_refusal(node, s.dims),
    "CenterCropPad": lambda node, s: center_crop_pad_refusal(node, s.initializers, s.dims),
    "Col2Im": lambda node, s: col2im_refusal(node, s.initializers, s.dims),
    "Det": lambda node, s: det_refusal(node, s.dims),
    "ReverseSequence": lambda node, s: reverse_sequence_refusal(node, s.dims),
    "TensorScatter": lambda node, s: tensor_scatter_refusal(node, s.dims),
    "TfIdfVectorizer": lambda node, s: tfidf_refusal(node, s.dims, element_types(s.graph)),
    **{op: lambda node, s: integer_conv_refusal(node, s.dims, element_types(s.graph))
       for op in ("QLinearConv", "ConvInteger")},
}


@dataclass(frozen=True)
class Refusal:
    """One node the importer cannot convert: its op (domain-qualified outside ai.onnx), its name, and why ("" when
    the importer has no converter for the op)."""

    op: str
    node: str
    reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.op} ({self.reason})" if self.reason else self.op


def refusals(model: "onnx.ModelProto") -> list[Refusal]:
    """Every node of `model`, subgraphs included, that TVM's importer cannot convert (one scan)."""
    return list(_scan(model.graph, opset_of(model), frozenset(), ""))


def unsupported_ops(model: "onnx.ModelProto") -> dict[str, list[str]]:
    """The refused nodes' names grouped by op, the op followed by the reason where there is one:
    {"Celu": [...], "ReduceSum (axes must be constant)": [...]}."""
    found: dict[str, list[str]] = {}
    for refusal in refusals(model):
        found.setdefault(refusal.label, []).append(refusal.node)
    return found


def _scan(graph: "onnx.GraphProto", opset: int, outer_constants: frozenset[str], prefix: str,
          outer_types: Types | None = None) -> Iterator[Refusal]:
    supported = onnx_importer_ops()
    constants = set(outer_constants) | {t.name for t in graph.initializer}
    types = {**(outer_types or {}), **_tensor_types(graph)}
    elem_types = {name: elem_type for name, (elem_type, _) in types.items()}
    initializers = {t.name: t for t in graph.initializer}
    dims = declared_dims(graph)
    for index, node in enumerate(graph.node):
        name = prefix + (node.name or f"#{index}")
        reason = _reason(node, opset, supported, constants)
        if reason == "" and node.op_type in CONVERTERS:  # converted by kiln, or refused for why
            reason = CONVERTER_REFUSALS[node.op_type](node, elem_types)
        elif reason == "" and node.op_type in _PASS_REFUSALS and not prefix:  # rewritten by a pass, or refused for why
            reason = _PASS_REFUSALS[node.op_type](node, _Scope(graph, opset, constants, initializers, dims))
        elif node.domain == ML_DOMAIN and node.op_type == "TreeEnsemble" and not prefix:  # left by passes.tree_ensemble
            reason = "; ".join(filter(None, (reason, tree_ensemble_refusal(node, dims, elem_types))))
        if reason is None:
            reason = _type_reason(node, types) or narrow_refusal(node, elem_types, bool(prefix))
        if reason is None and node.op_type == "ConvTranspose" and not prefix:  # output_shape, by passes.conv_transpose
            reason = output_shape_refusal(node, dims)
        if reason is None:
            reason = (_training_reason(node, initializers) or _output_shape_reason(node, dims)
                      or value_reason(node, initializers, dims))
            if reason and node.op_type == "Resize" and not prefix:  # left by passes.resize_exact, which says why
                reason = "; ".join(filter(None, (reason, resize_refusal(node, initializers, dims, elem_types))))
        if reason is None and node.op_type == "If" and prefix:
            reason = "inside another If's branch (TVM's VM code generator loses the values of nested branches)"
        if reason is not None:
            op = node.op_type if is_onnx_op(node) else f"{node.domain}.{node.op_type}"
            yield Refusal(op, name, reason)
        for attribute in node.attribute:
            subgraphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
            for subgraph in subgraphs:
                yield from _scan(subgraph, opset, frozenset(constants), f"{name}/{attribute.name}/", types)
        if _is_constant(node, constants):
            constants.update(output for output in node.output if output)


def _reason(node, opset: int, supported: frozenset[str], constants: set[str]) -> str | None:
    """Why the importer cannot convert `node` ("" when it has no converter); None when it can."""
    import onnx

    if not is_onnx_op(node):
        if node.domain == "com.microsoft" and node.op_type in MICROSOFT_OPS:
            return None
        return f"domain {node.domain}"
    if node.op_type not in supported:
        return ""
    if node.op_type in FOREIGN_CONVERTERS and opset >= 23:
        return FOREIGN_CONVERTERS[node.op_type]
    if node.op_type not in FOREIGN_CONVERTERS and not onnx.defs.has(node.op_type):
        return "not an ai.onnx op; TVM converts com.microsoft's"
    if node.op_type in FIRST_OUTPUT_ONLY and any(node.output[1:]):
        return FIRST_OUTPUT_ONLY[node.op_type]
    if node.op_type in REQUIRED_INPUTS and not node.input:  # an empty name, for an empty optional, it takes
        return f"no {REQUIRED_INPUTS[node.op_type]}; the converter needs one"
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    for table, effect in ((IGNORED_ATTRIBUTES, "ignores it"), (REJECTED_ATTRIBUTES, "rejects it"),
                          (MISCOMPUTED_ATTRIBUTES, "computes it otherwise than ONNX")):
        unhonoured = [f"{name} {attributes[name]!r}" for name, honoured in table.get(node.op_type, ())
                      if name in attributes and attributes[name] != honoured]
        if unhonoured:
            return ", ".join(unhonoured) + f" (the converter {effect})"
    dynamic = [name for index, name in REQUIRED_CONSTANT.get(node.op_type, ())
               if index < len(node.input) and node.input[index] and node.input[index] not in constants]
    if dynamic:
        return " and ".join(dynamic) + (" must be constant" if len(dynamic) == 1 else " must be constants")
    return None


Types = dict[str, tuple[int, "int | None"]]  # value name -> (ONNX element type, rank where known)


def _tensor_types(graph: "onnx.GraphProto") -> Types:
    """The tensor types `graph` declares or shape inference recorded (inputs, value_info, outputs, initializers)."""
    types: Types = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type if value.type.WhichOneof("value") == "tensor_type" else None
        if tensor is not None and tensor.elem_type:
            types[value.name] = (tensor.elem_type, len(tensor.shape.dim) if tensor.HasField("shape") else None)
    types.update({t.name: (t.data_type, len(t.dims)) for t in graph.initializer})
    return types


def _type_reason(node, types: Types) -> str | None:
    """Why a converter raises on `node`'s input types (None where it does not, or where the types are unknown)."""
    import onnx

    if not is_onnx_op(node):
        return None
    (first, rank), (second, _) = ([types.get(name, (0, None)) for name in node.input[:2]] + [(0, None)] * 2)[:2]
    first_name = onnx.TensorProto.DataType.Name(first).lower()
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type in FLOAT32_ONLY and first and first != onnx.TensorProto.FLOAT:
        return f"{first_name} input; the converter's constants are float32"
    if node.op_type == "Pow" and first and second and first != second:
        return "exponent of another type than the base"
    if node.op_type == "Pow" and first and first not in _FLOAT_TYPES:
        return f"{first_name} base; Relax's power takes floats only"
    if node.op_type in ("ReduceMax", "ReduceMin") and first == onnx.TensorProto.BOOL:
        return "bool input (TVM has no max or min of bools)"
    if node.op_type == "TopK" and first == onnx.TensorProto.UINT64:
        return "uint64 input (TVM's topk rejects it)"
    if node.op_type == "EyeLike" and first and attributes.get("dtype", first) != first:
        return "dtype other than the input's"
    if node.op_type == "RMSNormalization" and rank and attributes.get("axis", -1) in (0, -rank):
        return "axis 0: every dim normalized"
    return None


_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _training_reason(node, initializers: dict) -> str | None:
    """Why a Dropout's converter gives a wrong answer: its training_mode input true or computed at run time."""
    from onnx import numpy_helper

    if not is_onnx_op(node, "Dropout") or len(node.input) < 3 or not node.input[2]:
        return None
    if node.input[2] not in initializers:
        return "training_mode computed at run time (TVM computes inference mode only)"
    if numpy_helper.to_array(initializers[node.input[2]]).any():
        return "training_mode true (TVM computes inference mode only)"
    return None


def _output_shape_reason(node, dims: dict[str, list[int | None]]) -> str | None:
    """Why a ConvTranspose's converter gives a wrong answer: it ignores output_shape, so one that is not the shape
    its strides, pads, output_padding and kernel give (or that cannot be checked here) is refused."""
    import onnx

    if not is_onnx_op(node, "ConvTranspose"):
        return None
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    wanted = attributes.get("output_shape")
    if not wanted:
        return None
    data, weight = dims.get(node.input[0]), dims.get(node.input[1])
    spatial = len(wanted)
    if (data is None or weight is None or attributes.get("auto_pad", b"NOTSET") != b"NOTSET"
            or None in data[-spatial:] + weight[-spatial:]):
        return f"output_shape {wanted} (the converter ignores it)"
    strides, dilations = attributes.get("strides", [1] * spatial), attributes.get("dilations", [1] * spatial)
    padding, pads = attributes.get("output_padding", [0] * spatial), attributes.get("pads", [0] * 2 * spatial)
    given = [strides[i] * (data[-spatial + i] - 1) + padding[i] + (weight[-spatial + i] - 1) * dilations[i] + 1
             - pads[i] - pads[spatial + i] for i in range(spatial)]
    return None if given == list(wanted) else f"output_shape {wanted} (the converter ignores it)"


def _is_constant(node, constants: set[str]) -> bool:
    """Whether `node`'s outputs are known before run time: a Constant, or a default-domain op of constants only
    (what the graph passes fold), or Shape / Size (folded where shapes are static; compiling needs them static, and
    TVM takes a shape computed from them as a shape expression)."""
    if not is_onnx_op(node):
        return False
    if node.op_type in ("Constant", "Shape", "Size"):
        return True
    if node.op_type in _RUNTIME_ONLY or node.op_type in _SUBGRAPH_OPS:
        return False
    if node.op_type == "CastLike":  # its second input gives only the type (an attention mask's -inf, cast)
        return node.input[0] in constants
    return all(not name or name in constants for name in node.input)


# Tensor element types the runner can pass: numpy's, bfloat16 as an ml_dtypes array (kiln.dtypes), and the narrow
# types as ml_dtypes arrays, which kiln.compiler.passes.narrow_types holds in carriers (where it leaves them, a node
# is refused for why). Not string or complex tensors, nor FLOAT8E8M0 (measured on TVM 0.27, x86 LLVM, ONNX's cases):
_REFUSED_TYPES = {"FLOAT8E8M0": "which TVM 0.27 converts wrongly (it rounds 1.1 to 1 where ONNX rounds up, to 2)"}
_RUNNABLE_TYPES = frozenset({"FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "BOOL", "INT8", "INT16", "INT32", "INT64",
                             "UINT8", "UINT16", "UINT32", "UINT64", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                             "FLOAT8E5M2FNUZ", "FLOAT4E2M1", "INT4", "UINT4", "INT2", "UINT2"})


def unsupported_io(model: "onnx.ModelProto") -> dict[str, list[str]]:
    """Graph inputs and outputs kiln cannot pass to or from a compiled model, by why:
    {"sequence inputs": [...], "input dtype string": [...], ...}."""
    import onnx

    found: dict[str, list[str]] = {}
    for side, values in (("input", graph_inputs(model)),
                         ("output", list(model.graph.output))):
        for value in values:
            kind = value.type.WhichOneof("value")
            if kind != "tensor_type":
                why = f"{(kind or 'untyped').removesuffix('_type')} {side}s"
                found.setdefault(why + PINNING.get(why, ""), []).append(value.name)
                continue
            elem_type = value.type.tensor_type.elem_type  # 0: not declared
            if not elem_type and side == "input":  # the runner allocates each input with its declared dtype
                found.setdefault("input dtype undeclared", []).append(value.name)
                continue
            type_name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "FLOAT"  # an output: the importer's
            if type_name not in _RUNNABLE_TYPES:
                why = f", {_REFUSED_TYPES[type_name]}" if type_name in _REFUSED_TYPES else ""
                found.setdefault(f"{side} dtype {type_name.lower()}{why}", []).append(value.name)
    return found
