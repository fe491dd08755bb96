"""QLinearMatMul compiles and computes as ONNX's reference does (ties rounded to even, saturated), where kiln refused
it: TVM's importer has no converter for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

_TYPES = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8, np.float32: TensorProto.FLOAT,
          np.float16: TensorProto.FLOAT16}
_ORDER = ("a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point")


def _model(path: Path, feed: dict[str, np.ndarray], constants: dict[str, np.ndarray], opset: int = 21) -> Path:
    b = GraphBuilder("qlinear_matmul", opset=opset)
    for name, value in feed.items():
        b.input(name, value.shape, _TYPES[value.dtype.type])
    for name, value in constants.items():
        b.const(value, name)
    inputs = {**feed, **constants}
    b.node("QLinearMatMul", list(_ORDER), "y")
    shape = np.matmul(inputs["a"].astype(np.int32), inputs["b"].astype(np.int32)).shape
    b.output("y", shape, _TYPES[inputs["y_zero_point"].dtype.type])
    return b.save(path, check=True)


def _kiln(model: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> np.ndarray:
    artifact = compile_to(model, tmp_path / "q.kiln", "host", shapes={k: v.shape for k, v in feed.items()},
                          verify=False)
    return kiln.load(artifact).run(feed)["y"]


def _scalars(a_zero, b_zero, y_zero, scales=(0.02, 0.03, 0.05), dtype=np.float32) -> dict[str, np.ndarray]:
    return {"a_scale": np.array(scales[0], dtype), "a_zero_point": a_zero, "b_scale": np.array(scales[1], dtype),
            "b_zero_point": b_zero, "y_scale": np.array(scales[2], dtype), "y_zero_point": y_zero}


def test_ties_round_to_even_and_results_saturate(tmp_path: Path):
    """a_scale * b_scale / y_scale = 0.5: every odd product is a tie (2.5 -> 2, 3.5 -> 4, -2.5 -> -2), and the
    largest products pass 127 and -128."""
    a = np.array([[1, 2, 3, 5, -5, -3, 100, -100]], np.int8).T
    b = np.array([[1, 3, 127]], np.int8)
    feed = {"a": a, "b": b, **_scalars(np.array(0, np.int8), np.array(0, np.int8), np.array(0, np.int8),
                                       (0.25, 1.0, 0.5))}
    model = _model(tmp_path / "q.onnx", feed, {})
    got = _kiln(model, feed, tmp_path)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, ReferenceEvaluator(str(model)).run(None, feed)[0])
    np.testing.assert_array_equal(got, onnxruntime_outputs(model, feed)[0])
    assert got[:6, 0].tolist() == [0, 1, 2, 2, -2, -2] and got[6:, 2].tolist() == [127, -128]


@pytest.mark.parametrize("a_type, b_type, y_type, scale_type", [
    (np.uint8, np.uint8, np.uint8, np.float32), (np.int8, np.int8, np.int8, np.float16),
    (np.uint8, np.int8, np.uint8, np.float32), (np.int8, np.uint8, np.uint8, np.float16)])
def test_3d_inputs_of_each_type_match_onnx_reference_and_runtime(a_type, b_type, y_type, scale_type, tmp_path: Path):
    """ONNX Runtime's kernels give y a's type, and an int8 a an int8 b."""
    rng = np.random.default_rng(0)
    a = rng.integers(np.iinfo(a_type).min, np.iinfo(a_type).max + 1, (2, 5, 16), dtype=a_type)
    b = rng.integers(np.iinfo(b_type).min, np.iinfo(b_type).max + 1, (2, 16, 7), dtype=b_type)
    zeros = [np.array(7 if t == np.uint8 else -3, t) for t in (a_type, b_type, y_type)]
    feed = {"a": a, "b": b, **_scalars(*zeros, dtype=scale_type)}
    model = _model(tmp_path / "q.onnx", feed, {})
    got = _kiln(model, feed, tmp_path)
    assert got.dtype == y_type
    np.testing.assert_array_equal(got, ReferenceEvaluator(str(model)).run(None, feed)[0])
    if y_type == a_type and (a_type == np.uint8 or b_type == np.int8):
        np.testing.assert_array_equal(got, onnxruntime_outputs(model, feed)[0])


def test_per_row_and_per_column_constants_match_onnx_reference(tmp_path: Path):
    """a's scale and zero point per row ([M, 1]), b's per column ([N]), as initializers; ONNX Runtime takes a's
    per tensor only."""
    rng = np.random.default_rng(1)
    feed = {"a": rng.integers(0, 256, (4, 8), dtype=np.uint8), "b": rng.integers(-128, 128, (8, 3), dtype=np.int8)}
    constants = {"a_scale": np.array([[0.01], [0.02], [0.03], [0.04]], np.float32),
                 "a_zero_point": np.array([[120], [128], [0], [255]], np.uint8),
                 "b_scale": np.array([0.05, 0.01, 0.002], np.float32), "b_zero_point": np.array([0, -5, 9], np.int8),
                 "y_scale": np.array(0.1, np.float32), "y_zero_point": np.array(100, np.uint8)}
    model = _model(tmp_path / "q.onnx", feed, constants)
    got = _kiln(model, feed, tmp_path)
    np.testing.assert_array_equal(got, ReferenceEvaluator(str(model)).run(None, feed)[0])


def test_opset_10_model_compiles(tmp_path: Path):
    """Round and Max/Min of doubles came to ONNX after QLinearMatMul-10; TVM converts them whatever the opset."""
    rng = np.random.default_rng(2)
    feed = {"a": rng.integers(0, 256, (3, 4), dtype=np.uint8), "b": rng.integers(0, 256, (4, 2), dtype=np.uint8),
            **_scalars(np.array(3, np.uint8), np.array(200, np.uint8), np.array(50, np.uint8))}
    model = _model(tmp_path / "q.onnx", feed, {}, opset=10)
    np.testing.assert_array_equal(_kiln(model, feed, tmp_path), onnxruntime_outputs(model, feed)[0])
