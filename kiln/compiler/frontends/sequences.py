"""ONNX sequences and optionals resolved at compile time into the tensors they hold.

TVM's importer takes tensors only. Once a sequence input's elements are pinned (`--sequence-shape seq:2x3,4x3`),
every sequence in the graph has a static length, so each sequence op is carried out while compiling: a sequence
becomes the list of tensor names it holds; SequenceAt / SequenceInsert / SequenceErase / SequenceLength /
SplitToSequence / ConcatFromSequence become Identity, Split, Concat or constants; SequenceMap and a Loop of a
constant trip count are unrolled; an If whose branches give sequences computes both and selects element by
element. An optional input that is given is its value, and Optional / OptionalHasElement / OptionalGetElement
become what they give. Sequence inputs and outputs become one tensor per element (`seq.0`, `seq.1`, ...); the
predictors take and give them as lists (kiln.compiler.predictor). What depends on run-time values (a position, a
trip count, a loop's condition) is refused, every case at once.
"""

from __future__ import annotations

import itertools
from collections import ChainMap
from typing import TYPE_CHECKING, Callable

import numpy as np

from kiln.compiler.frontends.options import ImportOptions
from kiln.compiler.graph import SequenceValue
from kiln.compiler.onnx_graph import (all_nodes, graph_inputs, infer_shapes, is_onnx_op, node_attribute,
                                     static_dims, subgraphs)
from kiln.errors import SettingError, UnsupportedOpError

if TYPE_CHECKING:
    import onnx

SEQUENCE_OPS = frozenset({"SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceAt", "SequenceErase",
                           "SequenceLength", "SplitToSequence", "ConcatFromSequence", "SequenceMap", "Optional",
                           "OptionalHasElement", "OptionalGetElement"})
# How graph inputs that are no tensors become tensors: what their refusal says.
PINNING = {"sequence inputs": " not pinned: give their elements' shapes with --sequence-shape NAME:DIMS,DIMS,...",
           "optional inputs": " not given: pin them with --input-shape, or --sequence-shape for a sequence"}
MAX_UNROLLED = 4096  # loop iterations written out, past which a Loop is refused
_HINT = ("pin sequence inputs with --sequence-shape NAME:DIMS,DIMS,..., freeze inputs that set positions or trip "
         "counts with --freeze, or file an issue with the model attached")


def uses_sequences(model: "onnx.ModelProto") -> bool:
    """Whether `model` has sequence or optional inputs or outputs, sequence or optional ops, or a Loop."""
    values = [*model.graph.input, *model.graph.output]
    return (any(v.type.WhichOneof("value") in ("sequence_type", "optional_type") for v in values)
            or any(is_onnx_op(node, "Loop", *SEQUENCE_OPS) for node in all_nodes(model.graph)))


def take_sequence_inputs(model: "onnx.ModelProto", sequence_shapes: dict[str, tuple[tuple[int, ...], ...]],
                         tensor_shapes: set[str]) -> tuple[SequenceValue, ...]:
    """Make the given inputs plain (in place): an optional input pinned by `sequence_shapes` or `tensor_shapes`
    (--input-shape) takes its element's type, and each sequence input in `sequence_shapes` becomes one tensor
    input per element, shaped as given. SettingError where a name or a rank does not fit the model."""
    from onnx import helper

    inputs = {value.name: value for value in graph_inputs(model)}
    unknown = sorted(set(sequence_shapes) - set(inputs))
    if unknown:
        raise SettingError(ImportOptions, f"{{sequence_shapes}} names {', '.join(unknown)}, but the model's inputs "
                                          f"are {', '.join(inputs)}")
    for name, value in inputs.items():
        if value.type.WhichOneof("value") == "optional_type" and name in {*sequence_shapes, *tensor_shapes}:
            value.type.CopyFrom(value.type.optional_type.elem_type)
    taken = []
    for name, shapes in sequence_shapes.items():
        value = inputs[name]
        if value.type.WhichOneof("value") != "sequence_type":
            raise SettingError(ImportOptions, f"{{sequence_shapes}} {name}: the input is no sequence; pin a tensor "
                                              "input with {input_shapes}")
        element = value.type.sequence_type.elem_type.tensor_type
        declared = len(element.shape.dim) if element.HasField("shape") else None
        if declared is not None and any(len(shape) != declared for shape in shapes):
            raise SettingError(ImportOptions, f"{{sequence_shapes}} {name}: its elements have {declared} dims")
        names = tuple(SequenceValue.element_name(name, index) for index in range(len(shapes)))
        position = list(model.graph.input).index(value)
        del model.graph.input[position]
        for offset, (element_name, shape) in enumerate(zip(names, shapes)):
            model.graph.input.insert(position + offset,
                                     helper.make_tensor_value_info(element_name, element.elem_type, shape))
        model.graph.node.insert(0, helper.make_node("SequenceConstruct", list(names), [name],
                                                    name=f"{name}_elements"))
        taken.append(SequenceValue(name, names))
    return tuple(taken)


