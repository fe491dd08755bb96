"""Arithmetic TVM's converters compute otherwise than ONNX, rewritten (rewrite/arithmetic.py, rewrite/accumulate.py)
or refused (ops.py), each against ONNX Runtime or the refusal's message (issue #19)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

import kiln
from kiln.compiler.backends.tvm.ops import unsupported_ops
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs


def _run(model: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    artifact = compile_to(model, tmp_path / "o.kiln", "host", shapes={k: v.shape for k, v in feed.items()},
                          verify=False)
    return list(kiln.load(artifact).run(feed).values())[0], onnxruntime_outputs(model, feed)[0]


@pytest.mark.parametrize("op", ["Mish", "Softplus"])
def test_softplus_of_large_negative_inputs_keeps_its_digits(op, tmp_path: Path):
    """log(1 + exp(x)) loses exp(x)'s digits in 1 + exp(x): -10 was off by 0.13%; and TVM's tanh of Mish's tiny
    softplus lost them too (-15 was off by 2.6%, -30 gave 0)."""
    b = GraphBuilder(op, opset=18)
    b.output(b.node(op, [b.input("x", [8])], "out"), [8])
    x = np.array([-30, -15, -9.98, -1, 0, 1, 30, 100], np.float32)
    got, _ = _run(b.save(tmp_path / "m.onnx"), {"x": x}, tmp_path)
    softplus = np.log1p(np.exp(x.astype(np.float64)))
    np.testing.assert_allclose(got, x * np.tanh(softplus) if op == "Mish" else softplus, rtol=5e-4)


def test_tanh_of_small_values(tmp_path: Path):
    b = GraphBuilder("tanh", opset=18)
    b.output(b.node("Tanh", [b.input("x", [6])], "out"), [6])
    x = np.array([1e-9, -1e-7, 1e-5, 3e-3, 0.5, -4], np.float32)
    got, _ = _run(b.save(tmp_path / "m.onnx"), {"x": x}, tmp_path)
    np.testing.assert_allclose(got, np.tanh(x.astype(np.float64)), rtol=1e-6)


def test_float_mod_by_infinity_is_pythons(tmp_path: Path):
    b = GraphBuilder("mod", opset=28)  # ONNX Runtime takes float Mod with fmod 0 from opset 28
    b.output(b.node("Mod", [b.input("x", [8]), b.input("y", [8])], "out", fmod=0), [8])
    x = np.array([-3, 3, -1, 1, 5.5, -5.5, np.inf, 1], np.float32)
    y = np.array([np.inf, np.inf, -np.inf, -np.inf, 2, 2, 2, 0], np.float32)
    got, expected = _run(b.save(tmp_path / "m.onnx"), {"x": x, "y": y}, tmp_path)
    np.testing.assert_array_equal(got, expected)
    assert list(got[:6]) == [np.inf, 3, -1, -np.inf, 1.5, 0.5]


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_shift_by_the_bit_width_or_a_negative_count_is_zero(direction, tmp_path: Path):
    b = GraphBuilder("shift", opset=11)
    b.output(b.node("BitShift", [b.input("x", [5], TensorProto.UINT32), b.input("s", [5], TensorProto.UINT32)],
                    "out", direction=direction), [5], TensorProto.UINT32)
    x = np.array([16, 16, 16, 16, 16], np.uint32)
    s = np.array([0, 1, 31, 32, 100], np.uint32)
    got, expected = _run(b.save(tmp_path / "m.onnx"), {"x": x, "s": s}, tmp_path)
    np.testing.assert_array_equal(got, expected)
    assert list(got[3:]) == [0, 0]


def test_signed_right_shift_beyond_the_bit_width_gives_the_sign(tmp_path: Path):
    b = GraphBuilder("shift", opset=28)  # signed BitShift from opset 28
    b.output(b.node("BitShift", [b.input("x", [4], TensorProto.INT32), b.input("s", [4], TensorProto.INT32)],
                    "out", direction="RIGHT"), [4], TensorProto.INT32)
    feed = {"x": np.array([-8, 4, -1, -8], np.int32), "s": np.array([32, 33, -1, 2], np.int32)}
    got, expected = _run(b.save(tmp_path / "m.onnx"), feed, tmp_path)
    assert list(got) == list(expected) == [-1, 0, -1, -2]


def test_float16_matmul_sums_in_float32(tmp_path: Path):
    """A float16 sum of 256 terms rounded at every step is off by several float16 steps; ONNX Runtime rounds once."""
    b = GraphBuilder("matmul", opset=18)
    a, w = b.input("a", [4, 256], TensorProto.FLOAT16), b.input("w", [256, 8], TensorProto.FLOAT16)
    b.output(b.node("MatMul", [a, w], "out"), [4, 8], TensorProto.FLOAT16)
    rng = np.random.default_rng(0)
    feed = {"a": rng.uniform(0, 1, (4, 256)).astype(np.float16), "w": rng.uniform(0, 1, (256, 8)).astype(np.float16)}
    got, expected = _run(b.save(tmp_path / "m.onnx"), feed, tmp_path)
    exact = (feed["a"].astype(np.float64) @ feed["w"].astype(np.float64)).astype(np.float16)
    np.testing.assert_array_equal(got, exact)
    np.testing.assert_array_equal(expected, exact)


def _refusals(op: str, inputs: list[tuple[str, list[int], int]], **attributes) -> dict[str, list[str]]:
    b = GraphBuilder(op, opset=22)
    b.output(b.node(op, [b.input(name, shape, dtype) for name, shape, dtype in inputs], "out", name="n", **attributes))
    return unsupported_ops(b.model())


def test_attribute_and_input_configurations_tvm_gets_wrong_are_refused():
    f, boolean = TensorProto.FLOAT, TensorProto.BOOL
    x, w = ("x", [1, 1, 3, 3], f), ("w", [1, 2, 3, 3], f)
    assert _refusals("ConvTranspose", [x, w], output_shape=[10, 8], strides=[3, 2]) == {
        "ConvTranspose (output_shape [10, 8] (the converter ignores it))": ["n"]}
    assert _refusals("ConvTranspose", [x, w], strides=[3, 2]) == {}
    assert _refusals("ConvTranspose", [x, w], output_shape=[10, 8], output_padding=[1, 1], strides=[3, 2]) == {}
    rois, indices = ("rois", [1, 4], f), ("i", [1], TensorProto.INT64)
    assert _refusals("RoiAlign", [x, rois, indices], mode="max") == {
        "RoiAlign (mode b'max' (the converter computes it otherwise than ONNX))": ["n"]}
    assert _refusals("RoiAlign", [x, rois, indices]) == {}
    assert _refusals("Dropout", [x, ("r", [], f), ("t", [], boolean)]) == {
        "Dropout (training_mode computed at run time (TVM computes inference mode only))": ["n"]}
    assert _refusals("Dropout", [x]) == {}


def test_constant_training_mode_is_read():
    b = GraphBuilder("dropout", opset=22)
    x = b.input("x", [2, 3])
    for training in (False, True):
        b.output(b.node("Dropout", [x, "", b.const(np.array(training))], f"out{training}", name=f"d{training}"))
    assert unsupported_ops(b.model()) == {"Dropout (training_mode true (TVM computes inference mode only))": ["dTrue"]}
