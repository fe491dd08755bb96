"""`--freeze NAME=VALUES` (issue #19): a parameter given as a graph input (a reduction's axes, Resize's scales)
compiles once it is frozen to a value; the artifact computes with that value, takes the input holding it, and
refuses it holding another."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

import kiln
from kiln.cli import cli
from kiln.compiler.frontends.options import frozen_input
from kiln.errors import InputError, SettingError, UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder

X = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)


def _reduce_sum(path: Path) -> Path:
    b = GraphBuilder("reduce", opset=18)
    x, axes = b.input("x", [2, 3, 4]), b.input("axes", [1], TensorProto.INT64)
    b.output(b.node("ReduceSum", [x, axes], "out", name="sum_0", keepdims=1), [2, 1, 4])
    return b.save(path)


def test_refusal_names_the_input_to_freeze(cli_runner, tmp_path: Path):
    result = cli_runner.invoke(cli, ["compile", str(_reduce_sum(tmp_path / "m.onnx")), "-o", str(tmp_path / "o.kiln")])
    assert result.exit_code == UnsupportedOpError.exit_code, result.output
    assert "ReduceSum (axes must be constant)" in result.stderr
    assert "--freeze axes=VALUES" in result.stderr


def test_frozen_axes_compile_and_run(cli_runner, tmp_path: Path):
    output = tmp_path / "o.kiln"
    result = cli_runner.invoke(cli, ["compile", str(_reduce_sum(tmp_path / "m.onnx")), "-o", str(output),
                                     "--freeze", "axes=1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["frozen_inputs"] == [{"name": "axes", "dtype": "int64", "shape": [1], "values": [1]}]
    assert [spec["name"] for spec in manifest["inputs"]] == ["x"]
    predictor = kiln.load(output)
    np.testing.assert_allclose(predictor.predict(X), X.sum(axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(predictor.predict({"x": X, "axes": np.array([1])}), X.sum(axis=1, keepdims=True),
                               rtol=1e-5)
    with pytest.raises(InputError, match=r"'axes' was frozen when compiling \(axes = \[1\]\)"):
        predictor.predict({"x": X, "axes": np.array([2])})


def test_frozen_values_are_part_of_the_build(tmp_path: Path):
    from kiln.compiler.fingerprint import fingerprint

    model = _reduce_sum(tmp_path / "m.onnx")
    options = [kiln.CompileOptions(kiln.target("host"), tmp_path / "o.kiln",
                                   kiln.ImportOptions(frozen_inputs={"axes": (axis,)})) for axis in (1, 2)]
    assert fingerprint(model, options[0]) != fingerprint(model, options[1])


@pytest.mark.parametrize("frozen, message", [
    ({"nope": (1,)}, "names nope, but the model's inputs are x, axes"),
    ({"axes": (1, 2)}, "axes: 2 values, but the input is 1"),
    ({"axes": (1.5,)}, r"axes: \[1.5\] do not fit its type int64"),
])
def test_freezing_what_does_not_fit_is_a_setting_error(tmp_path: Path, frozen, message):
    options = kiln.CompileOptions(kiln.target("host"), tmp_path / "o.kiln", kiln.ImportOptions(frozen_inputs=frozen))
    with pytest.raises(SettingError, match=message):
        kiln.compile(_reduce_sum(tmp_path / "m.onnx"), options)
    assert not (tmp_path / "o.kiln").exists()


def test_freeze_flag_parses_names_and_numbers():
    assert frozen_input("scales=1,1,2.5,-2") == ("scales", (1, 1, 2.5, -2))
    with pytest.raises(ValueError, match="not NAME=VALUES"):
        frozen_input("scales")
    with pytest.raises(ValueError, match="not numbers"):
        frozen_input("scales=a,b")


def test_kiln_toml_freezes_with_a_table():
    from kiln.settings import from_raw

    assert from_raw(kiln.ImportOptions, {"freeze": {"scales": [1, 1, 2.5, 2.5], "axes": "1"}}).frozen_inputs == {
        "scales": (1, 1, 2.5, 2.5), "axes": (1,)}
