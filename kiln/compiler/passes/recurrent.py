"""LSTM, GRU and RNN nodes unrolled over time into the ordinary ops they compute with.

TVM 0.27's ONNX importer has no converter for the recurrent ops. Once the sequence length is static, each node is
written out step by step, as ONNX defines it (gates in ONNX's order; f, g, h the node's activations, each one's
input clipped to [-clip, clip] when clip is set, but for h(C): ONNX Runtime clips only the gates):

    all steps   XW = X Wᵀ + Wb + Rb                                    (one MatMul, each direction's columns)
    LSTM        i, o, f, c = XW[t] + H Rᵀ
                i = f(i + Pi ⊙ C)   f = f(f + Pf ⊙ C), or 1 - i with input_forget
                C = f ⊙ C + i ⊙ g(c)   o = f(o + Po ⊙ C)   H = o ⊙ h(C)
    GRU         z, r, n = XW[t] + H [Rz Rr]ᵀ, 0                        (Rbh kept out of XW with linear_before_reset)
                n = g(n + (r ⊙ H) Rhᵀ), or g(n + r ⊙ (H Rhᵀ + Rbh)) with linear_before_reset
                H = n + z ⊙ (H - n)                                    (= (1 - z) ⊙ n + z ⊙ H)
    RNN         H = f(XW[t] + H Rᵀ)

A reverse direction runs the steps from the last; Y stacks each step's H, Y_h (Y_c) the last H (C). Without
initial_h / initial_c the states start at 0, so the first step's terms in them are left out. With sequence_lens
(constant or given at run time), a batch row's steps from its length on are padding, as ONNX Runtime computes them:
its states pass through them unchanged and its Y there is 0, so Y_h is the H of its last step (forward) or of step 0
(reverse, which starts at the row's own last step).

The weights W, R, B, P may be initializers or given at run time (graph inputs, computed tensors): each direction's
pieces (Rᵀ, Pi, Rbh, ...) are cut from them in the graph (Gather, Split, Transpose). An op of the unrolling whose
inputs are all constants is evaluated as it is written (onnx.reference), so constant weights come out as initializers,
cut and transposed once at compile time, and run-time ones are cut once per run, outside the steps.

Unrolled: a node of the main graph whose sequence length is static, whose hidden size is known (hidden_size, or
R's static shape), and whose activations are ONNX ops (any case, as ONNX Runtime reads them; activation_alpha /
activation_beta consumed in order by those that take them, the op's own defaults after). Any other is left as it
is, and the support check (kiln.compiler.backends.tvm.ops) names why with `unroll_refusal`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import graph_names, is_onnx_op, rewrite_nodes, static_dims

if TYPE_CHECKING:
    import onnx

RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
# Activation name, lower case -> the ONNX op, and how many of activation_alpha, activation_beta it takes
_FUNCTIONS = {"sigmoid": ("Sigmoid", 0, 0), "tanh": ("Tanh", 0, 0), "relu": ("Relu", 0, 0),
              "softsign": ("Softsign", 0, 0), "softplus": ("Softplus", 0, 0), "leakyrelu": ("LeakyRelu", 1, 0),
              "thresholdedrelu": ("ThresholdedRelu", 1, 0), "elu": ("Elu", 1, 0), "hardsigmoid": ("HardSigmoid", 1, 1)}
_INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


class Refused(Exception):
    """Why a node is not unrolled."""


@dataclasses.dataclass(frozen=True)
class _Function:
    op: str
    attributes: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class _Recurrence:
    """What a node's attributes and static shapes say."""

    steps: int
    hidden: int
    layout: int  # 0: [steps, batch, ...]; 1: [batch, steps, ...]. The directions axis of initial_h and Y_h too
    reverse: tuple[bool, ...]  # per direction
    functions: tuple[tuple[_Function, ...], ...]  # per direction: f, g, h (LSTM), f, g (GRU), f (RNN)
    lengths: str | None = None  # sequence_lens, where a row may be shorter than the sequence


