"""NaN in, NaN out where ONNX Runtime gives NaN (issue #19): TVM's float max and min drop a NaN operand, so Relu,
Max, Min, Clip and the max/min reductions are rewritten to keep it (schedules/nan.py); MaxPool, which skips NaN in
ONNX Runtime too, is left as it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.paths import DIGITS_CNN
from kiln.testing.reference import compile_to, onnxruntime_outputs

X = np.array([[np.nan, 1, -1, np.nan], [2, np.nan, -np.inf, 0]], np.float32)
Y = np.array([[0, np.nan, 3, np.nan], [1, 1, 1, 1]], np.float32)
NAN = float("nan")


def _same_as_onnxruntime(model: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> list[np.ndarray]:
    artifact = compile_to(model, tmp_path / "o.kiln", "host", shapes={k: v.shape for k, v in feed.items()},
                          verify=False)
    got = list(kiln.load(artifact).run(feed).values())
    for actual, expected in zip(got, onnxruntime_outputs(model, feed)):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    return got


@pytest.mark.parametrize("op, inputs, attributes", [
    ("Relu", 1, {}), ("Max", 2, {}), ("Min", 2, {}), ("ReduceMax", 1, {"keepdims": 0}),
    ("ReduceMin", 1, {"keepdims": 0}), ("Clip", 1, {}), ("Softmax", 1, {})])
def test_nan_propagates_as_in_onnxruntime(op, inputs, attributes, tmp_path: Path):
    b = GraphBuilder(op, opset=18)
    names = [b.input("x", [2, 4])] + ([b.input("y", [2, 4])] if inputs == 2 else [])
    if op == "Clip":
        names += [b.const(np.array(-0.5, np.float32)), b.const(np.array(0.5, np.float32))]
    b.output(b.node(op, names, "out", **attributes))
    model = b.save(tmp_path / f"{op}.onnx", infer_shapes=True)
    got = _same_as_onnxruntime(model, {"x": X, **({"y": Y} if inputs == 2 else {})}, tmp_path)
    assert np.isnan(got[0]).any()


def test_reduce_max_of_minus_infinities_is_minus_infinity(tmp_path: Path):
    """A fully masked attention row: -inf, not the lowest finite float TVM's reduction starts from."""
    b = GraphBuilder("reduce", opset=18)
    b.output(b.node("ReduceMax", [b.input("x", [2, 3]), b.const(np.array([1], np.int64))], "out", keepdims=0))
    model = b.save(tmp_path / "reduce.onnx", infer_shapes=True)
    x = np.array([[-np.inf] * 3, [1, -np.inf, 2]], np.float32)
    assert list(_same_as_onnxruntime(model, {"x": x}, tmp_path)[0]) == [-np.inf, 2]


def test_max_pool_skips_nan_as_onnxruntime_does(tmp_path: Path):
    b = GraphBuilder("pool", opset=18)
    b.output(b.node("MaxPool", [b.input("x", [1, 1, 4, 4])], "out", kernel_shape=[2, 2], strides=[2, 2]))
    model = b.save(tmp_path / "pool.onnx", infer_shapes=True)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 0] = x[0, 0, 2, 3] = NAN
    assert not np.isnan(_same_as_onnxruntime(model, {"x": x}, tmp_path)[0]).any()


def test_cnn_logits_of_nan_input_are_nan(tmp_path: Path):
    x = np.full((1, 1, 8, 8), NAN, np.float32)
    assert np.isnan(_same_as_onnxruntime(DIGITS_CNN, {"input": x}, tmp_path)[0]).all()


def test_conv_relu_epilogue_still_vectorizes():
    """The NaN-keeping relu (a < 0 ? 0 : a) stays one vector max per register in the conv's write-back."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.backends.tvm.schedules.pipeline import cpu_pipeline
    from kiln.testing.models import small_cnn

    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    executable = tvm.compile(from_onnx(small_cnn(), keep_params_in_input=False), target=target,
                             relax_pipeline=cpu_pipeline(target))
    assembly = executable.mod.imports[0].inspect_source("asm")
    assert "vmaxps" in assembly and "ymm" in assembly


def test_clamps_cast_to_integers_keep_tvms_max_and_min():
    """A quantize's clip is cast to uint8 right after: there is no NaN to keep, and its NaN selects (with Let-bound
    operands), nested one quantize inside the next, made LLVM code generation of INT8 YOLOv3 take minutes."""
    from tvm import te, tirx

    from kiln.compiler.backends.tvm.schedules.nan import propagate_nan

    x = te.placeholder((8,), name="x")
    quantized = te.compute((8,), lambda i: te.max(te.min(te.round(x[i] * 4.0), 255.0), 0.0).astype("uint8"),
                           name="quantized")
    relu = te.compute((8,), lambda i: te.max(quantized[i].astype("float32") - 3.0, 0.0), name="relu")
    text = propagate_nan(te.create_prim_func([x, relu])).script()
    assert "T.Cast(\"uint8\", T.max(T.min(" in text  # the clip stays TVM's max and min
    assert "T.Select" in text and "T.max(" not in text.split("relu")[-1]  # the float Relu keeps NaN
