"""LSTM, GRU and RNN unrolled over time (passes.recurrent): each form rewritten and run by ONNX Runtime against ONNX
Runtime running the node, with constant weights and weights given at run time, compiled models against ONNX Runtime,
the node suite's recurrent cases as the suite gives them (weights as graph inputs) against its expected outputs, and
the forms refused with exit 4 and the reason.

ONNX Runtime does not run layout 1 (batch first): those are checked against the same weights in layout 0."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kiln.cli import cli
from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes.recurrent import RECURRENT_OPS, unroll_recurrent
from kiln.testing.conformance import Status, load_cases, run_case
from kiln.errors import UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness, compile_to, onnxruntime_outputs

STEPS, BATCH, INPUT, HIDDEN = 4, 2, 3, 5
WEIGHTS = ("W", "R", "B", "P")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
OUTPUTS = {"LSTM": ("y", "y_h", "y_c"), "GRU": ("y", "y_h"), "RNN": ("y", "y_h")}


def _model(op: str, *, direction: str = "forward", layout: int = 0, bias: bool = True, initial: bool = True,
           peepholes: bool = False, lengths: list[int] | None = None, runtime: tuple[str, ...] = (),
           outputs: tuple[str, ...] | None = None, steps: int | str = STEPS, seed: int = 0,
           **attributes) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A graph of one `op` node named "rec" and a feed; the inputs named in `runtime` are graph inputs, not
    initializers. The same seed draws the same numbers whatever the layout."""
    rng = np.random.default_rng(seed)
    directions, rows = 2 if direction == "bidirectional" else 1, GATES[op] * HIDDEN
    b, feed, names = GraphBuilder(op.lower(), opset=17), {}, []

    def add(name: str, array: np.ndarray | None, batch_axis: int | None = None) -> None:
        if array is None:
            names.append("")
            return
        if layout and batch_axis is not None:
            array = np.swapaxes(array, 0, batch_axis)
        shape = list(array.shape)
        if name == "x" and isinstance(steps, str):
            shape[layout] = steps
        if name in runtime or batch_axis is not None:
            feed[name] = array
            names.append(b.input(name, shape, helper.np_dtype_to_tensor_dtype(array.dtype)))
        else:
            names.append(b.const(array, name))

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    add("x", normal(STEPS, BATCH, INPUT), 1)
    add("W", normal(directions, rows, INPUT))
    add("R", normal(directions, rows, HIDDEN))
    add("B", normal(directions, 2 * rows) if bias else None)
    add("sequence_lens", None if lengths is None else np.array(lengths, np.int32))
    for state in ("initial_h", "initial_c")[:2 if op == "LSTM" else 1]:
        add(state, normal(directions, BATCH, HIDDEN) if initial else None, 1)
    if op == "LSTM":
        add("P", normal(directions, 3 * HIDDEN) if peepholes else None)
    wanted = [name if name in (outputs or OUTPUTS[op]) else "" for name in OUTPUTS[op]]
    b.nodes.append(helper.make_node(op, names, wanted, name="rec", hidden_size=HIDDEN, direction=direction,
                                    **({"layout": layout} if layout else {}), **attributes))
    for name in filter(None, wanted):
        b.output(name)
    return b.model(infer_shapes=True), feed


def _expected(op: str, feed: dict[str, np.ndarray], **options) -> list[np.ndarray]:
    """What ONNX Runtime computes for the node; for layout 1, by the same weights in layout 0."""
    model, _ = _model(op, **{**options, "layout": 0})
    if not options.get("layout"):
        return onnxruntime_outputs(model, feed)
    time_first = {name: np.swapaxes(array, 0, 1) if name in ("x", "initial_h", "initial_c") else array
                  for name, array in feed.items()}
    return [np.moveaxis(array, -2, 0) for array in onnxruntime_outputs(model, time_first)]