def unroll_recurrent(graph: Graph) -> Graph:
    def plan(node, values, dims):
        return _recurrence(node, values, dims)

    def dtype(model, node):
        return _element_type(model.graph, node.input[0])

    return unroll_nodes(graph, _is_recurrent, plan, dtype, _unroll)


def unroll_nodes(graph: Graph, matches: Callable, plan: Callable, dtype: Callable, unroll: Callable) -> Graph:
    """`graph` with each node that `matches` and that `plan(node, initializers, dims)` plans (raising Refused where
    it does not) replaced by the nodes `unroll(node, the plan, emitter)` writes through an Emitter of the node's
    `dtype(model, node)`; the graph itself where none is."""
    from kiln.compiler.frontends.onnx import opset_of

    if not any(matches(node) for node in graph.body.graph.node):
        return graph
    model = graph.body
    values = {t.name: t for t in model.graph.initializer}
    dims = static_dims(model.graph)
    taken, opset = graph_names(model.graph), opset_of(model)

    def replace(node):
        if not matches(node):
            return None
        try:
            planned = plan(node, values, dims)
        except Refused:
            return None
        emitter = Emitter(node.name or node.output[0], taken, opset, values, dtype(model, node))
        unroll(node, planned, emitter)
        return emitter.nodes, emitter.constants

    return rewrite_nodes(graph, replace)


def unroll_refusal(node: "onnx.NodeProto", values: Mapping[str, "onnx.TensorProto"],
                   dims: Mapping[str, Sequence[int | None]]) -> str | None:
    """Why unroll_recurrent leaves the LSTM / GRU / RNN `node` as it is; None where it unrolls it. `values` holds
    the constants known here, `dims` the values' shapes (None: symbolic)."""
    try:
        _recurrence(node, values, dims)
    except Refused as refused:
        return str(refused)
    return None


def _is_recurrent(node: "onnx.NodeProto") -> bool:
    return is_onnx_op(node, *RECURRENT_OPS)


def _recurrence(node, values: Mapping, dims: Mapping) -> _Recurrence:
    from onnx import helper, numpy_helper

    inputs = _inputs(node)
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    direction = attributes.get("direction", b"forward").decode()
    if direction not in ("forward", "reverse", "bidirectional"):
        raise Refused(f"direction {direction}")
    reverse = (False, True) if direction == "bidirectional" else (direction == "reverse",)
    layout = attributes.get("layout", 0)
    shape = dims.get(inputs["X"])
    steps = shape[layout] if shape is not None and len(shape) == 3 else None
    if not steps:
        raise Refused("sequence length not static; pin the input shapes")
    lengths = inputs.get("sequence_lens")
    if lengths in values and np.all(numpy_helper.to_array(values[lengths]) == steps):
        lengths = None
    hidden = _hidden_size(attributes, inputs["R"], values, dims)
    return _Recurrence(steps, hidden, layout, reverse, _functions(node.op_type, attributes, len(reverse)), lengths)


def _inputs(node) -> dict[str, str]:
    """The node's inputs by their ONNX names, the absent optional ones left out."""
    return {name: value for name, value in zip(_INPUTS, node.input) if value}


def _hidden_size(attributes: dict, recurrent: str, values: Mapping, dims: Mapping) -> int:
    shape = list(values[recurrent].dims) if recurrent in values else dims.get(recurrent)
    hidden = attributes.get("hidden_size") or (shape[-1] if shape else None)
    if not hidden:
        raise Refused("no hidden_size, and R's shape not static")
    return hidden


