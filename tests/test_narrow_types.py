"""Narrow types (float8, float4, int4, uint4, int2, uint2) held in carriers (kiln.compiler.passes.narrow_types):
Cast, QuantizeLinear and DequantizeLinear bit-exact against onnx.reference on edge values, the declared types in the
manifest and at the runner's boundary, an int4 weight-only MatMul, and ops that would compute otherwise refused."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

from kiln.errors import InputError, UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to

FLOATS = {"e4m3fn": TensorProto.FLOAT8E4M3FN, "e4m3fnuz": TensorProto.FLOAT8E4M3FNUZ, "e5m2": TensorProto.FLOAT8E5M2,
          "e5m2fnuz": TensorProto.FLOAT8E5M2FNUZ, "e2m1": TensorProto.FLOAT4E2M1}
INTS = {"int4": TensorProto.INT4, "uint4": TensorProto.UINT4, "int2": TensorProto.INT2, "uint2": TensorProto.UINT2}
# Ties (half way between grid values, both parities), subnormals, +-0, infinities, NaN, just past each type's largest
# value (448, 240, 57344, 6) and integers past the sub-byte ranges.
EDGES = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-7, -1e-7, 2 ** -10, 2 ** -17, 3 * 2 ** -10, 0.25, 0.75, 1.25,
                  1.0625, 1.1875, 2.5, -2.5, 3.5, 5.0, 6.5, 7.0, 7.5, 8.0, -9.0, 15.5, 16.0, 232.0, 248.0, 447.0,
                  464.0, 465.0, 1000.0, 57344.0, 61440.0, 61441.0, -1e6, 3.4e38], np.float32)


def _assert_bits(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal types, and equal bytes (any NaN matching any NaN; float4's NaN, which it has not, is -0 for any sign)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    nan = np.isnan(got.astype(np.float32)) & np.isnan(expected.astype(np.float32))
    bits = f"u{got.dtype.itemsize}"
    same = (got.view(bits) == expected.view(bits)) | nan
    if got.dtype == ml_dtypes.float4_e2m1fn:
        same |= (got.astype(np.float32) == 0) & (expected.astype(np.float32) == 0)
    assert same.all(), list(zip(got[~same][:5], expected[~same][:5]))


def _check(model: Path, artifact: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import kiln

    got = kiln.load(artifact).run(feed)
    for name, expected in zip(got, ReferenceEvaluator(str(model)).run(list(got), feed)):
        _assert_bits(got[name], expected)
    return got


def test_casts_to_narrow_types_round_saturate_and_wrap_as_onnx(tmp_path: Path):
    b = GraphBuilder("to_narrow", opset=23)
    x, h = b.input("x", [EDGES.size]), b.input("h", [EDGES.size], TensorProto.FLOAT16)
    for label, to in FLOATS.items():
        for saturate in (0, 1):
            b.output(b.node("Cast", [x], f"{label}_{saturate}", to=to, saturate=saturate), [EDGES.size], to)
    for label, to in INTS.items():
        b.output(b.node("Cast", [h], label, to=to), [EDGES.size], to)
    wide = b.node("Cast", [x], to=TensorProto.INT32)
    for label in ("int4", "uint2"):
        b.output(b.node("Cast", [wide], f"{label}_wrapped", to=INTS[label]), [EDGES.size], INTS[label])
    model = b.save(tmp_path / "to_narrow.onnx", check=True)
    artifact = compile_to(model, tmp_path / "to_narrow.kiln", verify=False)
    finite = np.where(np.abs(EDGES) < 1e9, EDGES, 3)  # float -> int32 past its range is undefined
    _check(model, artifact, {"x": EDGES, "h": np.clip(finite, -6e4, 6e4).astype(np.float16)})
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert {o["name"]: o["dtype"] for o in manifest["outputs"]}["e4m3fnuz_0"] == "float8_e4m3fnuz"
    assert {o["name"]: o["dtype"] for o in manifest["outputs"]}["uint2"] == "uint2"


@pytest.fixture(scope="module")
def from_narrow(tmp_path_factory) -> tuple[Path, Path]:
    """Each narrow type as an input: cast to float and float16 (integers: also to int8), and passed through."""
    folder = tmp_path_factory.mktemp("from_narrow")
    b = GraphBuilder("from_narrow", opset=23)
    for label, elem in {**FLOATS, **INTS}.items():
        value = b.input(label, [2, 8], elem)
        b.output(b.node("Cast", [value], f"{label}_f32", to=TensorProto.FLOAT), [2, 8])
        b.output(b.node("Cast", [value], f"{label}_f16", to=TensorProto.FLOAT16), [2, 8], TensorProto.FLOAT16)
        b.output(b.node("Transpose", [value], f"{label}_t"), [8, 2], elem)
    b.output(b.node("Cast", ["int4"], "int4_i8", to=TensorProto.INT8), [2, 8], TensorProto.INT8)
    model = b.save(folder / "from_narrow.onnx", check=True)
    return model, compile_to(model, folder / "from_narrow.kiln", verify=False)


def _narrow_feed() -> dict[str, np.ndarray]:
    feed = {}
    for label in FLOATS:
        dtype = ml_dtypes.float4_e2m1fn if label == "e2m1" else getattr(ml_dtypes, f"float8_{label}")
        feed[label] = np.arange(16, dtype=np.uint8).reshape(2, 8).view(dtype)  # zeros, subnormals, normals
        feed[label][1] = np.array([-0.0, np.inf, -np.inf, np.nan, 1, -1, 448, 57344], np.float32).astype(dtype)
    for label in INTS:
        info = ml_dtypes.iinfo(getattr(ml_dtypes, label))
        feed[label] = np.resize(np.arange(info.min, info.max + 1), (2, 8)).astype(getattr(ml_dtypes, label))
    return feed


def test_narrow_inputs_convert_exactly_and_keep_their_type(from_narrow):
    model, artifact = from_narrow
    got = _check(model, artifact, _narrow_feed())
    assert got["e5m2_t"].dtype == ml_dtypes.float8_e5m2 and got["int2_t"].dtype == ml_dtypes.int2
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert {i["name"]: i["dtype"] for i in manifest["inputs"]}["e4m3fn"] == "float8_e4m3fn"


def test_narrow_input_of_another_type_is_refused(from_narrow):
    import kiln

    predictor = kiln.load(from_narrow[1])
    feed = _narrow_feed()
    with pytest.raises(InputError, match=r"astype\(ml_dtypes.int4\)"):
        predictor.run({**feed, "int4": feed["int4"].astype(np.int8)})
    with pytest.raises(InputError, match=r"astype\(ml_dtypes.float8_e4m3fn\)"):
        predictor.run({**feed, "e4m3fn": feed["e4m3fn"].astype(np.float32)})


def test_quantize_and_dequantize_to_narrow_types_match_onnx(tmp_path: Path):
    b = GraphBuilder("qdq", opset=23)
    x = b.input("x", [4, 6])
    scale = b.const(np.array([0.5, 0.25, 1.0, 0.1], np.float32), "scale")
    for label, zero in {"int4": np.array([1, -2, 0, 7], ml_dtypes.int4),
                        "uint4": np.array([8, 0, 15, 3], ml_dtypes.uint4)}.items():
        q = b.node("QuantizeLinear", [x, scale, b.const(zero, f"{label}_zero")], f"q_{label}", axis=0)
        b.output(q, [4, 6], INTS[label])
        b.output(b.node("DequantizeLinear", [q, scale, f"{label}_zero"], f"dq_{label}", axis=0), [4, 6])
    for label in ("e4m3fn", "e5m2", "e2m1"):
        dtype = ml_dtypes.float4_e2m1fn if label == "e2m1" else getattr(ml_dtypes, f"float8_{label}")
        zero = b.const(np.zeros([], dtype))
        q = b.node("QuantizeLinear", [x, b.const(np.array(0.125, np.float32)), zero], f"q_{label}")
        b.output(q, [4, 6], FLOATS[label])
        b.output(b.node("DequantizeLinear", [q, b.const(np.array(2.0, np.float32))], f"dq_{label}"), [4, 6])
    model = b.save(tmp_path / "qdq.onnx", check=True)
    artifact = compile_to(model, tmp_path / "qdq.kiln", verify=False)
    values = np.array([[0.0, -0.0, 0.25, 0.75, -0.75, 100.0], [1.25, -1.25, 3.0, -20.0, 0.3, 0.124],
                       [7.5, 8.5, -8.5, 1e6, -1e6, 2.5], [0.05, 0.15, -0.15, 0.35, 0.45, 60.0]], np.float32)
    _check(model, artifact, {"x": values})


def test_int4_weight_only_matmul_with_blocked_dequantize(tmp_path: Path):
    """As weight-only LLM quantization exports it: int4 weights and per-block scales as initializers, the float
    weights they dequantize to multiplied in."""
    rng = np.random.default_rng(0)
    weights = rng.integers(-8, 8, (10, 3)).astype(ml_dtypes.int4)
    scales = rng.uniform(0.01, 0.1, (3, 3)).astype(np.float32)  # blocks of 4 rows, the last one of 2
    zeros = rng.integers(-2, 2, (3, 3)).astype(ml_dtypes.int4)
    b = GraphBuilder("woq", opset=23)
    w = b.node("DequantizeLinear", [b.const(weights, "w"), b.const(scales, "s"), b.const(zeros, "z")], axis=0,
               block_size=4)
    b.output(b.node("MatMul", [b.input("x", [2, 10]), w], "y"), [2, 3])
    model = b.save(tmp_path / "woq.onnx", check=True)
    artifact = compile_to(model, tmp_path / "woq.kiln", verify=False)
    import kiln

    x = rng.standard_normal((2, 10)).astype(np.float32)
    expected = ReferenceEvaluator(str(model)).run(None, {"x": x})[0]
    np.testing.assert_allclose(kiln.load(artifact).run({"x": x})["y"], expected, rtol=1e-5, atol=1e-6)


def test_arithmetic_making_narrow_values_is_refused_with_the_reason(tmp_path: Path):
    b = GraphBuilder("add_f8", opset=23)
    x = b.input("x", [2, 3], TensorProto.FLOAT8E4M3FN)
    b.output(b.node("Add", [x, x], "y"), [2, 3], TensorProto.FLOAT8E4M3FN)
    model = b.save(tmp_path / "add_f8.onnx", check=True)
    with pytest.raises(UnsupportedOpError, match=r"Add \(makes float8e4m3fn values"):
        compile_to(model, tmp_path / "add_f8.kiln", verify=False)
