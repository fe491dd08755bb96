"""Shared fixtures: a CLI runner and one helper that checks a compiled model against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
DIGITS_CNN = EXAMPLES / "digits_cnn" / "digits_cnn.onnx"


@pytest.fixture
def cli_runner() -> CliRunner:
    return CliRunner()


def onnxruntime_outputs(model_path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def check_correctness(model_path: Path, feed: dict[str, np.ndarray], tmp_path: Path, *, target: str = "x86-64",
                      input_shapes: dict[str, tuple[int, ...]] | None = None, rtol: float = 1e-4,
                      atol: float = 1e-4) -> Path:
    """Compile `model_path` with kiln, run it on `feed`, and assert it matches ONNX Runtime."""
    import kiln
    from kiln.compiler.frontends import ImportOptions
    from kiln.compiler.pipeline import CompileOptions, compile_model
    from kiln.targets import resolve

    shapes = input_shapes or {name: array.shape for name, array in feed.items()}
    output = tmp_path / f"{model_path.stem}.kiln"
    compile_model(model_path, CompileOptions(resolve(target), output, ImportOptions(shapes)))
    got = kiln.load(output).run(feed)
    expected = onnxruntime_outputs(model_path, feed)
    assert len(got) == len(expected)
    for (name, actual), reference in zip(got.items(), expected):
        np.testing.assert_allclose(actual, reference, rtol=rtol, atol=atol, err_msg=f"output {name}")
    return output