def _functions(op: str, attributes: dict, directions: int) -> tuple[tuple[_Function, ...], ...]:
    """Each direction's activations, with the alphas and betas ONNX Runtime gives them."""
    per_direction = len(_DEFAULT_ACTIVATIONS[op])
    names = [name.decode() for name in attributes.get("activations", [])] or [*_DEFAULT_ACTIVATIONS[op]] * directions
    if op == "RNN" and len(names) == 2 and directions == 1:
        names = names[:1]  # RNN's schema default, ["Tanh", "Tanh"], written out
    if len(names) != per_direction * directions:
        raise Refused(f"{len(names)} activations for {directions} direction(s)")
    unknown = [name for name in names if name.lower() not in _FUNCTIONS]
    if unknown:
        raise Refused("activation " + ", ".join(unknown))
    alphas, betas = list(attributes.get("activation_alpha", [])), list(attributes.get("activation_beta", []))
    functions = []
    for name in names:
        op_type, takes_alpha, takes_beta = _FUNCTIONS[name.lower()]
        given = [("alpha", alphas.pop(0))] if takes_alpha and alphas else []
        given += [("beta", betas.pop(0))] if takes_beta and betas else []
        if op_type == "ThresholdedRelu" and not given:
            raise Refused("ThresholdedRelu activation without its alpha: ONNX defaults it to 1, ONNX Runtime to 0")
        functions.append(_Function(op_type, tuple(given)))
    return tuple(tuple(functions[d * per_direction:(d + 1) * per_direction]) for d in range(directions))


@dataclasses.dataclass(frozen=True)
class _Cell:
    """One direction's weights (by name) and activations."""

    recurrent: str  # Rᵀ; GRU without linear_before_reset: [Rz Rr]ᵀ
    functions: tuple[_Function, ...]
    clip: float | None
    candidate: str | None = None  # GRU: Rhᵀ without linear_before_reset, Rbh with it (None without B)
    peepholes: tuple[str | None, ...] = (None, None, None)  # LSTM: Pi, Po, Pf
    input_forget: bool = False
    linear_before_reset: bool = False


def _unroll(node, recurrence: _Recurrence, e: "Emitter") -> None:
    """Write (into `e`) the node's steps and outputs."""
    from onnx import helper

    inputs = _inputs(node)
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    hidden, directions = recurrence.hidden, len(recurrence.reverse)
    gru_reset = node.op_type == "GRU" and bool(attributes.get("linear_before_reset", 0))
    weights = e.op("Transpose", [inputs["W"]], perm=[2, 0, 1])  # [input, directions, gates * hidden]
    xw = e.op("MatMul", [inputs["X"], e.op("Reshape", [weights, e.const(np.array([0, -1], np.int64))])])
    if "B" in inputs:
        xw = e.op("Add", [xw, _input_bias(e, inputs["B"], hidden, gru_reset)])
    axis, steps = recurrence.layout, recurrence.steps
    initial = {name: e.split(inputs.get(name), directions, axis) for name in ("initial_h", "initial_c")}
    step = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN": _rnn_step}[node.op_type]
    lengths = recurrence.lengths and e.op("Reshape", [recurrence.lengths, e.const(
        np.array([1, -1, 1] if axis == 0 else [-1, 1, 1], np.int64))])  # against a step's [1, batch, hidden]
    sequences, finals = [], []
    for d, (by_time, reverse) in enumerate(zip(e.split(xw, directions, -1), recurrence.reverse)):
        cell = _cell(node.op_type, d, inputs, attributes, recurrence.functions[d], e)
        state, outputs = (initial["initial_h"][d], initial["initial_c"][d]), [None] * steps
        slices = e.split(by_time, steps, axis)
        for t in (reversed(range(steps)) if reverse else range(steps)):
            computed = step(e, cell, slices[t], *state)
            if lengths is None:
                state, outputs[t] = computed, computed[0]
                continue
            valid = e.op("Less", [e.const(np.array(t, np.int32)), lengths])
            state = tuple(e.where(valid, new, old) for new, old in zip(computed, state))
            outputs[t] = e.where(valid, computed[0], None)
        sequences.append(outputs)
        finals.append(state)
    outputs = list(node.output) + [""] * 3
    if outputs[0]:
        pieces = [sequences[d][t] for t in range(steps) for d in range(directions)]
        shape = [steps, directions, -1, hidden] if axis == 0 else [-1, steps, directions, hidden]
        e.op("Reshape", [e.concat(pieces, axis), e.const(np.array(shape, np.int64))], [outputs[0]])
    for index, name in ((0, outputs[1]), (1, outputs[2])):
        if name:
            e.concat([state[index] for state in finals], axis, name)