_FORMS = [
    *[(op, {"direction": direction, "layout": layout, "bias": bias, "initial": bias})
      for op in GATES for direction in ("forward", "reverse", "bidirectional") for layout in (0, 1)
      for bias in (True, False)],
    ("LSTM", {"peepholes": True, "lengths": [STEPS] * BATCH}),
    ("LSTM", {"peepholes": True, "initial": False, "direction": "bidirectional", "outputs": ("y_c",)}),
    ("LSTM", {"peepholes": True, "clip": 0.5}),
    ("LSTM", {"input_forget": 1, "peepholes": True, "layout": 1}),
    ("LSTM", {"activations": ["HardSigmoid", "LeakyRelu", "Softsign"], "activation_alpha": [0.3, 0.2],
              "activation_beta": [0.4]}),
    ("LSTM", {"activations": ["sigmoid", "elu", "softsign"] * 2, "direction": "bidirectional", "outputs": ("y",)}),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional", "clip": 0.3}),
    ("GRU", {"linear_before_reset": 1, "initial": False, "outputs": ("y_h",)}),
    ("GRU", {"activations": ["Sigmoid", "Relu"], "layout": 1}),
    ("RNN", {"activations": ["Relu"], "direction": "reverse", "clip": 0.3}),
    ("RNN", {"activations": ["Tanh", "Tanh"]}),  # the schema's default written out: the first is used
    ("LSTM", {"peepholes": True, "direction": "bidirectional", "layout": 1, "runtime": WEIGHTS}),
    ("LSTM", {"peepholes": True, "input_forget": 1, "clip": 0.5, "runtime": ("R", "P")}),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional", "runtime": WEIGHTS}),
    ("GRU", {"direction": "reverse", "layout": 1, "runtime": ("W", "B")}),
    ("RNN", {"direction": "bidirectional", "bias": False, "runtime": WEIGHTS}),
]


