"""DFT, STFT and MelWeightMatrix written with ops TVM converts.

TVM 0.27's importer has no converter for any of the three. A DFT along an axis of static length is linear in the
signal: with the axis moved last and the (real, imaginary) pairs ONNX lays along the last dim flattened into it, it
is one MatMul with a constant matrix of cosines and sines, computed in float64 and cast to the signal's type. The
matrix also holds dft_length's zero padding or truncation, onesided's half spectrum, inverse's 1/n and the inverse
onesided transform's Hermitian weights (numpy's irfft, as onnx.reference computes it). STFT is that DFT over frames
gathered along the signal, times the window. A MelWeightMatrix of constants is a constant, computed by onnx.reference.

Parameters given at run time are taken where the static shapes leave few values for them: DFT-20's axis is computed
along each axis that gives the output's declared shape and selected with Where; STFT's frame_step gathers at offsets
computed at run time (the number of frames read from the declared output shape), its frame_length is selected among
those the declared bins allow. A run-time value outside these makes the whole output NaN instead of a wrong answer.
Left as they are, named by `spectral_refusal`: dft_length given at run time, shapes not static, parameters the
shapes do not narrow down, a MelWeightMatrix of run-time inputs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.frontends.onnx import opset_of
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import (element_types, is_onnx_op, node_attributes, rewrite_nodes, static_dims,
                                     static_shapes)

if TYPE_CHECKING:
    import onnx

SPECTRAL_OPS = frozenset({"DFT", "STFT", "MelWeightMatrix"})
MAX_ELEMENTS = 1 << 24  # in one DFT matrix
_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # FLOAT, FLOAT16, DOUBLE


@dataclasses.dataclass(frozen=True)
class Dft:
    """One DFT along a known axis of a static shape [..., m, ..., channels]."""

    shape: tuple[int, ...]
    axis: int
    length: int  # dft_length, the default for the axis resolved
    inverse: bool
    onesided: bool

    @property
    def bins(self) -> int:
        return self.length // 2 + 1 if self.onesided and not self.inverse else self.length

    @property
    def outputs(self) -> int:
        return 1 if self.inverse and self.onesided else 2

    @property
    def output_shape(self) -> tuple[int, ...]:
        shape = list(self.shape)
        shape[self.axis], shape[-1] = self.bins, self.outputs
        return tuple(shape)


@dataclasses.dataclass(frozen=True)
class Frames:
    """One STFT frame layout: frame_length and the number of frames."""

    length: int
    count: int


class _Nodes:
    """The nodes and constants replacing one node, named after it."""

    def __init__(self, stem: str):
        self.stem, self.nodes, self.constants = stem, [], {}

    def add(self, op: str, inputs: list[str], **attributes) -> str:
        from onnx import helper

        name = f"{self.stem}_{len(self.nodes)}_{op.lower()}"
        self.nodes.append(helper.make_node(op, inputs, [name], **attributes))
        return name

    def constant(self, array: np.ndarray) -> str:
        name = f"{self.stem}_constant{len(self.constants)}"
        self.constants[name] = np.asarray(array)
        return name

    def finish(self, node: "onnx.NodeProto", value: str):
        from onnx import helper

        self.nodes.append(helper.make_node("Identity", [value], [node.output[0]], name=node.name))
        return self.nodes, self.constants


# ---- what can be rewritten ------------------------------------------------------------------------

def spectral_refusal(node: "onnx.NodeProto", graph: "onnx.GraphProto", opset: int) -> str | None:
    """Why spectral leaves the DFT, STFT or MelWeightMatrix `node` of `graph` as it is; None where it rewrites it."""
    plan = _plan(node, _Facts.of(graph), opset)
    return plan if isinstance(plan, str) else None


@dataclasses.dataclass(frozen=True)
class _Facts:
    values: dict  # name -> TensorProto of the initializers
    dims: dict  # name -> static shape (inputs, inferred values, declared outputs, initializers)
    types: dict  # name -> ONNX element type

    @staticmethod
    def of(graph: "onnx.GraphProto") -> "_Facts":
        values = {t.name: t for t in graph.initializer}
        declared = static_shapes(_outputs_as_inputs(graph))
        dims = {**declared, **static_dims(graph)}
        return _Facts(values, dims, element_types(graph))

    def scalar(self, name: str) -> int | None:
        from onnx import numpy_helper

        return int(numpy_helper.to_array(self.values[name]).reshape(())) if name in self.values else None


def _outputs_as_inputs(graph: "onnx.GraphProto") -> "onnx.GraphProto":
    """A graph whose inputs are `graph`'s outputs, for static_shapes to read their declared shapes."""
    import onnx

    return onnx.helper.make_graph([], "outputs", list(graph.output), [])