def _input_bias(e: "Emitter", biases: str, hidden: int, gru_reset: bool) -> str:
    """Wb + Rb, the directions one after the other; GRU's Rbh left out with linear_before_reset."""
    input_bias, recurrent_bias = e.split(biases, 2, -1)
    if gru_reset:
        recurrent_bias = e.op("Mul", [recurrent_bias, e.const(np.repeat([1.0, 1.0, 0.0], hidden))])
    return e.op("Reshape", [e.add(input_bias, recurrent_bias), e.const(np.array([-1], np.int64))])


def _cell(op: str, d: int, inputs: dict[str, str], attributes: dict, functions, e: "Emitter") -> _Cell:
    clip = attributes.get("clip")
    recurrent = e.op("Transpose", [e.gather(inputs["R"], d)])
    if op == "LSTM":
        peepholes = e.split(e.gather(inputs.get("P"), d), 3, -1)
        return _Cell(recurrent, functions, clip, peepholes=tuple(peepholes),
                     input_forget=bool(attributes.get("input_forget", 0)))
    if op == "RNN":
        return _Cell(recurrent, functions, clip)
    if attributes.get("linear_before_reset", 0):
        reset_bias = e.split(e.gather(inputs.get("B"), d), 6, -1)[5]
        return _Cell(recurrent, functions, clip, reset_bias, linear_before_reset=True)
    update, reset, candidate = e.split(recurrent, 3, -1)
    return _Cell(e.concat([update, reset], -1), functions, clip, candidate)


def _lstm_step(e: "Emitter", cell: _Cell, xw: str, h: str | None, c: str | None) -> tuple[str, str]:
    i, o, f, g = e.split(e.add(xw, e.matmul(h, cell.recurrent)), 4, -1)
    into, out, forget = cell.peepholes
    i = e.activate(cell, 0, e.add(i, e.mul(into, c)))
    f = e.op("Sub", [e.scalar(1.0), i]) if cell.input_forget else e.activate(cell, 0, e.add(f, e.mul(forget, c)))
    c = e.add(e.mul(f, c), e.mul(i, e.activate(cell, 1, g)))
    o = e.activate(cell, 0, e.add(o, e.mul(out, c)))
    return e.mul(o, e.activate(cell, 2, c, clipped=False)), c


def _gru_step(e: "Emitter", cell: _Cell, xw: str, h: str | None, _) -> tuple[str, None]:
    xz, xr, xn = e.split(xw, 3, -1)
    hz, hr, *hn = e.split(e.matmul(h, cell.recurrent), 3 if cell.linear_before_reset else 2, -1)
    z, r = e.activate(cell, 0, e.add(xz, hz)), e.activate(cell, 0, e.add(xr, hr))
    if cell.linear_before_reset:
        n = e.activate(cell, 1, e.add(xn, e.mul(r, e.add(hn[0], cell.candidate))))
    else:
        n = e.activate(cell, 1, e.add(xn, e.matmul(e.mul(r, h), cell.candidate)))
    if h is None:
        return e.op("Sub", [n, e.mul(z, n)]), None
    return e.add(n, e.mul(z, e.op("Sub", [h, n]))), None


def _rnn_step(e: "Emitter", cell: _Cell, xw: str, h: str | None, _) -> tuple[str, None]:
    return e.activate(cell, 0, e.add(xw, e.matmul(h, cell.recurrent))), None