def resolve_sequences(model: "onnx.ModelProto", opset: int) -> tuple[SequenceValue, ...]:
    """Carry out `model`'s sequence and optional ops and Loops (in place, see the module's doc; `opset`: its
    default-domain opset); the sequence outputs it now gives as tensors. UnsupportedOpError listing what depends on
    run-time values."""
    resolver = _Resolver(infer_shapes(model).graph, opset, {value.name for value in graph_inputs(model)
                                                            if value.type.WhichOneof("value") == "optional_type"})
    resolver.run(model.graph.node, ChainMap())
    outputs = resolver.outputs(model.graph)
    unpinned: dict[str, list[str]] = {}
    for value in graph_inputs(model):
        kind = f"{value.type.WhichOneof('value').removesuffix('_type')} inputs"
        if kind in PINNING:
            unpinned.setdefault(kind + PINNING[kind], []).append(value.name)
    if resolver.problems or unpinned:
        raise UnsupportedOpError("ONNX", resolver.problems, _HINT, unpinned, tuple(resolver.parameters))
    del model.graph.node[:]
    model.graph.node.extend(resolver.nodes)
    model.graph.initializer.extend(resolver.initializers)
    kept = [v for v in model.graph.value_info if v.type.WhichOneof("value") == "tensor_type"]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return outputs