def _plan(node, facts: _Facts, opset: int):
    """A reason string, or what to build: ("dft", [(axis or None, Dft)]), ("stft", [(Frames, Dft)]),
    ("mel", None)."""
    if node.op_type == "MelWeightMatrix":
        dynamic = [name for name in node.input if name and name not in facts.values]
        if dynamic:
            return ", ".join(dynamic) + (" must be constant" if len(dynamic) == 1 else " must be constants")
        return "mel", None
    shape = facts.dims.get(node.input[0])
    if shape is None:
        return "input shape not static; pin the input shapes"
    if facts.types.get(node.input[0]) not in _FLOAT_TYPES:
        return "input type other than float16, float or double"
    if len(shape) < 2 or shape[-1] not in (1, 2):
        return "last dim not 1 (real) or 2 (complex)"
    plans = _dft_plans(node, shape, facts, opset) if node.op_type == "DFT" else _stft_plans(node, shape, facts)
    if isinstance(plans, str):
        return plans
    if any(d.length < 1 for _, d in plans):
        return "DFT length below 1"
    if any(d.shape[d.axis] * d.shape[-1] * d.bins * d.outputs > MAX_ELEMENTS for _, d in plans):
        return f"DFT matrix over the {MAX_ELEMENTS} elements kiln builds"
    return node.op_type.lower(), plans


def _input(node, index: int) -> str:
    return node.input[index] if index < len(node.input) else ""


def _declared(node, facts: _Facts, candidates: list) -> list | str:
    """The candidates (_, Dft) whose output shape is the node's declared one; all where it is not declared and they
    agree."""
    declared = facts.dims.get(node.output[0])
    if declared is not None:
        kept = [c for c in candidates if c[1].output_shape == tuple(declared)]
        return kept or "no value of the run-time parameters gives the declared output shape"
    if len({c[1].output_shape for c in candidates}) > 1:
        return "output shape depends on run-time parameters; declare the output shape or make them constants"
    return candidates


def _dft_plans(node, shape: tuple[int, ...], facts: _Facts, opset: int):
    attributes = node_attributes(node)
    inverse, onesided = bool(attributes.get("inverse", 0)), bool(attributes.get("onesided", 0))
    length_name = _input(node, 1)
    if length_name and length_name not in facts.values:
        return "dft_length must be constant"
    length = facts.scalar(length_name) if length_name else None
    rank = len(shape)

    def dft(axis: int) -> Dft:
        default = 2 * (shape[axis] - 1) if inverse and onesided else shape[axis]
        return Dft(shape, axis, default if length is None else length, inverse, onesided)

    axis_name = _input(node, 2) if opset >= 20 else ""
    if axis_name and axis_name not in facts.values:
        return _declared(node, facts, [(axis, dft(axis)) for axis in range(rank - 1)])
    axis = facts.scalar(axis_name) if axis_name else attributes.get("axis", -2 if opset >= 20 else 1)
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank - 1:
        return f"axis {axis} outside [0, {rank - 2}]"
    return [(None, dft(axis))]


def _stft_plans(node, shape: tuple[int, ...], facts: _Facts):
    signal = shape[-2]
    onesided = bool(node_attributes(node).get("onesided", 1))
    step_name, window_name = _input(node, 1), _input(node, 2)
    window = facts.dims.get(window_name) if window_name else None
    if window_name and (window is None or len(window) != 1):
        return "window shape not static"
    step = facts.scalar(step_name)
    if step is not None and step < 1:
        return f"frame_step {step} below 1"
    lengths = _frame_lengths(node, facts, signal, window, onesided)
    if isinstance(lengths, str):
        return lengths
    declared = facts.dims.get(node.output[0])
    if step is None and (declared is None or len(declared) != len(shape) + 1):
        return "frame_step must be constant (or the output shape declared)"
    candidates = []
    for length in lengths:
        count = 1 + (signal - length) // step if step is not None else declared[-3]
        frames = (*shape[:-2], count, length, shape[-1])
        if count >= 1:
            candidates.append((Frames(length, count), Dft(frames, len(frames) - 2, length, False, onesided)))
    return _declared(node, facts, candidates) if candidates else "frame_length over the signal length"


