"""Every Gluon model zoo vision model, exported by real MXNet, converted by kiln (without MXNet),
then run by ONNX Runtime and compiled by TVM: both must match MXNet's outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.mxnet

MODELS = sorted(json.loads((Path(__file__).with_name("zoo_models.json")).read_text())["input_sides"])
# Under 5 s each on 2 cores; the others take 5 to 47 s (densenet201) and are marked slow
QUICK = {"mobilenet0.25", "mobilenet0.5", "mobilenet0.75", "mobilenet1.0", "resnet18_v1", "resnet18_v2",
         "squeezenet1.1"}
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


@pytest.mark.parametrize("model", [m if m in QUICK else pytest.param(m, marks=pytest.mark.slow) for m in MODELS])
def test_zoo_model_matches_mxnet(model: str, zoo_exports: Path, results: dict, tmp_path: Path):
    import kiln
    from kiln.compiler.frontends import ImportOptions
    from kiln.testing.reference import compile_to, onnxruntime_outputs

    folder = zoo_exports / model
    reference = np.load(folder / "reference.npz")
    data, expected = reference["data"], reference["output"]
    row = results.setdefault(model, dict.fromkeys(COLUMNS, False))
    imports = ImportOptions({"data": data.shape}, params=folder / "model-0000.params")
    artifact = compile_to(folder / "model-symbol.json", tmp_path / f"{model}.kiln", imports=imports)
    row["converted"] = True
    (by_onnxruntime,) = onnxruntime_outputs(artifact / "model.onnx", {"data": data})
    row["onnxruntime"] = _matches(by_onnxruntime, expected)
    (compiled,) = kiln.load(artifact).run({"data": data}).values()
    row["compiled"] = _matches(compiled, expected)
    assert "mxnet" not in sys.modules, "kiln must convert MXNet models without importing MXNet"
    np.testing.assert_allclose(by_onnxruntime, expected, rtol=RTOL, atol=ATOL, err_msg="ONNX Runtime")
    np.testing.assert_allclose(compiled, expected, rtol=RTOL, atol=ATOL, err_msg="compiled artifact")