class Emitter:
    """The nodes and constants one recurrent node is unrolled into, named under its name; an op whose inputs are all
    constants (the graph's initializers, `values`, or new ones) is evaluated into a constant instead. Arithmetic on
    None (a state of zeros, an absent bias or peephole) leaves out the terms it zeroes."""

    def __init__(self, prefix: str, taken: set[str], opset: int, values: Mapping[str, "onnx.TensorProto"],
                 dtype: np.dtype):
        self.prefix, self.taken, self.opset, self.values, self.dtype = prefix, taken, opset, values, dtype
        self.nodes: list = []
        self.constants: dict[str, np.ndarray] = {}
        self.scalars: dict[float, str] = {}

    def fresh(self, label: str) -> str:
        name = f"{self.prefix}/{label}_{len(self.nodes) + len(self.constants)}"
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attributes) -> str | list[str]:
        from onnx import helper

        names = outputs if isinstance(outputs, list) else [self.fresh(op_type.lower()) for _ in range(outputs)]
        node = helper.make_node(op_type, inputs, names, name=self.fresh(op_type), **attributes)
        if isinstance(outputs, int) and all(name in self.constants or name in self.values for name in inputs):
            self.constants.update(zip(names, self.evaluate(node)))
        else:
            self.nodes.append(node)
        return names[0] if len(names) == 1 else names

    def evaluate(self, node: "onnx.NodeProto") -> list[np.ndarray]:
        from onnx import numpy_helper
        from onnx.reference import ReferenceEvaluator

        arrays = {name: self.constants[name] if name in self.constants else numpy_helper.to_array(self.values[name])
                  for name in node.input}
        return [np.asarray(array) for array in ReferenceEvaluator(node, opsets={"": self.opset}).run(None, arrays)]

    def const(self, array: np.ndarray | None) -> str | None:
        """A new initializer; floats in the node's type."""
        if array is None:
            return None
        name = self.fresh("const")
        self.constants[name] = array.astype(self.dtype) if array.dtype.kind == "f" else array
        return name

    def scalar(self, value: float) -> str:
        """A float scalar initializer, one for each value."""
        if value not in self.scalars:
            self.scalars[value] = self.const(np.array(value, self.dtype))
        return self.scalars[value]

    def add(self, a: str | None, b: str | None) -> str | None:
        return a if b is None else b if a is None else self.op("Add", [a, b])

    def mul(self, a: str | None, b: str | None) -> str | None:
        return None if a is None or b is None else self.op("Mul", [a, b])

    def where(self, condition: str, a: str | None, b: str | None) -> str | None:
        """a where `condition`, else b (None: zeros of a's shape, where a is not None)."""
        return None if a is None else self.op("Where", [condition, a, self.scalar(0.0) if b is None else b])

    def matmul(self, a: str | None, b: str) -> str | None:
        return None if a is None else self.op("MatMul", [a, b])

    def gather(self, x: str | None, index: int) -> str | None:
        """x[index]"""
        return None if x is None else self.op("Gather", [x, self.const(np.array(index, np.int64))], axis=0)

    def split(self, x: str | None, parts: int, axis: int) -> list[str | None]:
        if x is None or parts == 1:
            return [x] * parts
        equal = {"num_outputs": parts} if self.opset >= 18 else {}  # opset 18 names the count; earlier, implied
        return self.op("Split", [x], parts, axis=axis, **equal)

    def concat(self, pieces: list[str], axis: int, output: str | None = None) -> str:
        if len(pieces) == 1:
            return self.op("Identity", pieces, [output]) if output else pieces[0]
        return self.op("Concat", pieces, [output] if output else 1, axis=axis)

    def activate(self, cell: _Cell, index: int, x: str, clipped: bool = True) -> str:
        function = cell.functions[index]
        if cell.clip is not None and clipped:
            x = self.op("Clip", [x, self.scalar(-cell.clip), self.scalar(cell.clip)])
        return self.op(function.op, [x], **dict(function.attributes))


def _element_type(graph: "onnx.GraphProto", name: str) -> np.dtype:
    """The element type of a value whose shape is known (an input, an initializer, or shape inference's
    value_info)."""
    from onnx import helper

    kind = next((t.data_type for t in graph.initializer if t.name == name), None) or next(
        v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info) if v.name == name)
    return np.dtype(helper.tensor_dtype_to_np_dtype(kind))