def _frame_lengths(node, facts: _Facts, signal: int, window, onesided: bool) -> list[int] | str:
    length_name = _input(node, 3)
    if length_name in facts.values:
        length = facts.scalar(length_name)
        return [length] if window is None or window[0] == length else f"window of {window[0]}, frame_length {length}"
    if window is not None:
        return [window[0]]
    if not length_name:
        return [signal]
    declared = facts.dims.get(node.output[0])
    if declared is None:
        return "frame_length must be constant (or the output shape declared)"
    bins = declared[-2]
    lengths = [2 * bins - 2, 2 * bins - 1] if onesided else [bins]
    return [n for n in lengths if 1 <= n <= signal]


# ---- the rewrite ----------------------------------------------------------------------------------

def spectral(graph: Graph) -> Graph:
    if not any(node.op_type in SPECTRAL_OPS for node in graph.body.graph.node):
        return graph
    facts, opset = _Facts.of(graph.body.graph), opset_of(graph.body)

    def replace(node):
        if not is_onnx_op(node, *SPECTRAL_OPS):
            return None
        plan = _plan(node, facts, opset)
        if isinstance(plan, str):
            return None
        out = _Nodes(node.name or node.output[0])
        kind, candidates = plan
        if kind == "mel":
            return out.finish(node, out.constant(_mel(node, facts, opset)))
        dtype = _FLOAT_TYPES[facts.types[node.input[0]]]
        build = _dft_candidate if kind == "dft" else _stft_candidate
        choices = [build(out, node, facts, candidate, dtype) for candidate in candidates]
        return out.finish(node, _select(out, choices, dtype))

    return rewrite_nodes(graph, replace)


def _mel(node, facts: _Facts, opset: int) -> np.ndarray:
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    feed = {name: numpy_helper.to_array(facts.values[name]) for name in node.input if name}
    return ReferenceEvaluator(node, opsets={"": opset}).run(None, feed)[0]


def _dft_candidate(out: _Nodes, node, facts: _Facts, candidate, dtype) -> tuple[str | None, str]:
    """(the condition under which it holds, or None where it always does; the DFT's output)."""
    axis, dft = candidate
    value = _dft(out, node.input[0], dft, dtype)
    if axis is None:
        return None, value
    name = node.input[2]
    integer = np.int32 if facts.types.get(name) == 6 else np.int64  # INT32
    rank = np.array(len(dft.shape), integer)
    negative = out.add("Less", [name, out.constant(np.array(0, integer))])
    normalized = out.add("Where", [negative, out.add("Add", [name, out.constant(rank)]), name])
    return out.add("Equal", [normalized, out.constant(np.array(axis, integer))]), value


def _stft_candidate(out: _Nodes, node, facts: _Facts, candidate, dtype) -> tuple[str | None, str]:
    frames, dft = candidate
    signal_axis, signal = len(dft.shape) - 3, facts.dims[node.input[0]][-2]
    step_name, window_name, length_name = node.input[1], _input(node, 2), _input(node, 3)
    conditions = []
    if step_name in facts.values:
        offsets = out.constant(_offsets(frames, facts.scalar(step_name)))
    else:
        step = out.add("Cast", [step_name], to=7)  # INT64
        offsets, in_range = _run_time_offsets(out, frames, step, signal)
        conditions.append(in_range)
    framed = out.add("Gather", [node.input[0], offsets], axis=signal_axis)
    if window_name:
        shaped = out.add("Reshape", [window_name, out.constant(np.array([frames.length, 1], np.int64))])
        framed = out.add("Mul", [framed, shaped])
    if length_name and length_name not in facts.values:
        length = out.add("Cast", [length_name], to=7)
        conditions.append(out.add("Equal", [length, out.constant(np.array(frames.length, np.int64))]))
    value = _dft(out, framed, dft, dtype)
    condition = conditions[0] if conditions else None
    for other in conditions[1:]:
        condition = out.add("And", [condition, other])
    return condition, value


def _offsets(frames: Frames, step: int) -> np.ndarray:
    return np.arange(frames.count)[:, None] * step + np.arange(frames.length)[None, :]


