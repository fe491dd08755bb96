"""Calibration data that would quantize a model into garbage is refused (issue #21, item 5): no samples at all,
an input that holds one value, or a tensor that is exactly 0 everywhere (its INT8 range collapses) unless
--allow-degenerate; ranges with no positive value are flagged in the report."""

from __future__ import annotations

from pathlib import Path

import json

import numpy as np

from kiln.cli import cli
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.paths import DIGITS_CNN


def _quantize(cli_runner, tmp_path: Path, images: np.ndarray, *flags: str, model: Path = DIGITS_CNN):
    np.savez(tmp_path / "calib.npz", input=images.astype(np.float32))
    return cli_runner.invoke(cli, ["quantize", str(model), "--calib", str(tmp_path / "calib.npz"), "-o",
                                   str(tmp_path / "q.onnx"), "--cache-dir", str(tmp_path / "cache"), "-q", *flags])


def _dead_relu_model(path: Path) -> Path:
    """input [0, 1] -> Gemm whose bias (-100) outweighs every product -> Relu -> Gemm: the Relu never fires."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("dead_relu", opset=13)
    b.input("input", ["batch", 8])
    hidden = b.node("Gemm", ["input", b.const(rng.uniform(-1, 1, (8, 16)).astype(np.float32)),
                             b.const(np.full(16, -100, np.float32))], name="hidden")
    relu = b.node("Relu", [hidden], name="dead")
    b.node("Gemm", [relu, b.const(rng.uniform(-1, 1, (16, 3)).astype(np.float32))], "scores", name="head")
    b.output("scores", ["batch", 3])
    return b.save(path, check=True)


def test_calibration_data_without_samples_is_refused(cli_runner, tmp_path: Path):
    result = _quantize(cli_runner, tmp_path, np.zeros((0, 1, 8, 8)))
    assert result.exit_code == 3 and "no samples (shape 0x1x8x8)" in result.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_all_zero_calibration_data_is_refused_unless_allowed(cli_runner, tmp_path: Path):
    result = _quantize(cli_runner, tmp_path, np.zeros((20, 1, 8, 8)))
    assert result.exit_code == 3, result.output
    assert "input input is exactly 0 on every sample" in result.stderr
    assert "--allow-degenerate" in result.stderr and not (tmp_path / "q.onnx").exists()
    assert _quantize(cli_runner, tmp_path, np.zeros((20, 1, 8, 8)), "--allow-degenerate").exit_code == 0
    assert (tmp_path / "q.onnx").is_file()


def test_an_input_that_holds_one_value_is_refused(cli_runner, tmp_path: Path):
    result = _quantize(cli_runner, tmp_path, np.full((20, 1, 8, 8), 0.5))
    assert result.exit_code == 3 and "input input is 0.5 on every sample" in result.stderr, result.output
    assert not (tmp_path / "q.onnx").exists()


def test_a_relu_that_never_fires_is_refused_by_name(cli_runner, tmp_path: Path):
    model = _dead_relu_model(tmp_path / "dead.onnx")
    images = np.random.default_rng(1).uniform(0, 1, (20, 8))
    result = _quantize(cli_runner, tmp_path, images, model=model)
    assert result.exit_code == 3, result.output
    assert "is 0 on every sample: Relu dead never saw a positive input" in result.stderr


def test_calibration_data_of_the_wrong_sign_is_flagged_in_the_report(cli_runner, tmp_path: Path):
    """All-negative images where the model was trained on [0, 1]: nothing collapses, so it quantizes, but the
    report says the input's range has no positive value (INT8 clips every real image to 0)."""
    images = -np.load(DIGITS_CNN.with_name("digits_calib.npz"))["input"] - 0.01
    result = _quantize(cli_runner, tmp_path, images)
    assert result.exit_code == 0, result.output
    assert "warning: input range [" in result.output and "positive values are clipped to 0" in result.output
    result = _quantize(cli_runner, tmp_path, images, "--json")
    warnings = json.loads(result.stdout)["report"]["range_warnings"]
    assert [w["tensor"] for w in warnings] == ["input"] and warnings[0]["range"][1] == 0.0
    positive = _quantize(cli_runner, tmp_path, -images, "--json")
    assert json.loads(positive.stdout)["report"]["range_warnings"] == []
