"""Bad input that used to end in a traceback (exit 1) is a clean exit 3 or 5 naming the file, tensor or
parameter and the fix (#21 item 7)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from kiln.cli import cli
from kiln.testing.paths import DIGITS_CNN, MXNET_DIGITS


def _matmul_model(weight: onnx.TensorProto) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _compile(cli_runner, *args: str):
    return cli_runner.invoke(cli, ["compile", *args, "--quiet"])


def test_hard_linked_external_data_is_refused(cli_runner, tmp_path):
    model = _matmul_model(numpy_helper.from_array(np.ones((4, 4), np.float32), "w"))
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    os.rename(tmp_path / "m.data", tmp_path / "real.data")
    os.link(tmp_path / "real.data", tmp_path / "m.data")
    result = _compile(cli_runner, str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.kiln"))
    assert result.exit_code == 3, result.output
    assert "cannot read external data" in result.output and "hard links" in result.output


def test_raw_data_longer_than_the_dims_is_refused(cli_runner, tmp_path):
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weight.raw_data += b"\0" * 8
    onnx.save(_matmul_model(weight), str(tmp_path / "m.onnx"))
    result = _compile(cli_runner, str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.kiln"))
    assert result.exit_code == 3
    assert "tensor 'w' has 72 bytes of data, but its dims [4, 4] need 64" in result.output


def test_a_model_past_protobufs_limit_is_told_about_external_data(cli_runner, tmp_path):
    big = tmp_path / "big.onnx"
    with open(big, "wb") as stream:
        stream.write(DIGITS_CNN.read_bytes()[:64])  # an ONNX model's start, then zeros
        stream.truncate(2**31 + 1)  # sparse: no disk used
    result = cli_runner.invoke(cli, ["inspect", str(big)])
    assert result.exit_code == 3 and "save_as_external_data=True" in result.output


def test_a_host_compiler_in_the_cross_compilers_place_is_refused(cli_runner, tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "aarch64-linux-gnu-gcc").symlink_to(shutil.which("gcc"))
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    result = _compile(cli_runner, str(DIGITS_CNN), "--input-shape", "input:1x1x8x8", "-t", "aarch64",
                      "-o", str(tmp_path / "arm.kiln"))
    assert result.exit_code == 5, result.output
    assert "needs a compiler for aarch64" in result.output and "builds for x86_64" in result.output


def test_mxnet_parameters_that_do_not_match_the_symbol_are_named(cli_runner, tmp_path):
    symbol = json.loads((MXNET_DIGITS / "digits-symbol.json").read_text())
    for node in symbol["nodes"]:
        if node["op"] == "FullyConnected":
            node["attrs"]["num_hidden"] = "12"
    (tmp_path / "bad-symbol.json").write_text(json.dumps(symbol))
    result = _compile(cli_runner, str(tmp_path / "bad-symbol.json"), "--params",
                      str(MXNET_DIGITS / "digits-0000.params"), "--input-shape", "data:1x1x8x8",
                      "-o", str(tmp_path / "m.kiln"))
    assert result.exit_code == 3
    assert "parameter 'dense0_weight' has shape 10x32 in the .params file, but this op needs 12x32" in result.output


@pytest.fixture(scope="module")
def digits_artifact(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    output = tmp_path_factory.mktemp("digits") / "digits.kiln"
    result = CliRunner().invoke(cli, ["compile", str(DIGITS_CNN), "--input-shape", "input:1x1x8x8", "-o",
                                      str(output), "--quiet"])
    assert result.exit_code == 0, result.output
    return output


def test_a_manifest_whose_input_shape_disagrees_with_the_library(cli_runner, digits_artifact, tmp_path):
    edited = shutil.copytree(digits_artifact, tmp_path / "edited.kiln")
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["inputs"][0]["shape"] = [2, 1, 8, 8]
    (edited / "manifest.json").write_text(json.dumps(manifest))
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    result = cli_runner.invoke(cli, ["run", str(edited), "-i", str(tmp_path / "x.npy")])
    assert result.exit_code == 3
    assert "library takes input as R.Tensor((1, 1, 8, 8)" in result.output and "Rebuild it" in result.output