class _Resolver:
    """Walks nodes in order, writing the resolved graph's nodes. Names are looked up in a scope (a ChainMap from a
    body's names to the names their values have in the resolved graph); a sequence value is held as the list of its
    elements' names, an optional without a value in `empty`."""

    def __init__(self, graph: "onnx.GraphProto", opset: int, ungiven: set[str]):
        from onnx import numpy_helper

        self.opset = opset
        self.ungiven = ungiven  # optional inputs not pinned: whether they hold a value is known at run time only
        self.inputs = {value.name for value in graph.input} - {tensor.name for tensor in graph.initializer}
        self.parameters: dict[str, None] = {}  # graph inputs read where a constant is needed: --freeze makes them so
        self.dims = static_dims(graph)
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.sequences: dict[str, list[str]] = {}
        self.empty: set[str] = set()
        self.nodes: list = []
        self.initializers: list = []
        self.problems: dict[str, list[str]] = {}
        self._fresh = itertools.count()

    def run(self, nodes, scope: ChainMap, tag: str = "") -> None:
        for node in nodes:
            inputs = [scope.get(name, name) if name else "" for name in node.input]
            outputs = [self._define(scope, name, tag) for name in node.output]
            handler = _HANDLERS.get(node.op_type) if is_onnx_op(node) else None
            if handler is not None:
                handler(self, node, inputs, outputs, scope, tag)
            elif any(name in self.sequences or name in self.empty for name in inputs):
                self.refuse(node, f"{node.op_type} (takes a sequence or an empty optional)")
            else:
                self.emit(_renamed(node, inputs, outputs, scope, tag))

    def _define(self, scope: ChainMap, name: str, tag: str) -> str:
        if not name or not tag:
            return name
        scope[name] = f"{name}__{tag}"
        return scope[name]

    def tag(self) -> str:
        return f"u{next(self._fresh)}"

    def refuse(self, node: "onnx.NodeProto", why: str, parameters: tuple[str, ...] = ()) -> None:
        self.problems.setdefault(why, []).append(node.name or node.output[0])
        self.parameters.update(dict.fromkeys(name for name in parameters if name in self.inputs))

    def emit(self, node: "onnx.NodeProto") -> None:
        self.nodes.append(node)

    def op(self, op_type: str, inputs: list[str], outputs: list[str], **attributes) -> None:
        from onnx import helper

        self.emit(helper.make_node(op_type, inputs, outputs, name=f"{outputs[0]}_{op_type.lower()}", **attributes))

    def listed(self, op_type: str, data: str, key: str, values: list[int], outputs: list[str], **attributes) -> None:
        """Split / Squeeze / Unsqueeze with their sizes or axes: an input from opset 13 on, an attribute before."""
        if self.opset >= 13:
            self.op(op_type, [data, self.constant(np.array(values, np.int64))], outputs, **attributes)
        else:
            self.op(op_type, [data], outputs, **{key: values}, **attributes)

    def constant(self, value: np.ndarray, name: str = "") -> str:
        from onnx import numpy_helper

        name = name or f"sequence_constant_{next(self._fresh)}"
        self.constants[name] = value
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def index(self, name: str) -> int | None:
        value = self.constants.get(name)
        return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def alias(self, source: str, output: str) -> None:
        """`output` holds what `source` holds."""
        if source in self.sequences:
            self.sequences[output] = list(self.sequences[source])
        elif source in self.empty:
            self.empty.add(output)
        else:
            self.op("Identity", [source], [output])
            if source in self.constants:
                self.constants[output] = self.constants[source]

    def inline(self, body: "onnx.GraphProto", bound: list[str], scope: ChainMap) -> list[str]:
        """`body`'s nodes written out once, its inputs bound to the names in `bound`; the names of its outputs."""
        from onnx import numpy_helper

        inner = scope.new_child(dict(zip((value.name for value in body.input), bound)))
        tag = self.tag()
        for tensor in body.initializer:
            inner[tensor.name] = self.constant(numpy_helper.to_array(tensor))
        self.run(body.node, inner, tag)
        return [inner.get(value.name, value.name) for value in body.output]

    def outputs(self, graph: "onnx.GraphProto") -> tuple[SequenceValue, ...]:
        """The graph's outputs made tensors: a sequence's elements one output each (Identity to their names)."""
        from onnx import helper

        given, outputs = [], []
        for value in graph.output:
            kind = value.type.WhichOneof("value")
            inner = value.type.optional_type.elem_type if kind == "optional_type" else value.type
            if value.name in self.empty:
                self.problems.setdefault("an output that is an empty optional", []).append(value.name)
            elif value.name in self.sequences:
                elements = tuple(SequenceValue.element_name(value.name, i)
                                 for i in range(len(self.sequences[value.name])))
                elem_type = inner.sequence_type.elem_type.tensor_type.elem_type
                for source, name in zip(self.sequences[value.name], elements):
                    self.op("Identity", [source], [name])
                    outputs.append(helper.make_tensor_value_info(name, elem_type, None))
                given.append(SequenceValue(value.name, elements))
                continue
            elif kind == "optional_type":
                value.type.CopyFrom(inner)
            outputs.append(value)
        del graph.output[:]
        graph.output.extend(outputs)
        return tuple(given)


def _renamed(node: "onnx.NodeProto", inputs: list[str], outputs: list[str], scope: ChainMap,
             tag: str) -> "onnx.NodeProto":
    """A copy of `node` reading `inputs` and writing `outputs`, its bodies reading the outer names as renamed."""
    import onnx

    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.input[:], copy.output[:]
    copy.input.extend(inputs)
    copy.output.extend(outputs)
    if tag:
        copy.name = f"{node.name or node.output[0]}__{tag}"
        for body in subgraphs(copy):
            for inner in all_nodes(body):
                inner.input[:] = [scope.get(name, name) if name else "" for name in inner.input]
    return copy


# ---- one handler per op: (resolver, node, its inputs and outputs as resolved names, scope, tag) -------------------

