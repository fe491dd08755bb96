"""INT8 of a model with an attention mask made from an integer input (#20 item 3): the mask path is not data, so
calibration neither refuses it (its -inf, or its 0 when no position is masked) nor quantizes it; the linear
layers still run as integer kernels, and the model agrees with ONNX Runtime on the QDQ model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.cli import cli
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import onnxruntime_outputs, qdq_output_scale

TOKENS, WIDTH = 8, 16
INT64 = 7  # onnx.TensorProto.INT64


def _masked_attention(path: Path, masked: str) -> Path:
    """scores = x W x^T + mask; softmax(scores) x W2. `masked` -inf: Where(mask, 0, -inf), as torch's SDPA exports;
    "min": (1 - mask) * float32's min, as transformers' BERT does."""
    rng = np.random.default_rng(0)
    b = GraphBuilder(f"attention_{masked}", opset=17)
    b.input("x", [1, TOKENS, WIDTH])
    b.input("mask", [1, TOKENS], INT64)
    query = b.node("MatMul", ["x", b.const(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32))])
    scores = b.node("MatMul", [query, b.node("Transpose", ["x"], perm=[0, 2, 1])])
    if masked == "-inf":
        keep = b.node("Cast", ["mask"], to=9)  # bool
        additive = b.node("Where", [keep, b.const(np.float32(0)), b.const(np.float32(-np.inf))])
    else:
        free = b.node("Sub", [b.const(np.float32(1)), b.node("Cast", ["mask"], to=1)])
        additive = b.node("Mul", [free, b.const(np.finfo(np.float32).min)])
    weights = b.node("Softmax", [b.node("Add", [scores, b.node("Unsqueeze", [additive, b.const(np.array([1]))])])],
                     axis=-1)
    context = b.node("MatMul", [weights, "x"])
    b.node("MatMul", [context, b.const(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32))], "y")
    b.output("y", [1, TOKENS, WIDTH])
    return b.save(path, check=True)


@pytest.mark.parametrize("masked", ["-inf", "min"])
@pytest.mark.parametrize("padded", [True, False])
def test_a_masked_attention_quantizes_and_agrees_with_onnxruntime(cli_runner, tmp_path: Path, masked: str,
                                                                 padded: bool):
    model = _masked_attention(tmp_path / "attention.onnx", masked)
    rng = np.random.default_rng(1)
    mask = np.ones((16, TOKENS), np.int64)
    if padded:
        mask[:, 6:] = 0
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((16, TOKENS, WIDTH)).astype(np.float32), mask=mask)
    artifact = tmp_path / "attention.kiln"
    result = cli_runner.invoke(cli, ["compile", str(model), "--int8", "--calib", str(tmp_path / "calib.npz"),
                                     "-o", str(artifact), "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert result.exit_code == 0, result.output
    compiled = json.loads(result.stdout)
    assert compiled["integer_kernels"]["int8_by_op"].get("dense") == 2
    warnings = compiled["quantization"]["report"]["range_warnings"]
    assert all(w["range"] is None for w in warnings)  # no collapsed range: the mask is not quantized
    assert bool(warnings) == (padded and masked == "-inf")  # scores + -inf: NaN/inf, kept in float
    import kiln

    feed = {"x": rng.standard_normal((1, TOKENS, WIDTH)).astype(np.float32), "mask": mask[:1]}
    got = kiln.load(artifact).run(feed)["y"]
    (expected,) = onnxruntime_outputs(artifact / "model.int8.onnx", feed)
    assert np.abs(got - expected).max() <= qdq_output_scale(artifact) * 1.001


def test_a_model_whose_float_outputs_are_nan_on_the_data_is_refused_naming_them(cli_runner, tmp_path: Path):
    b = GraphBuilder("logarithm", opset=17)
    b.input("x", [1, WIDTH])
    hidden = b.node("MatMul", ["x", b.const(np.eye(WIDTH, dtype=np.float32))])
    b.node("Log", [hidden], "y")
    b.output("y", [1, WIDTH])
    model = b.save(tmp_path / "log.onnx")
    np.savez(tmp_path / "calib.npz", x=-np.ones((4, WIDTH), np.float32))
    result = cli_runner.invoke(cli, ["quantize", str(model), "--calib", str(tmp_path / "calib.npz"), "-o",
                                     str(tmp_path / "q.onnx"), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 3 and "the float model's outputs y hold NaN or inf" in result.stderr, result.output
