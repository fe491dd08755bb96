"""Ops and attribute values TVM 0.27's converters refuse or ignore, written in ops they convert exactly.

- EyeLike with a dtype other than its input's: the converter raises. Only the input's shape is read, so an EyeLike
  in the input's type cast to the dtype gives the same 0s and 1s.
- IsInf with detect_positive or detect_negative 0: the converter ignores both. ONNX detects the infinities of the
  signs kept (none when both are 0): IsInf and a comparison with 0 for each sign dropped.
- ReduceMax / ReduceMin of bools: TVM has neither. Over uint8's 0 and 1 they are the same (any / all), cast back.
- Split with zero-size parts before the last: the converter splits at the running sums of the sizes, which must
  increase. The empty parts are constants (the input's shape, 0 along the axis: static shapes only) and the input is
  split by the other sizes; sizes given at run time of a static axis of length 0 can only be zeros.
- ai.onnx.ml's Binarizer and ArrayFeatureExtractor: TVM converts no ai.onnx.ml op. Binarizer is 1 where
  X > threshold, else 0 (NaN too, as ONNX's reference gives; ONNX Runtime raises on it), in X's type: Greater
  and Cast, integers compared in float64 as the reference does. ArrayFeatureExtractor picks the flattened indices
  along the last axis, a 1-D input giving a [1, n] row as ONNX Runtime and the reference do: Gather and Reshapes.
  A model of ai.onnx.ml ops alone gets the default domain imported for them.
Nodes whose types or shapes are not known are left as they are, for the refusals of kiln.compiler.backends.tvm.ops.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np

from kiln.compiler.frontends.onnx import UPGRADE_OPSET
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, is_onnx_op, node_attributes, rewrite_nodes, static_shapes

if TYPE_CHECKING:
    import onnx

_BOOL, _UINT8, _INT32, _INT64, _FLOAT, _DOUBLE = 9, 2, 6, 7, 1, 11


@dataclasses.dataclass(frozen=True)
class _Known:
    """What the graph says of its values: ONNX element types, static shapes, constants (initializers)."""

    types: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    constants: dict[str, "onnx.TensorProto"]


Rewrite = Callable[["onnx.NodeProto", _Known], "tuple[list, dict] | None"]


def converter_gaps(graph: Graph) -> Graph:
    known = _Known(element_types(graph.body.graph), static_shapes(graph.body.graph),
                   {t.name: t for t in graph.body.graph.initializer})

    def replace(node):
        domain = "" if is_onnx_op(node) else node.domain
        rewrite = _REWRITES.get((domain, node.op_type))
        return rewrite(node, known) if rewrite else None

    return rewrite_nodes(graph, replace, default_opset=UPGRADE_OPSET)


def _stem(node: "onnx.NodeProto") -> str:
    return node.name or node.output[0]


def _eyelike(node, known: _Known):
    from onnx import helper

    attributes = node_attributes(node)
    source, dtype = known.types.get(node.input[0]), attributes.get("dtype")
    if not source or dtype is None or dtype == source:
        return None
    eye = f"{_stem(node)}_eye"
    return [helper.make_node("EyeLike", [node.input[0]], [eye], k=attributes.get("k", 0)),
            helper.make_node("Cast", [eye], [node.output[0]], name=node.name, to=dtype)], {}


def _isinf(node, known: _Known):
    from onnx import helper

    attributes = node_attributes(node)
    data, dtype = node.input[0], known.types.get(node.input[0])
    dropped = [compare for compare, detect in (("Less", "detect_positive"), ("Greater", "detect_negative"))
               if not attributes.get(detect, 1)]
    if not dropped or not dtype:
        return None
    stem = _stem(node)
    zero, found = f"{stem}_zero", f"{stem}_inf"
    nodes = [helper.make_node("IsInf", [data], [found])]
    for i, compare in enumerate(dropped):
        sign, kept = f"{stem}_{compare.lower()}", node.output[0] if i == len(dropped) - 1 else f"{stem}_kept{i}"
        nodes += [helper.make_node(compare, [data, zero], [sign]), helper.make_node("And", [found, sign], [kept])]
        found = kept
    nodes[-1].name = node.name
    return nodes, {zero: np.zeros((), helper.tensor_dtype_to_np_dtype(dtype))}


def _reduce_bool(node, known: _Known):
    from onnx import helper

    if known.types.get(node.input[0]) != _BOOL:
        return None
    stem = _stem(node)
    reduce = helper.make_node(node.op_type, [f"{stem}_bytes", *node.input[1:]], [f"{stem}_reduced"])
    reduce.attribute.extend(node.attribute)
    return [helper.make_node("Cast", [node.input[0]], [f"{stem}_bytes"], to=_UINT8), reduce,
            helper.make_node("Cast", [f"{stem}_reduced"], [node.output[0]], name=node.name, to=_BOOL)], {}


def _split(node, known: _Known):
    from onnx import helper, numpy_helper

    data = node.input[0]
    shape, dtype = known.shapes.get(data), known.types.get(data)
    if not shape or not dtype:
        return None
    attributes = node_attributes(node)
    axis = attributes.get("axis", 0)
    axis = axis + len(shape) if axis < 0 else axis
    given = node.input[1] if len(node.input) > 1 else ""
    if given in known.constants:
        sizes = [int(size) for size in numpy_helper.to_array(known.constants[given])]
    elif given:  # computed: known only where the axis is empty
        sizes = [0] * len(node.output) if shape[axis] == 0 else None
    else:
        sizes = attributes.get("split")
    if sizes is None or 0 not in sizes[:-1]:
        return None
    stem = _stem(node)
    empty = np.zeros(shape[:axis] + (0,) + shape[axis + 1:], helper.tensor_dtype_to_np_dtype(dtype))
    nodes = [helper.make_node("Constant", [], [output], value=numpy_helper.from_array(empty, f"{stem}_empty{i}"))
             for i, (output, size) in enumerate(zip(node.output, sizes)) if output and not size]
    kept = [(output, size) for output, size in zip(node.output, sizes) if size]
    if len(kept) <= 1:  # one part: all of the input
        return nodes + [helper.make_node("Identity", [data], [output], name=node.name) for output, _ in kept], {}
    outputs, parts = [output for output, _ in kept], np.array([size for _, size in kept], np.int64)
    if given:
        nodes.append(helper.make_node("Split", [data, f"{stem}_sizes"], outputs, name=node.name, axis=axis))
        return nodes, {f"{stem}_sizes": parts}
    nodes.append(helper.make_node("Split", [data], outputs, name=node.name, axis=axis, split=parts.tolist()))
    return nodes, {}


def _binarizer(node, known: _Known):
    from onnx import helper

    dtype = known.types.get(node.input[0])
    if dtype not in (_FLOAT, _DOUBLE, _INT32, _INT64):
        return None
    stem = _stem(node)
    data, compared = node.input[0], (dtype if dtype in (_FLOAT, _DOUBLE) else _DOUBLE)
    nodes = []
    if compared != dtype:
        nodes.append(helper.make_node("Cast", [data], [f"{stem}_double"], to=_DOUBLE))
        data = f"{stem}_double"
    threshold = np.array(node_attributes(node).get("threshold", 0.0), helper.tensor_dtype_to_np_dtype(compared))
    nodes += [helper.make_node("Greater", [data, f"{stem}_threshold"], [f"{stem}_above"]),
              helper.make_node("Cast", [f"{stem}_above"], [node.output[0]], name=node.name, to=dtype)]
    return nodes, {f"{stem}_threshold": threshold}


def _array_feature_extractor(node, known: _Known):
    from onnx import helper

    data, indices = node.input
    shape = known.shapes.get(data)
    if not shape:
        return None
    stem = _stem(node)
    picked = node.output[0] if len(shape) > 1 else f"{stem}_picked"
    nodes = [helper.make_node("Reshape", [indices, f"{stem}_flat"], [f"{stem}_indices"]),
             helper.make_node("Gather", [data, f"{stem}_indices"], [picked], axis=len(shape) - 1)]
    constants = {f"{stem}_flat": np.array([-1], np.int64)}
    if len(shape) == 1:
        nodes.append(helper.make_node("Reshape", [picked, f"{stem}_row"], [node.output[0]]))
        constants[f"{stem}_row"] = np.array([1, -1], np.int64)
    nodes[-1].name = node.name
    return nodes, constants


_REWRITES: dict[tuple[str, str], Rewrite] = {
    ("", "EyeLike"): _eyelike, ("", "IsInf"): _isinf, ("", "ReduceMax"): _reduce_bool,
    ("", "ReduceMin"): _reduce_bool, ("", "Split"): _split, ("ai.onnx.ml", "Binarizer"): _binarizer,
    ("ai.onnx.ml", "ArrayFeatureExtractor"): _array_feature_extractor,
}