def _run_time_offsets(out: _Nodes, frames: Frames, step: str, signal: int) -> tuple[str, str]:
    """The frames' offsets [count, length] for an int64 frame_step computed at run time, kept inside the signal, and
    whether that step gives frames.count frames: (count - 1) * step <= signal - length < count * step."""
    starts = out.add("Mul", [out.constant(np.arange(frames.count, dtype=np.int64)[:, None]), step])
    offsets = out.add("Add", [starts, out.constant(np.arange(frames.length, dtype=np.int64)[None, :])])
    inside = out.add("Min", [out.add("Max", [offsets, out.constant(np.array(0, np.int64))]),
                             out.constant(np.array(signal - 1, np.int64))])
    room = signal - frames.length
    last = out.add("Mul", [step, out.constant(np.array(frames.count - 1, np.int64))])
    beyond = out.add("Mul", [step, out.constant(np.array(frames.count, np.int64))])
    fits = out.add("Less", [last, out.constant(np.array(room + 1, np.int64))])
    ends = out.add("Less", [out.constant(np.array(room, np.int64)), beyond])
    return inside, out.add("And", [fits, ends])


def _select(out: _Nodes, choices: list[tuple[str | None, str]], dtype) -> str:
    """The value of the first choice whose condition holds (None: always); NaN everywhere where none does."""
    if choices[0][0] is None:
        return choices[0][1]
    value = out.constant(np.array(np.nan, dtype))
    for condition, choice in reversed(choices):
        value = out.add("Where", [condition, choice, value])
    return value


def _dft(out: _Nodes, x: str, dft: Dft, dtype) -> str:
    """The nodes computing `dft` of x: the axis moved next to the channels, both flattened, one MatMul, and back."""
    rank = len(dft.shape)
    order = [d for d in range(rank - 1) if d != dft.axis] + [dft.axis, rank - 1]
    moved = [dft.shape[d] for d in order]
    if order != list(range(rank)):
        x = out.add("Transpose", [x], perm=order)
    rows = out.add("Reshape", [x, out.constant(np.array(moved[:-2] + [moved[-2] * moved[-1]], np.int64))])
    product = out.add("MatMul", [rows, out.constant(dft_matrix(dft).astype(dtype))])
    y = out.add("Reshape", [product, out.constant(np.array(moved[:-2] + [dft.bins, dft.outputs], np.int64))])
    if order != list(range(rank)):
        y = out.add("Transpose", [y], perm=[int(d) for d in np.argsort(order)])
    return y


# ---- the matrices ---------------------------------------------------------------------------------

def dft_matrix(dft: Dft) -> np.ndarray:
    """[m * channels, bins * outputs] float64: row j * channels + c weighs input sample j's part c (0 real,
    1 imaginary), column k * outputs + o output bin k's part o."""
    m, channels, length = dft.shape[dft.axis], dft.shape[-1], dft.length
    hermitian = dft.inverse and dft.onesided
    used = min(m, length // 2 + 1 if hermitian else length)  # samples past these: truncated (or ignored by irfft)
    cos, sin = _unit_circle(np.arange(used)[:, None] * np.arange(dft.bins)[None, :] % length, length)
    sign = 1.0 if dft.inverse else -1.0
    # (re + i im) * (cos + i sign sin)
    parts = {(0, 0): cos, (1, 0): -sign * sin, (0, 1): sign * sin, (1, 1): cos}
    matrix = np.zeros((m, channels, dft.bins, dft.outputs))
    for (c, o), part in parts.items():
        if c < channels and o < dft.outputs:
            matrix[:used, c, :, o] = part
    if hermitian:  # the bins numpy's irfft mirrors count twice; the zero and Nyquist bins once
        counts = np.full(m, 2.0)
        counts[0] = 1.0
        if length % 2 == 0 and used > length // 2:
            counts[length // 2] = 1.0
        matrix *= counts[:, None, None, None]
    if dft.inverse:
        matrix /= length
    return matrix.reshape(m * channels, dft.bins * dft.outputs)


def _unit_circle(steps: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of 2 pi steps / length, exact at quarter turns (sin(pi) is 0, not 1.2e-16)."""
    angle = 2 * np.pi * steps / length
    cos, sin = np.cos(angle), np.sin(angle)
    quarter = (4 * steps) % length == 0
    turns = (4 * steps // length) % 4
    cos[quarter] = np.array([1.0, 0.0, -1.0, 0.0])[turns[quarter]]
    sin[quarter] = np.array([0.0, 1.0, 0.0, -1.0])[turns[quarter]]
    return cos, sin
