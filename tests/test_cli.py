"""The `kiln` command through click's CliRunner: exit codes, messages, --json, and no output on failure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from kiln.cli import cli
from kiln.errors import InputError, TargetError, UnsupportedOpError
from kiln.testing.models import op_chain
from kiln.testing.paths import DIGITS_CNN, DIGITS_TEST


@pytest.fixture(scope="module")
def digits_artifact(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    output = tmp_path_factory.mktemp("artifacts") / "digits.kiln"
    result = CliRunner().invoke(cli, ["compile", str(DIGITS_CNN), "--input-shape", "input:3x1x8x8",
                                      "-o", str(output), "--quiet"])
    assert result.exit_code == 0, result.output
    return output


def _images(count: int = 3) -> np.ndarray:
    return np.load(DIGITS_TEST)["input"][:count]


def test_compile_json(cli_runner, tmp_path: Path):
    output = tmp_path / "d.kiln"
    result = cli_runner.invoke(cli, ["compile", str(DIGITS_CNN), "--input-shape", "input:1x1x8x8", "-o",
                                     str(output), "--target", "x86-64", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    checked = shown.pop("verification")  # the check against ONNX Runtime (test_verification.py)
    assert shown == {"artifact": str(output), "target": "x86-64"}
    assert checked["passed"] and checked["reference"] == "ONNX Runtime on model.onnx"
    assert (output / "manifest.json").is_file()


def test_compile_default_output_name(cli_runner, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli_runner.invoke(cli, ["compile", str(DIGITS_CNN), "--input-shape", "input:1x1x8x8", "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "digits_cnn.kiln" / "manifest.json").is_file()


def test_run_writes_outputs_matching_the_library(cli_runner, digits_artifact: Path, tmp_path: Path):
    import kiln

    inputs, outputs = tmp_path / "x.npz", tmp_path / "y.npz"
    np.savez(inputs, input=_images())
    result = cli_runner.invoke(cli, ["run", str(digits_artifact), "--input", str(inputs), "--output", str(outputs)])
    assert result.exit_code == 0, result.output
    expected = kiln.load(digits_artifact).predict(_images())
    np.testing.assert_array_equal(np.load(outputs)["logits"], expected)


def test_run_json_prints_values(cli_runner, digits_artifact: Path, tmp_path: Path):
    inputs = tmp_path / "x.npy"
    np.save(inputs, _images())
    result = cli_runner.invoke(cli, ["run", str(digits_artifact), "--input", str(inputs), "--json"])
    assert result.exit_code == 0, result.output
    logits = json.loads(result.stdout)["outputs"]["logits"]
    assert logits["shape"] == [3, 10] and np.array(logits["values"]).shape == (3, 10)


@pytest.mark.parametrize("feed, message", [
    ({"image": _images()}, "missing input"),
    ({"input": _images(2)}, "shape 2x1x8x8"),
    ({"input": _images().astype(np.float64)}, "dtype float64"),
])
def test_run_rejects_wrong_inputs(cli_runner, digits_artifact: Path, tmp_path: Path, feed, message):
    inputs, outputs = tmp_path / "x.npz", tmp_path / "y.npz"
    np.savez(inputs, **feed)
    result = cli_runner.invoke(cli, ["run", str(digits_artifact), "--input", str(inputs), "--output", str(outputs)])
    assert result.exit_code == InputError.exit_code
    assert message in result.stderr
    assert not outputs.exists()


def test_inspect_lists_ops_and_io(cli_runner):
    result = cli_runner.invoke(cli, ["inspect", str(DIGITS_CNN), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ops"] == {"Conv": 3, "Relu": 3, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1, "MaxPool": 1}
    assert report["inputs"] == [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert report["unsupported"] == {}
    human = cli_runner.invoke(cli, ["inspect", str(DIGITS_CNN)])
    assert "Conv \u00d73" in human.stdout and "unsupported: none" in human.stdout


def test_inspect_reports_unsupported_ops(cli_runner, tmp_path: Path):
    model = op_chain(tmp_path / "model.onnx", ["Bernoulli", "Bernoulli", "Celu"])  # Celu: compiled as its function
    result = cli_runner.invoke(cli, ["inspect", str(model), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["unsupported"] == {"Bernoulli": ["bernoulli_0", "bernoulli_1"]}


def test_inspect_artifact_shows_manifest(cli_runner, digits_artifact: Path):
    result = cli_runner.invoke(cli, ["inspect", str(digits_artifact), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["target"]["name"] == "x86-64"


def test_targets_json_lists_presets(cli_runner):
    result = cli_runner.invoke(cli, ["targets", "--json"])
    assert result.exit_code == 0
    names = {p["name"] for p in json.loads(result.stdout)}
    assert {"x86-64", "x86-avx512", "x86-vnni", "aarch64", "cuda-sm80"} <= names


def test_bench_vs_onnxruntime(cli_runner, digits_artifact: Path):
    result = cli_runner.invoke(cli, ["bench", str(digits_artifact), "--vs", "onnxruntime", "--threads", "2",
                                     "--seconds", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["batch"] == 3 and report["threads"] == 2
    for engine in ("kiln", "onnxruntime"):
        timing = report[engine]
        assert 0 < timing["median_ms"] <= timing["p90_ms"] <= timing["p99_ms"]
        assert timing["repeats"] >= 10
    assert report["speedup"] == pytest.approx(report["onnxruntime"]["median_ms"] / report["kiln"]["median_ms"])
    assert report["max_abs_diff"] < 1e-4


def test_bench_profile_runs_for_the_time_given(cli_runner, digits_artifact: Path):
    """The digits CNN runs in tens of microseconds: a short budget gives fewer profiled runs than a longer one,
    never fewer than 3, and the text names the count."""
    def profiled_runs(seconds: str) -> int:
        result = cli_runner.invoke(cli, ["bench", str(digits_artifact), "--profile", "--seconds", seconds, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["profile_runs"]

    short, longer = profiled_runs("0.1"), profiled_runs("0.5")
    assert 3 <= short < longer
    text = cli_runner.invoke(cli, ["bench", str(digits_artifact), "--profile", "--seconds", "0.1"]).output
    assert re.search(r"median per run of \d+;", text), text


def test_bench_refuses_another_batch(cli_runner, digits_artifact: Path):
    result = cli_runner.invoke(cli, ["bench", str(digits_artifact), "--batch", "8"])
    assert result.exit_code == InputError.exit_code
    assert "--input-shape input:8x1x8x8" in result.stderr


def _compile_args(model: Path, output: Path, *extra: str) -> list[str]:
    return ["compile", str(model), "-o", str(output), "--input-shape", "input:1x1x8x8", *extra]


def test_missing_model_file(cli_runner, tmp_path: Path):
    result = cli_runner.invoke(cli, _compile_args(tmp_path / "nope.onnx", tmp_path / "o.kiln"))
    assert result.exit_code == InputError.exit_code
    assert "no such file" in result.stderr
    assert not (tmp_path / "o.kiln").exists()


def test_not_an_onnx_file(cli_runner, tmp_path: Path):
    model = tmp_path / "model.onnx"
    model.write_text("this is a text file, not a model\n")
    result = cli_runner.invoke(cli, _compile_args(model, tmp_path / "o.kiln"))
    assert result.exit_code == InputError.exit_code
    assert "unrecognised model format" in result.stderr
    assert not (tmp_path / "o.kiln").exists()


def test_truncated_onnx_file(cli_runner, tmp_path: Path):
    model = tmp_path / "model.onnx"
    model.write_bytes(DIGITS_CNN.read_bytes()[:5000])
    result = cli_runner.invoke(cli, _compile_args(model, tmp_path / "o.kiln", "--json"))
    assert result.exit_code == InputError.exit_code
    assert "truncated" in json.loads(result.stdout)["error"]
    assert not (tmp_path / "o.kiln").exists()


def test_unsupported_ops_exit_code(cli_runner, tmp_path: Path):
    model = op_chain(tmp_path / "model.onnx", ["Bernoulli", "RandomUniformLike", "Bernoulli"])  # no converter, no
    result = cli_runner.invoke(cli, ["compile", str(model), "-o", str(tmp_path / "o.kiln")])  # function TVM takes
    assert result.exit_code == UnsupportedOpError.exit_code
    assert "Bernoulli \u00d72 (nodes bernoulli_0, bernoulli_2)" in result.stderr
    assert "RandomUniformLike \u00d71" in result.stderr
    assert not (tmp_path / "o.kiln").exists()


def test_symbolic_dims_beyond_the_batch_need_input_shape(cli_runner, tmp_path: Path):
    from kiln.testing.onnx_graphs import GraphBuilder

    b = GraphBuilder("free")
    b.input("x", ["batch", "features"])
    b.node("Relu", ["x"], "y")
    b.output("y", ["batch", "features"])
    model = b.save(tmp_path / "free.onnx")
    result = cli_runner.invoke(cli, ["compile", str(model), "-o", str(tmp_path / "o.kiln")])
    assert result.exit_code == InputError.exit_code
    assert "--input-shape x:1x1" in result.stderr
    assert not (tmp_path / "o.kiln").exists()


def test_unknown_target_lists_presets(cli_runner, tmp_path: Path):
    result = cli_runner.invoke(cli, _compile_args(DIGITS_CNN, tmp_path / "o.kiln", "--target", "x86-avx51"))
    assert result.exit_code == TargetError.exit_code
    assert "Did you mean x86-avx512" in result.stderr and "x86-vnni" in result.stderr
    assert not (tmp_path / "o.kiln").exists()


def test_output_that_is_a_regular_file(cli_runner, tmp_path: Path):
    output = tmp_path / "o.kiln"
    output.write_text("precious")
    result = cli_runner.invoke(cli, _compile_args(DIGITS_CNN, output))
    assert result.exit_code == InputError.exit_code
    assert "exists and is not a directory" in result.stderr
    assert output.read_text() == "precious"


def test_bad_input_shape_syntax_is_a_usage_error(cli_runner, tmp_path: Path):
    result = cli_runner.invoke(cli, _compile_args(DIGITS_CNN, tmp_path / "o.kiln", "--input-shape", "input:1xAx8"))
    assert result.exit_code == 2
    assert "NAME:DIMS" in result.output


def test_help_teaches_exit_codes(cli_runner):
    result = cli_runner.invoke(cli, ["compile", "--help"])
    assert result.exit_code == 0
    assert "--input-shape" in result.stdout and "Exit codes" in result.stdout


def test_an_input_shape_past_int32_is_a_usage_error(cli_runner, tmp_path: Path):
    """99999999999 overflowed TVM's int32 indices inside the build (exit 1, a traceback)."""
    result = cli_runner.invoke(cli, ["compile", str(DIGITS_CNN), "--input-shape", "input:99999999999x1x8x8", "-o",
                                     str(tmp_path / "d.kiln")])
    assert result.exit_code == 2 and "at most 2,147,483,647" in result.output
