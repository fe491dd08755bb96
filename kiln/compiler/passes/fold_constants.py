"""Fold what depends only on constants and static shapes into initializers, so TVM's importer sees constants.

TVM's ONNX importer takes shape, axes, pads, scales, K and split only as constants, and crashes on a
ConstantOfShape with an empty shape. Exporters compute these at run time: Shape -> Gather -> Concat -> Reshape
chains, ConstantOfShape([]) (a scalar), position ids Range(0, Shape(x)[1]), causal masks LessOrEqual -> Where(mask,
0, -inf), parameters given as Constant nodes. Once the input shapes are pinned and ONNX shape inference has run,
they depend on nothing else, and `onnx.reference` evaluates them here, one node at a time.

Folded: every node of the standard domain whose inputs are all constants (initializers, Constant nodes, earlier
folds), and Shape / Size of a tensor whose shape is static. Never folded: random ops (their value changes from run
to run), Quantize/DequantizeLinear (the backend rewrites QDQ pairs into integer kernels; folding would store int8
weights as float), Dropout, LSTM/GRU/RNN (onnx.reference ignores their activations and clip; passes.recurrent
unrolls them and folds the pieces), nodes holding subgraphs (If, Loop, Scan), other domains, sequence outputs, nodes whose
inferred output is over MAX_EVALUATED elements, and any node onnx.reference fails on or answers with another dtype.

Stored: a folded tensor becomes an initializer if it has at most MAX_STORED elements, or no more than the constants
it was computed from (a Transpose or Cast of a weight); a larger one (ConstantOfShape, Expand, Tile, Range blowing
a small constant up) stays a node, computed at run time from stored inputs. A graph output stays computed by its
node. Nodes nothing reads any more are dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.frontends.onnx import opset_of
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import drop_unused_initializers, infer_shapes, is_onnx_op, names_read

if TYPE_CHECKING:
    import onnx

MAX_STORED = 1 << 20  # elements
MAX_EVALUATED = 1 << 24
ROUNDS = 4  # folding a Reshape's shape can make its output static, and so a later Shape foldable
RANDOM = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                    "Bernoulli"})
NEVER = RANDOM | {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Dropout", "LSTM", "GRU", "RNN"}
log = logging.getLogger("kiln.passes")


def fold_constants(graph: Graph) -> Graph:
    import onnx

    if not _has_candidates(graph.body.graph):
        return graph
    model = onnx.ModelProto()
    model.CopyFrom(graph.body)
    folded = 0
    for step in range(ROUNDS):
        if step and not _has_candidates(model.graph):
            break
        model = infer_shapes(model)
        count = _fold_once(model)
        if not count:
            break
        folded += count
    if not folded:
        return graph
    log.debug("kiln: folded %d constant nodes", folded)
    return dataclasses.replace(graph, body=infer_shapes(model))


def _has_candidates(graph: "onnx.GraphProto") -> bool:
    constant = {t.name for t in graph.initializer}
    return any(node.op_type in ("Constant", "Shape", "Size") or all(i in constant for i in node.input if i)
               for node in graph.node if is_onnx_op(node) and node.op_type not in NEVER)


def _fold_once(model: "onnx.ModelProto") -> int:
    """Fold (in place) every node evaluable from constants; how many nodes left the graph."""
    from onnx import numpy_helper

    graph = model.graph
    opset = opset_of(model)
    shapes, dtypes = _value_types(graph)
    initializers = {t.name: t for t in graph.initializer}
    values: dict[str, np.ndarray] = {}
    origin = {name: math.prod(t.dims) for name, t in initializers.items()}  # elements it is computed from
    producer: dict[str, int] = {}  # folded value -> index of its node
    nodes = list(graph.node)
    for index, node in enumerate(nodes):
        outputs = _evaluate(node, initializers, values, shapes, dtypes, opset)
        if outputs is None:
            continue
        source = sum(origin.get(name, 0) for name in node.input if name in values)
        for name, value in outputs.items():
            values[name], producer[name] = value, index
            origin[name] = source or value.size  # Constant, Shape, Size: the value itself
    kept, stored = _placement(nodes, {o.name for o in graph.output}, producer, values, origin)
    folded = set(producer.values()) - kept
    if not folded:
        return 0
    nodes = _live([n for i, n in enumerate(nodes) if i not in folded], {o.name for o in graph.output})
    removed = len(graph.node) - len(nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(values[name], name) for name in stored)
    before = set(initializers)
    drop_unused_initializers(model)
    dropped = before - {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)
    computed = {out for node in nodes for out in node.output}
    info = [v for v in graph.value_info if v.name in computed]
    del graph.value_info[:]
    graph.value_info.extend(info)
    return removed


def _placement(nodes: list, outputs: set[str], producer: dict[str, int], values: dict[str, np.ndarray],
               origin: dict[str, int]) -> tuple[set[int], list[str]]:
    """Which folded nodes stay in the graph (indices), and which folded values become initializers (in node order).

    Walks back from what the unfolded nodes and the graph outputs read: a small value (or one no larger than
    the constants it came from) is stored; a large one or a graph output keeps its node, whose inputs are needed
    in turn."""
    unfolded = [node for node in nodes if not any(out in producer for out in node.output)]
    pending = [name for name in names_read(unfolded) | outputs if name in producer]
    kept: set[int] = set()
    stored: set[str] = set()
    while pending:
        name = pending.pop()
        index = producer[name]
        if index in kept or name in stored:
            continue
        size = values[name].size
        if name not in outputs and (size <= MAX_STORED or size <= origin[name]):
            stored.add(name)
        else:
            kept.add(index)
            pending.extend(name for name in nodes[index].input if name in producer)
    order = [out for node in nodes for out in node.output if out in stored]
    return kept, order


def _live(nodes: list, outputs: set[str]) -> list:
    """`nodes` less those whose outputs nothing reads (nor subgraphs, nor the graph's outputs)."""
    while True:
        read = names_read(nodes) | outputs
        live = [node for node in nodes if any(out in read for out in node.output if out)]
        if len(live) == len(nodes):
            return nodes
        nodes = live




def _evaluate(node, initializers, values, shapes, dtypes, opset) -> dict[str, np.ndarray] | None:
    """The node's outputs by name, or None where it must not or cannot be folded."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    if not is_onnx_op(node) or node.op_type in NEVER or any(a.type in (5, 10) for a in node.attribute):
        return None  # attribute types 5, 10: GRAPH, GRAPHS (If, Loop, Scan)
    names = [name for name in node.input if name]
    if not all(name in values or name in initializers for name in names):
        return _shape_of(node, shapes)
    for name in names:
        if name not in values:
            values[name] = numpy_helper.to_array(initializers[name])
    size = _static_size(shapes.get(node.output[0]))
    if size is not None and size > MAX_EVALUATED:
        return None
    try:
        results = ReferenceEvaluator(node, opsets={"": opset}).run(None, {name: values[name] for name in names})
    except Exception as exc:  # noqa: BLE001 - an op onnx.reference lacks or rejects: left for the importer
        log.debug("kiln: not folding %s (%s): %s", node.name, node.op_type, exc)
        return None
    if len(results) != len(node.output):
        return None
    outputs = {}
    for name, result in zip(node.output, results):
        if not name:
            continue
        if not isinstance(result, (np.ndarray, np.generic)):
            return None  # a sequence or optional
        result = np.asarray(result)
        if name in dtypes and dtypes[name] != result.dtype:
            return None
        outputs[name] = result
    return outputs


def _shape_of(node, shapes) -> dict[str, np.ndarray] | None:
    """Shape or Size of a tensor whose shape is static."""
    dims = _static_dims(shapes.get(node.input[0])) if node.input else None
    if dims is None or node.op_type not in ("Shape", "Size"):
        return None
    if node.op_type == "Size":
        return {node.output[0]: np.array(math.prod(dims), dtype=np.int64)}
    attrs = {a.name: a.i for a in node.attribute}
    return {node.output[0]: np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], dtype=np.int64)}


def _value_types(graph) -> tuple[dict[str, list], dict[str, np.dtype]]:
    """Name -> declared dims (int, str or None each) and name -> numpy dtype, from inputs, outputs and value_info."""
    from onnx import helper

    shapes, dtypes = {}, {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            continue
        if tensor_type.elem_type:
            dtypes[value.name] = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    return shapes, dtypes


def _static_dims(dims: list | None) -> list[int] | None:
    return dims if dims is not None and all(isinstance(d, int) for d in dims) else None


def _static_size(dims: list | None) -> int | None:
    dims = _static_dims(dims)
    return None if dims is None else math.prod(dims)
