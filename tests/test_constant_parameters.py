"""Ops whose parameters are constants but which TVM's converters still get wrong for some values (issue #19):
each either compiles to ONNX Runtime's answer (OneHot, reductions over an empty axis) or is refused with the
reason (Resize by scales that do not give whole sizes, and the Resize attributes the converter ignores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from kiln.compiler.backends.tvm.ops import unsupported_ops
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness, onnxruntime_outputs

import kiln


def _run_both(model: Path, feed: dict, tmp_path: Path) -> None:
    """kiln against ONNX Runtime, dtypes included (a converter that returns float64 for float32 values is wrong)."""
    check_correctness(model, feed, tmp_path)
    got = kiln.load(tmp_path / f"{model.stem}.kiln").run(feed)
    assert [a.dtype for a in got.values()] == [a.dtype for a in onnxruntime_outputs(model, feed)]


@pytest.mark.parametrize("indices_type, values, axis", [
    (TensorProto.FLOAT, np.array([0.5, 2.0], np.float32), 1),
    (TensorProto.INT64, np.array([-1, 7], np.int32), -1),  # (ONNX Runtime implements a few type combinations)
])
def test_onehot_with_float_depth(tmp_path: Path, indices_type, values, axis):
    b = GraphBuilder("onehot", opset=11)
    indices = b.input("indices", [2, 3], indices_type)
    depth = b.const(np.array([4.0], np.float32))
    out = b.node("OneHot", [indices, depth, b.const(values)], "out", axis=axis)
    b.output(out, [2, 4, 3] if axis == 1 else [2, 3, 4], TensorProto.FLOAT if values.dtype == np.float32
             else TensorProto.INT32)
    dtype = np.float32 if indices_type == TensorProto.FLOAT else np.int64
    feed = {"indices": np.array([[0, 3, -1], [-4, 5, 2]]).astype(dtype)}  # negative, and out of range (5)
    _run_both(b.save(tmp_path / "onehot.onnx"), feed, tmp_path)


@pytest.mark.parametrize("op, dtype", [("ReduceSum", TensorProto.FLOAT), ("ReduceProd", TensorProto.FLOAT),
                                       ("ReduceMax", TensorProto.FLOAT), ("ReduceMin", TensorProto.INT32),
                                       ("ReduceLogSumExp", TensorProto.FLOAT), ("ReduceL2", TensorProto.FLOAT)])
def test_reduction_over_an_empty_axis_gives_its_identity(tmp_path: Path, op, dtype):
    b = GraphBuilder("empty", opset=18)
    x = b.input("x", [2, 0, 4], dtype)
    b.output(b.node(op, [x, b.const(np.array([1], np.int64))], "out", keepdims=1), [2, 1, 4], dtype)
    feed = {"x": np.zeros((2, 0, 4), np.float32 if dtype == TensorProto.FLOAT else np.int32)}
    _run_both(b.save(tmp_path / "empty.onnx"), feed, tmp_path)


def _resize(scales: list[float], size: int = 4, **attributes) -> "onnx.ModelProto":
    b = GraphBuilder("resize", opset=19)
    x = b.input("x", [1, 1, size, size])
    out = b.node("Resize", [x, "", b.const(np.array(scales, np.float32))], "out", name="resize_0", mode="linear",
                 **attributes)
    b.output(out, [1, 1, int(size * scales[2]), int(size * scales[3])])
    return b


def test_resize_by_whole_scales_compiles(tmp_path: Path):
    feed = {"x": np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)}
    _run_both(_resize([1, 1, 0.5, 2]).save(tmp_path / "resize.onnx"), feed, tmp_path)


@pytest.mark.parametrize("scales, attributes, reason", [
    ([1, 1, 0.6, 0.6], {}, "scales [0.6000000238418579, 0.6000000238418579] of sizes [4, 4] that are not whole"),
    ([1, 1, 0.5, 0.5], {"antialias": 1}, "antialias (the converter ignores it)"),
    ([1, 1, 2, 2], {"coordinate_transformation_mode": "half_pixel_symmetric"}, "half_pixel_symmetric"),
    ([2, 1, 2, 2], {}, "scales of the batch or channel dim"),
])
def test_resize_the_converter_gets_wrong_is_refused(scales, attributes, reason):
    refused = unsupported_ops(_resize(scales, **attributes).model(infer_shapes=True))
    assert [label for label in refused if reason in label] and list(refused.values()) == [["resize_0"]]


def test_castlike_of_a_constant_is_a_constant():
    """A Pad's constant_value cast like a run-time tensor (opset-23 Attention's body pads its mask with -inf so)."""
    b = GraphBuilder("pad", opset=21)
    x = b.input("x", [2, 3])
    value = b.node("CastLike", [b.const(np.array(-np.inf, np.float32)), x])
    b.output(b.node("Pad", [x, b.const(np.array([0, 1, 0, 1], np.int64)), value], "out"), [2, 5])
    assert unsupported_ops(b.model()) == {}
    b = GraphBuilder("pad", opset=21)
    x, value = b.input("x", [2, 3]), b.input("value", [])
    b.output(b.node("Pad", [x, b.const(np.array([0, 1, 0, 1], np.int64)), value], "out", name="pad_0"), [2, 5])
    assert unsupported_ops(b.model()) == {"Pad (constant_value must be constant)": ["pad_0"]}
