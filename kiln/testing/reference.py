"""kiln against its reference engine: compile a model, run ONNX Runtime on it, compare the two."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

    from kiln.compiler.frontends import ImportOptions


def compile_to(model: Path, output: Path, target: str = "x86-64", *,
               shapes: Mapping[str, tuple[int, ...]] | None = None, imports: ImportOptions | None = None,
               **options) -> Path:
    """Compile `model` for the target preset into the artifact folder `output`, and return `output`.

    `shapes` fixes input shapes; `imports` gives every import option instead. Other keywords are
    CompileOptions fields (precision, calib, quantize, schedule, records)."""
    from kiln.compiler.frontends import ImportOptions
    from kiln.pipeline import CompileOptions, compile_model
    from kiln.targets import resolve

    imports = imports or ImportOptions(dict(shapes or {}))
    compile_model(model, CompileOptions(resolve(target), output, imports, **options))
    return output


def onnxruntime_outputs(model: Path | onnx.ModelProto, feed: dict[str, np.ndarray], *,
                        outputs: list[str] | None = None, fused: bool = True) -> list[np.ndarray]:
    """What ONNX Runtime (CPU) computes for `feed`: all graph outputs, or those named in `outputs`.

    fused=False runs the graph as written, without ONNX Runtime's graph optimizations: a QDQ model's
    DequantizeLinear, float op, QuantizeLinear rather than its fused integer kernels."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(outputs, feed)


def check_correctness(model_path: Path, feed: dict[str, np.ndarray], tmp_path: Path, *, target: str = "x86-64",
                      input_shapes: dict[str, tuple[int, ...]] | None = None, rtol: float = 1e-4,
                      atol: float = 1e-4) -> Path:
    """Compile `model_path` with kiln, run it on `feed`, and assert it matches ONNX Runtime; the artifact."""
    import kiln

    shapes = input_shapes or {name: array.shape for name, array in feed.items()}
    output = compile_to(model_path, tmp_path / f"{model_path.stem}.kiln", target, shapes=shapes)
    got = kiln.load(output).run(feed)
    expected = onnxruntime_outputs(model_path, feed)
    assert len(got) == len(expected)
    for (name, actual), reference in zip(got.items(), expected):
        np.testing.assert_allclose(actual, reference, rtol=rtol, atol=atol, err_msg=f"output {name}")
    return output


def qdq_output_scale(artifact: Path) -> float:
    """The quantization step of an INT8 artifact's first output, read from its QDQ model."""
    import onnx
    from onnx import numpy_helper

    qdq = onnx.load(str(artifact / "model.int8.onnx"))
    scales = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    return float(scales[f"{qdq.graph.output[0].name}_scale"])


def library_of(artifact: Path) -> Path:
    """The artifact's compiled library, as its manifest names it (model-<sha256 prefix>.so)."""
    from kiln.compiler.artifact import read_manifest

    return artifact / read_manifest(artifact).library.file
