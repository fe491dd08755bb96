"""Every Gluon model zoo vision model, exported by real MXNet, converted by kiln (without MXNet),
then run by ONNX Runtime and compiled by TVM: both must match MXNet's outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from side_venv import mxnet_python, zoo_exports  # noqa: F401 (fixtures)

MODELS = sorted(json.loads((Path(__file__).with_name("zoo_models.json")).read_text())["input_sides"])
RTOL, ATOL = 1e-3, 1e-4
COLUMNS = ("converted", "onnxruntime", "compiled")


@pytest.fixture(scope="module")
def results(request) -> dict[str, dict[str, bool]]:
    """model -> {column: passed}; printed as a table after the last model."""
    table: dict[str, dict[str, bool]] = {}
    yield table
    plugins = request.config.pluginmanager
    write = plugins.get_plugin("terminalreporter").write_line
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():  # shown without -s
        write("")
        write(f"MXNet Gluon model zoo, converted by kiln, matches MXNet (rtol {RTOL}, atol {ATOL}):")
        write(f"  {'model':18} " + " ".join(f"{c:>12}" for c in COLUMNS))
        for model, row in sorted(table.items()):
            write(f"  {model:18} " + " ".join(f"{'yes' if row[c] else 'NO':>12}" for c in COLUMNS))
        write(f"  {sum(all(row.values()) for row in table.values())}/{len(table)} models match in both engines")


def _matches(actual: np.ndarray, expected: np.ndarray) -> bool:
    return actual.shape == expected.shape and np.allclose(actual, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", MODELS)
def test_zoo_model_matches_mxnet(model: str, zoo_exports: Path, results: dict, tmp_path: Path):
    import onnxruntime as ort

    import kiln
    from kiln.compiler.frontends import ImportOptions
    from kiln.compiler.pipeline import CompileOptions, compile_model
    from kiln.targets import resolve

    folder = zoo_exports / model
    reference = np.load(folder / "reference.npz")
    data, expected = reference["data"], reference["output"]
    row = results.setdefault(model, dict.fromkeys(COLUMNS, False))
    imports = ImportOptions({"data": data.shape}, params=folder / "model-0000.params")
    artifact = compile_model(folder / "model-symbol.json",
                             CompileOptions(resolve("x86-64"), tmp_path / f"{model}.kiln", imports))
    row["converted"] = True
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    (by_onnxruntime,) = session.run(None, {"data": data})
    row["onnxruntime"] = _matches(by_onnxruntime, expected)
    (compiled,) = kiln.load(artifact).run({"data": data}).values()
    row["compiled"] = _matches(compiled, expected)
    assert "mxnet" not in sys.modules, "kiln must convert MXNet models without importing MXNet"
    np.testing.assert_allclose(by_onnxruntime, expected, rtol=RTOL, atol=ATOL, err_msg="ONNX Runtime")
    np.testing.assert_allclose(compiled, expected, rtol=RTOL, atol=ATOL, err_msg="compiled artifact")