@pytest.mark.parametrize("op, options", _FORMS, ids=[f"{op}-{i}" for i, (op, _) in enumerate(_FORMS)])
def test_unrolled_graph_matches_the_node(tmp_path: Path, op: str, options: dict):
    model, feed = _model(op, **options)
    onnx.save(model, str(tmp_path / "model.onnx"))
    rewritten = unroll_recurrent(load(tmp_path / "model.onnx")).body
    onnx.checker.check_model(rewritten)
    assert not {node.op_type for node in rewritten.graph.node} & RECURRENT_OPS
    assert [node.op_type for node in rewritten.graph.node if "x" in node.input] == ["MatMul"]  # X Wᵀ once
    for actual, expected in zip(onnxruntime_outputs(rewritten, feed), _expected(op, feed, **options), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op, options", [
    ("LSTM", {"peepholes": True, "lengths": [STEPS] * BATCH}),  # every optional input
    ("LSTM", {"peepholes": True, "clip": 0.5, "initial": False}),
    ("GRU", {"linear_before_reset": 0}),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional"}),
    ("RNN", {"activations": ["Relu"], "direction": "reverse"}),
    ("GRU", {"runtime": ("W", "B")}),
    ("LSTM", {"peepholes": True, "direction": "bidirectional", "runtime": WEIGHTS}),
])
def test_compiled_matches_onnxruntime(tmp_path: Path, op: str, options: dict):
    model, feed = _model(op, **options)
    onnx.save(model, str(tmp_path / "model.onnx"))
    check_correctness(tmp_path / "model.onnx", feed, tmp_path, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("runtime", [(), WEIGHTS], ids=["constant", "runtime"])
def test_weights_are_cut_once(tmp_path: Path, runtime: tuple[str, ...]):
    """Constant weights are cut into each direction's pieces at compile time: the steps' MatMuls read initializers.
    Run-time ones are cut in the graph, once, not at every step: Wᵀ, then Rᵀ and P for each direction."""
    model, _ = _model("LSTM", direction="bidirectional", peepholes=True, runtime=runtime)
    onnx.save(model, str(tmp_path / "model.onnx"))
    rewritten = unroll_recurrent(load(tmp_path / "model.onnx")).body
    cutting = Counter(node.op_type for node in rewritten.graph.node if node.op_type in ("Transpose", "Gather"))
    assert cutting == (Counter(Transpose=3, Gather=4) if runtime else Counter())
    constants = {t.name for t in rewritten.graph.initializer}
    weights = {node.input[1] for node in rewritten.graph.node if node.op_type == "MatMul"}
    assert weights.isdisjoint(constants) if runtime else weights <= constants


def test_compiled_bidirectional_batch_first_lstm(tmp_path: Path):
    options = {"direction": "bidirectional", "layout": 1, "peepholes": True}
    model, feed = _model("LSTM", **options)
    onnx.save(model, str(tmp_path / "model.onnx"))
    import kiln

    got = kiln.load(compile_to(tmp_path / "model.onnx", tmp_path / "out.kiln")).run(feed)
    for actual, expected in zip(got.values(), _expected("LSTM", feed, **options), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


# its sequence_lens is a graph input (masked: tests/test_training_e8m0_topk_lengths.py); its unrolled LSTM takes LLVM
# minutes to compile, which the conformance benchmark spends
_LENGTHS_AT_RUN_TIME = "test_lstm_with_peepholes"


def _suite_cases() -> list:
    return [case for case in load_cases()
            if case.op in RECURRENT_OPS and not case.expanded and case.name != _LENGTHS_AT_RUN_TIME]


@pytest.mark.parametrize("case", _suite_cases(), ids=lambda case: case.name)
def test_node_suite_case(tmp_path: Path, case):
    """As the suite gives it (W, R, B as graph inputs), against its expected outputs as kiln's conformance run
    compares; layout 1 too, which ONNX Runtime does not run."""
    outcome = run_case(case, "kiln", tmp_path)
    assert outcome.status is Status.PASS, outcome


@pytest.mark.parametrize("op, options, reason", [
    ("RNN", {"activations": ["Affine"], "activation_alpha": [2.0], "activation_beta": [1.0]}, "activation Affine"),
    ("LSTM", {"activations": ["Sigmoid", "ThresholdedRelu", "Tanh"]}, "ThresholdedRelu activation without its alpha"),
    ("GRU", {"direction": "bidirectional", "activations": ["Sigmoid", "Tanh"]}, "2 activations for 2 direction(s)"),
])
def test_what_is_not_unrolled_is_refused(cli_runner, tmp_path: Path, op: str, options: dict, reason: str):
    model, feed = _model(op, **options)
    onnx.save(model, str(tmp_path / "model.onnx"))
    args = [arg for name, array in feed.items() for arg in ("--input-shape", f"{name}:{_dims(array.shape)}")]
    result = cli_runner.invoke(cli, ["compile", str(tmp_path / "model.onnx"), "-o", str(tmp_path / "o.kiln"), *args])
    assert result.exit_code == UnsupportedOpError.exit_code, result.output
    assert f"{op} ({reason}" in result.stderr and "×1 (nodes rec)" in result.stderr, result.stderr
    inspected = json.loads(cli_runner.invoke(cli, ["inspect", str(tmp_path / "model.onnx"), "--json"]).stdout)
    assert [label for label in inspected["unsupported"] if label.startswith(f"{op} ({reason}")]


def test_inspect_lists_an_unrollable_node_once_its_sequence_length_is_pinned(cli_runner, tmp_path: Path):
    model, _ = _model("LSTM", steps="steps", peepholes=True)
    onnx.save(model, str(tmp_path / "model.onnx"))
    inspect = ["inspect", str(tmp_path / "model.onnx"), "--json"]
    inspected = json.loads(cli_runner.invoke(cli, inspect).stdout)
    assert inspected["unsupported"] == {"LSTM (sequence length not static; pin the input shapes)": ["rec"]}
    pinned = json.loads(cli_runner.invoke(cli, [*inspect, "--input-shape", f"x:{_dims((STEPS, BATCH, INPUT))}"]).stdout)
    assert pinned["unsupported"] == {}


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def test_graph_without_recurrent_nodes_is_left_alone(tmp_path: Path):
    b = GraphBuilder("relu")
    b.output(b.node("Relu", [b.input("x", [2, 3])], "y"), [2, 3])
    graph = load(b.save(tmp_path / "relu.onnx"))
    assert unroll_recurrent(graph) is graph


def test_float16_weights_give_float16_constants(tmp_path: Path):
    model, _ = _model("LSTM", peepholes=True, clip=1.0, input_forget=1)
    for tensor in model.graph.initializer:
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float16),
                                                     tensor.name))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del model.graph.value_info[:]
    onnx.save(model, str(tmp_path / "half.onnx"))
    rewritten = unroll_recurrent(load(tmp_path / "half.onnx")).body
    onnx.shape_inference.infer_shapes(rewritten, strict_mode=True)  # raises on an op of mixed types
    assert {t.data_type for t in rewritten.graph.initializer} == {TensorProto.FLOAT16, TensorProto.INT64}


def test_lstm_of_constants_is_unrolled_not_folded(tmp_path: Path):
    """An LSTM whose every input is a constant, with Relu for f and clip: constant folding evaluated it with
    onnx.reference, which ignores both (0.255 of the largest output off, caught only by the compile-time check)."""
    rng = np.random.default_rng(1)
    b = GraphBuilder("lstm_constants", opset=17)
    x, w, r = (b.const(rng.standard_normal(shape).astype(np.float32)) for shape in ((3, 1, 4), (1, 16, 4), (1, 16, 4)))
    y, last = b.fresh("y"), b.fresh("last")
    b.nodes.append(helper.make_node("LSTM", [x, w, r], [y, last], hidden_size=4, clip=0.5,
                                    activations=["Relu", "Tanh", "Tanh"]))
    b.output(b.node("Add", [last, b.input("bias", [1, 1, 4])], "out"), [1, 1, 4])
    check_correctness(b.save(tmp_path / "lstm.onnx"), {"bias": np.zeros((1, 1, 4), np.float32)}, tmp_path)
