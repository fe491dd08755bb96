"""Pow of an integer base, or of an exponent of another type than the base, compiles and computes as ONNX Runtime
(C's pow of doubles, cast to the base's type) where TVM's converter raised and kiln refused it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes.pow_types import pow_types
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

_TYPES = {np.int32: TensorProto.INT32, np.int64: TensorProto.INT64, np.float16: TensorProto.FLOAT16,
          np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.int8: TensorProto.INT8,
          np.uint32: TensorProto.UINT32}


def _pow(path: Path, base: np.ndarray, exponent: np.ndarray) -> Path:
    b = GraphBuilder("pow", opset=15)
    b.input("x", base.shape, _TYPES[base.dtype.type])
    b.input("e", exponent.shape, _TYPES[exponent.dtype.type])
    b.output(b.node("Pow", ["x", "e"], "z"), base.shape, _TYPES[base.dtype.type])
    return b.save(path, check=True)


def _kiln(model: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> np.ndarray:
    artifact = compile_to(model, tmp_path / "pow.kiln", "host", shapes={k: v.shape for k, v in feed.items()},
                          verify=False)
    return kiln.load(artifact).run(feed)["z"]


CASES = {
    # negative exponents truncate toward zero (2 ** -1 is 0), 0 ** 0 is 1, a negative base keeps its sign
    "int32 ** int32": (np.array([2, 2, -1, -1, 0, 0, -2, 7], np.int32),
                       np.array([-1, 0, -3, -2, 0, 3, 5, 2], np.int32)),
    # a fractional result truncated, not rounded: 3 ** 2.9999 = 26.99 is 26
    "int64 ** float32": (np.array([2, 9, 3, 5, -3, 4], np.int64),
                         np.array([0.5, 0.5, 2.9999, -0.5, 3, 1.5], np.float32)),
    "int32 ** float32": (np.array([2, 10, 0, -2], np.int32), np.array([10, -1, 2, 3], np.float32)),
    "int64 ** int64": (np.array([3, -5, 2, 0], np.int64), np.array([33, 3, -2, 7], np.int64)),
    # zero to a negative power is inf
    "float32 ** int64": (np.array([0, -2, 1.5, 0.1], np.float32), np.array([-1, 3, -4, 9], np.int64)),
    "float32 ** int32": (np.array([-0.0, 2, -3, 1e-3], np.float32), np.array([-3, 30, 7, -5], np.int32)),
    "float32 ** float64": (np.array([2, 0.5, 9], np.float32), np.array([0.5, -2, 1.5], np.float64)),
    "float64 ** int32": (np.array([2, -0.5, 0], np.float64), np.array([-1074, 3, -1], np.int32)),
}


@pytest.mark.parametrize("case", CASES)
def test_mixed_and_integer_pows_match_onnx_runtime(case: str, tmp_path: Path):
    base, exponent = CASES[case]
    feed = {"x": base, "e": exponent}
    model = _pow(tmp_path / "pow.onnx", base, exponent)
    got, expected = _kiln(model, feed, tmp_path), onnxruntime_outputs(model, feed)[0]
    assert got.dtype == base.dtype
    np.testing.assert_array_equal(got, expected)


def test_types_onnx_runtime_has_no_kernel_for_match_onnx_reference(tmp_path: Path):
    """float16 ** int8 and float32 ** uint32: numpy computes the first in float16, kiln in float64, a rounding
    apart at most."""
    for base, exponent in ((np.array([2, 3, -1.5, 0], np.float16), np.array([3, -1, 5, -2], np.int8)),
                           (np.array([2, 3, -1.5], np.float32), np.array([3, 20, 5], np.uint32))):
        feed = {"x": base, "e": exponent}
        model = _pow(tmp_path / "pow.onnx", base, exponent)
        got, expected = _kiln(model, feed, tmp_path), ReferenceEvaluator(str(model)).run(None, feed)[0]
        assert got.dtype == base.dtype
        np.testing.assert_allclose(got, expected, rtol=float(np.finfo(base.dtype).eps))


def test_pows_of_one_float_type_are_left_to_tvm(tmp_path: Path):
    graph = load(_pow(tmp_path / "pow.onnx", np.ones(2, np.float16), np.ones(2, np.float16)))
    assert pow_types(graph) is graph
