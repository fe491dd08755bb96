"""Calibration data that would quantize a model into garbage is refused (issue #21, item 5): no samples at all,
or data on which a tensor is exactly 0 everywhere (its INT8 range collapses) unless --allow-degenerate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kiln.cli import cli
from kiln.testing.paths import DIGITS_CNN


def _quantize(cli_runner, tmp_path: Path, images: np.ndarray, *flags: str):
    np.savez(tmp_path / "calib.npz", input=images.astype(np.float32))
    return cli_runner.invoke(cli, ["quantize", str(DIGITS_CNN), "--calib", str(tmp_path / "calib.npz"), "-o",
                                   str(tmp_path / "q.onnx"), "--cache-dir", str(tmp_path / "cache"), "-q", *flags])


def test_calibration_data_without_samples_is_refused(cli_runner, tmp_path: Path):
    result = _quantize(cli_runner, tmp_path, np.zeros((0, 1, 8, 8)))
    assert result.exit_code == 3 and "no samples (shape 0x1x8x8)" in result.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_all_zero_calibration_data_is_refused_unless_allowed(cli_runner, tmp_path: Path):
    result = _quantize(cli_runner, tmp_path, np.zeros((20, 1, 8, 8)))
    assert result.exit_code == 3, result.output
    assert "exactly 0 on every sample" in result.stderr and ": input." in result.stderr
    assert "--allow-degenerate" in result.stderr and not (tmp_path / "q.onnx").exists()
    assert _quantize(cli_runner, tmp_path, np.zeros((20, 1, 8, 8)), "--allow-degenerate").exit_code == 0
    assert (tmp_path / "q.onnx").is_file()
