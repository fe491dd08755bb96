"""The MXNet frontend through the CLI: the MXNet-trained digits CNN compiles and keeps its accuracy;
inspect reads MXNet models; bad inputs fail with the exit code and a message that names the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.cli import cli
from kiln.testing.paths import MXNET_DIGITS as DIGITS

SYMBOL, PARAMS = DIGITS / "digits-symbol.json", DIGITS / "digits-0000.params"


def test_digits_cnn_compiles_and_keeps_its_held_out_accuracy(cli_runner, tmp_path):
    import kiln

    test = np.load(DIGITS / "digits_test.npz")
    artifact = tmp_path / "digits.kiln"
    result = cli_runner.invoke(cli, ["compile", str(SYMBOL), "--params", str(PARAMS), "--input-shape",
                                     f"data:{len(test['labels'])}x1x8x8", "--target", "x86-64", "-o", str(artifact)])
    assert result.exit_code == 0, result.output
    (logits,) = kiln.load(artifact).run({"data": test["data"]}).values()
    accuracy = float((logits.argmax(axis=1) == test["labels"]).mean())
    assert accuracy == json.loads((DIGITS / "metrics.json").read_text())["mxnet_test_accuracy"]
    assert json.loads((artifact / "manifest.json").read_text())["source"]["format"] == "mxnet"


def test_inspect_reads_an_mxnet_model(cli_runner):
    result = cli_runner.invoke(cli, ["inspect", str(SYMBOL), "--params", str(PARAMS), "--input-shape",
                                     "data:1x1x8x8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["source"]["format"] == "mxnet"
    assert report["inputs"] == [{"name": "data", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert report["outputs"][0]["shape"] == [1, 10]
    assert report["unsupported"] == {}
    assert {"Conv", "BatchNormalization", "Gemm"} <= set(report["ops"])


@pytest.mark.parametrize("args, message", [
    ([str(SYMBOL), "--input-shape", "data:1x1x8x8"], "--params"),
    ([str(SYMBOL), "--params", str(PARAMS)], "--input-shape"),
    ([str(PARAMS)], "pass the symbol JSON as the model"),
    ([str(SYMBOL), "--params", str(PARAMS), "--input-shape", "image:1x1x8x8"], "inputs are data"),
])
def test_mistakes_name_their_fix(cli_runner, args, message):
    result = cli_runner.invoke(cli, ["inspect", *args])
    assert result.exit_code == 3, result.output
    assert message in result.output


def _with_unsupported_ops(tmp_path) -> Path:
    """The digits symbol with ops kiln does not convert (by op, and by attribute value) after its output."""
    document = json.loads(SYMBOL.read_text())
    nodes = document["nodes"]
    last = len(nodes) - 1
    nodes += [{"op": "Correlation", "name": "corr0", "inputs": [[last, 0, 0]]},
              {"op": "Activation", "name": "act0", "attrs": {"act_type": "swish"}, "inputs": [[last, 0, 0]]},
              {"op": "ROIPooling", "name": "roi0", "inputs": [[0, 0, 0]]},
              {"op": "add_n", "name": "sum0", "inputs": [[last + 1, 0, 0], [last + 2, 0, 0], [last + 3, 0, 0]]}]
    document["heads"] = [[last + 4, 0, 0]]
    symbol = tmp_path / "broken-symbol.json"
    symbol.write_text(json.dumps(document))
    return symbol


def test_every_unsupported_op_is_reported_at_once(cli_runner, tmp_path):
    result = cli_runner.invoke(cli, ["compile", str(_with_unsupported_ops(tmp_path)), "--params", str(PARAMS),
                                     "--input-shape", "data:1x1x8x8", "-o", str(tmp_path / "broken.kiln")])
    assert result.exit_code == 4, result.output
    for expected in ("Correlation ×1 (nodes corr0)", "ROIPooling ×1 (nodes roi0)",
                     "Activation(act_type=swish) ×1 (nodes act0)"):
        assert expected in result.output


def test_inspect_lists_the_ops_kiln_cannot_convert(cli_runner, tmp_path):
    """As for ONNX models: listed with their nodes, exit 0."""
    args = ["inspect", str(_with_unsupported_ops(tmp_path)), "--params", str(PARAMS), "--input-shape", "data:1x1x8x8"]
    result = cli_runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["unsupported"] == {"Correlation": ["corr0"], "ROIPooling": ["roi0"],
                                     "Activation(act_type=swish)": ["act0"]}
    assert report["ops"]["Convolution"] == 3 and report["ops"]["Activation"] == 4 and report["ops"]["add_n"] == 1
    assert report["inputs"] == [{"name": "data", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert report["outputs"] == [{"name": "sum0_output", "shape": ["?"], "dtype": "unknown"}]
    assert report["source"]["format"] == "mxnet"
    human = cli_runner.invoke(cli, args)
    assert human.exit_code == 0, human.output
    assert ("unsupported: Correlation ×1 (corr0), Activation(act_type=swish) ×1 (act0), ROIPooling ×1 (roi0)"
            in human.stdout)


def test_mxnet_model_quantizes_like_an_onnx_one(cli_runner, tmp_path):
    """INT8 applies to MXNet graphs too: batch norm folded, calibrated, compiled, top-1 kept within a point."""
    test = np.load(DIGITS / "digits_test.npz")
    calib = tmp_path / "calib.npz"
    np.savez(calib, data=test["data"][:100])
    artifact = tmp_path / "digits-int8.kiln"
    result = cli_runner.invoke(cli, ["compile", str(SYMBOL), "--params", str(PARAMS), "--input-shape",
                                     "data:1x1x8x8", "-o", str(artifact), "--int8", "--calib", str(calib),
                                     "--eval", str(DIGITS / "digits_test.npz"), "--max-accuracy-drop", "1.0",
                                     "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["source"]["format"] == "mxnet"
    accuracy = manifest["quantization"]["accuracy"]
    assert accuracy["drop"] <= 1.0, accuracy
    import onnx

    qdq = onnx.load(str(artifact / "model.int8.onnx"))
    ops = {node.op_type for node in qdq.graph.node}
    assert "QuantizeLinear" in ops and "BatchNormalization" not in ops