def _construct(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    r.sequences[outputs[0]] = [name for name in inputs if name]


def _empty(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    r.sequences[outputs[0]] = []


def _position(r: _Resolver, node, inputs: list[str], length: int, default: int, extra: int = 0) -> int | None:
    """The position input (index 1 or 2) as a non-negative index into a sequence of `length` (+ `extra` for an
    insert), or None, with the node refused, where it is not constant or out of range."""
    index = 2 if node.op_type == "SequenceInsert" else 1
    name = inputs[index] if len(inputs) > index else ""
    position = default if not name else r.index(name)
    if position is None:
        r.refuse(node, f"{node.op_type} (position computed at run time)", (name,))
        return None
    position += length + extra if position < 0 else 0
    if not 0 <= position < length + extra:
        r.refuse(node, f"{node.op_type} (position out of the sequence's {length} elements)")
        return None
    return position


def _sequence(r: _Resolver, node, name: str) -> list[str] | None:
    if name not in r.sequences:
        r.refuse(node, f"{node.op_type} (of a sequence that is not pinned: --sequence-shape)")
        return None
    return r.sequences[name]


def _insert(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    elements = _sequence(r, node, inputs[0])
    if elements is not None:
        position = _position(r, node, inputs, len(elements), len(elements), extra=1)
        if position is not None:
            r.sequences[outputs[0]] = elements[:position] + [inputs[1]] + elements[position:]


def _at(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    elements = _sequence(r, node, inputs[0])
    if elements is not None:
        position = _position(r, node, inputs, len(elements), 0)
        if position is not None:
            r.alias(elements[position], outputs[0])


def _erase(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    elements = _sequence(r, node, inputs[0])
    if elements is not None:
        position = _position(r, node, inputs, len(elements), -1)
        if position is not None:
            r.sequences[outputs[0]] = elements[:position] + elements[position + 1:]


def _length(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    elements = _sequence(r, node, inputs[0])
    if elements is not None:
        r.constant(np.array(len(elements), np.int64), outputs[0])


def _split(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    dims = r.dims.get(node.input[0]) if not tag else None
    axis = node_attribute(node, "axis", 0)
    if dims is None:
        r.refuse(node, "SplitToSequence (of a tensor whose shape is not static)")
        return
    size = dims[axis]
    split = r.constants.get(inputs[1]) if len(inputs) > 1 and inputs[1] else None
    if len(inputs) > 1 and inputs[1] and split is None:
        r.refuse(node, "SplitToSequence (split computed at run time)", (inputs[1],))
        return
    if split is None:
        sizes = [1] * size
    elif split.ndim == 0:
        sizes = [int(split)] * (size // int(split)) + ([size % int(split)] if size % int(split) else [])
    else:
        sizes = [int(s) for s in split]
    parts = [f"{outputs[0]}_part{index}" for index in range(len(sizes))]
    r.listed("Split", inputs[0], "split", sizes, parts, axis=axis)
    if split is None and not node_attribute(node, "keepdims", 1):
        squeezed = [f"{part}.squeezed" for part in parts]
        for part, name in zip(parts, squeezed):
            r.listed("Squeeze", part, "axes", [axis], [name])
        parts = squeezed
    r.sequences[outputs[0]] = parts


def _concat(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    elements = _sequence(r, node, inputs[0])
    if not elements:
        if elements is not None:
            r.refuse(node, "ConcatFromSequence (of an empty sequence)")
        return
    axis = node_attribute(node, "axis")
    if node_attribute(node, "new_axis", 0):
        unsqueezed = [f"{outputs[0]}_item{index}" for index in range(len(elements))]
        for element, name in zip(elements, unsqueezed):
            r.listed("Unsqueeze", element, "axes", [axis], [name])
        elements = unsqueezed
    r.op("Concat", elements, outputs, axis=axis)


def _optional(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    if inputs and inputs[0]:
        r.alias(inputs[0], outputs[0])
    else:
        r.empty.add(outputs[0])


def _has_element(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    if _ungiven(r, node, inputs):
        return
    given = bool(inputs and inputs[0]) and inputs[0] not in r.empty
    r.constant(np.array(given), outputs[0])


def _get_element(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    if _ungiven(r, node, inputs):
        return
    if inputs[0] in r.empty:
        r.refuse(node, "OptionalGetElement (of an empty optional)")
    else:
        r.alias(inputs[0], outputs[0])


def _ungiven(r: _Resolver, node, inputs: list[str]) -> bool:
    if inputs and inputs[0] in r.ungiven:
        r.refuse(node, f"{node.op_type} (of an optional input not given: pin it with --input-shape, or "
                       "--sequence-shape for a sequence)")
        return True
    return False


def _constant(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    from onnx import helper, numpy_helper

    r.emit(_renamed(node, inputs, outputs, scope, tag))
    attribute = node.attribute[0] if len(node.attribute) == 1 else None
    if attribute is not None and attribute.name in ("value", "value_int", "value_ints", "value_float", "value_floats"):
        value = helper.get_attribute_value(attribute)
        r.constants[outputs[0]] = numpy_helper.to_array(value) if attribute.name == "value" else np.array(value)


def _identity(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    r.alias(inputs[0], outputs[0])


def _sequence_map(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    body = node_attribute(node, "body")
    lengths = {len(r.sequences[name]) for name in inputs if name in r.sequences}
    if inputs[0] not in r.sequences or len(lengths) != 1:
        r.refuse(node, "SequenceMap (of sequences not pinned, or of different lengths)")
        return
    results: list[list[str]] = [[] for _ in outputs]
    for index in range(lengths.pop()):
        bound = [r.sequences[name][index] if name in r.sequences else name for name in inputs]
        for collected, name in zip(results, r.inline(body, bound, scope)):
            collected.append(name)
    for output, collected in zip(outputs, results):
        r.sequences[output] = collected


def _loop(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    body = node_attribute(node, "body")
    trips = r.index(inputs[0]) if inputs[0] else None
    condition = r.index(inputs[1]) if len(inputs) > 1 and inputs[1] else 1
    if trips is None or condition is None:
        r.refuse(node, "Loop (trip count or condition computed at run time)", tuple(inputs[:2]))
        return
    if trips > MAX_UNROLLED:
        r.refuse(node, f"Loop (of {trips:,} iterations, more than the {MAX_UNROLLED:,} kiln writes out)")
        return
    carried = list(inputs[2:])
    scans: list[list[str]] = [[] for _ in body.output[1 + len(carried):]]
    for iteration in range(trips if condition else 0):
        counter = r.constant(np.array(iteration, np.int64))
        results = r.inline(body, [counter, r.constant(np.array(True))] + carried, scope)
        carried = results[1:1 + len(carried)]
        for collected, name in zip(scans, results[1 + len(carried):]):
            collected.append(name)
        going = r.index(results[0])
        if going is None:
            r.refuse(node, "Loop (condition computed at run time)")
            return
        if not going:
            break
    for source, output in zip(carried, outputs):
        r.alias(source, output)
    for collected, output in zip(scans, outputs[len(carried):]):
        if not collected:
            r.refuse(node, "Loop (scan outputs of no iterations)")
            continue
        stacked = [f"{output}_iteration{index}" for index in range(len(collected))]
        for name, stacked_name in zip(collected, stacked):
            r.listed("Unsqueeze", name, "axes", [0], [stacked_name])
        r.op("Concat", stacked, [output], axis=0)


def _if(r: _Resolver, node, inputs, outputs, scope, tag) -> None:
    branches = {key: node_attribute(node, key) for key in ("then_branch", "else_branch")}
    gives_values = any(value.type.WhichOneof("value") != "tensor_type"
                       for branch in branches.values() for value in branch.output)
    if not gives_values:  # TVM's importer takes an If of tensors
        r.emit(_renamed(node, inputs, outputs, scope, tag))
        return
    condition = r.index(inputs[0])
    if condition is not None:
        chosen = r.inline(branches["then_branch" if condition else "else_branch"], [], scope)
        for source, output in zip(chosen, outputs):
            r.alias(source, output)
        return
    then, otherwise = (r.inline(branches[key], [], scope) for key in ("then_branch", "else_branch"))
    for a, b, output in zip(then, otherwise, outputs):
        if a in r.sequences and b in r.sequences and len(r.sequences[a]) == len(r.sequences[b]):
            selected = [f"{output}_item{index}" for index in range(len(r.sequences[a]))]
            for x, y, name in zip(r.sequences[a], r.sequences[b], selected):
                r.op("Where", [inputs[0], x, y], [name])
            r.sequences[output] = selected
        elif not {a, b} & (set(r.sequences) | r.empty):
            r.op("Where", [inputs[0], a, b], [output])
        else:
            r.refuse(node, "If (branches give sequences of different lengths, or an optional only one fills)")


_HANDLERS: dict[str, Callable] = {
    "SequenceConstruct": _construct, "SequenceEmpty": _empty, "SequenceInsert": _insert, "SequenceAt": _at,
    "SequenceErase": _erase, "SequenceLength": _length, "SplitToSequence": _split, "ConcatFromSequence": _concat,
    "SequenceMap": _sequence_map, "Optional": _optional, "OptionalHasElement": _has_element,
    "OptionalGetElement": _get_element, "Identity": _identity, "Constant": _constant, "Loop": _loop, "If": _if,
}
