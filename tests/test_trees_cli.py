"""`kiln compile / run / bench --vs native / inspect` on tree models, through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.cli import cli
from kiln.testing.paths import TREE_MODELS as MODELS

XGB_MODEL = MODELS / "xgb_multiclass_nan.ubj"


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    with np.load(MODELS / "heldout.npz") as archive:
        return archive["multiclass_nan"]


@pytest.fixture(scope="module")
def xgb_artifact(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    output = tmp_path_factory.mktemp("cli") / "xgb.kiln"
    result = CliRunner().invoke(cli, ["compile", str(XGB_MODEL), "-o", str(output), "--int8", "--quiet"])
    assert result.exit_code == 0, result.output
    return output


def test_run_writes_the_native_predictions(cli_runner, xgb_artifact, rows, tmp_path):
    import xgboost

    inputs, outputs = tmp_path / "rows.npz", tmp_path / "out.npz"
    np.savez(inputs, input=rows)
    result = cli_runner.invoke(cli, ["run", str(xgb_artifact), "-i", str(inputs), "-o", str(outputs), "--threads", "1"])
    assert result.exit_code == 0, result.output
    booster = xgboost.Booster()
    booster.load_model(bytearray(XGB_MODEL.read_bytes()))
    with np.load(outputs) as got:
        np.testing.assert_allclose(got["probability"], booster.inplace_predict(rows), rtol=1e-5, atol=1e-6)


def test_run_with_wrong_feature_count_exits_3(cli_runner, xgb_artifact, rows, tmp_path):
    inputs = tmp_path / "rows.npy"
    np.save(inputs, rows[:, :5])
    result = cli_runner.invoke(cli, ["run", str(xgb_artifact), "-i", str(inputs)])
    assert result.exit_code == 3
    assert "rows of 13 features" in result.output


def test_bench_vs_native(cli_runner, xgb_artifact):
    result = cli_runner.invoke(cli, ["bench", str(xgb_artifact), "--vs", "native", "--batch", "50", "--threads", "1",
                                     "--seconds", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["speedup"] > 0 and report["max_abs_diff"] < 1e-5
    assert report["native"]["repeats"] >= 10


def test_bench_vs_onnxruntime_is_refused_for_trees(cli_runner, xgb_artifact):
    result = cli_runner.invoke(cli, ["bench", str(xgb_artifact), "--vs", "onnxruntime", "--seconds", "0.1"])
    assert result.exit_code == 3
    assert "use --vs native" in result.output


def test_inspect_model_and_artifact(cli_runner, xgb_artifact):
    result = cli_runner.invoke(cli, ["inspect", str(MODELS / "lgb_regression_cat.txt")])
    assert result.exit_code == 0, result.output
    assert "trees: 6, max depth" in result.output and "10 features" in result.output
    assert "categorical splits: yes" in result.output
    report = json.loads(cli_runner.invoke(cli, ["inspect", str(xgb_artifact), "--json"]).output)
    assert report["backend"] == "tl2cgen"
    assert report["tree"]["num_class"] == 3 and report["tree"]["int8"] is True
    assert report["source"]["format"] == "xgboost-ubjson"


def test_pickle_needs_trust_pickle(cli_runner, tmp_path):
    model = MODELS / "sk_rf_multiclass.pkl"
    refused = cli_runner.invoke(cli, ["inspect", str(model)])
    assert refused.exit_code == 3 and "--trust-pickle" in refused.output
    output = tmp_path / "rf.kiln"
    refused = cli_runner.invoke(cli, ["compile", str(model), "-o", str(output), "-q"])
    assert refused.exit_code == 3 and not output.exists()
    trusted = cli_runner.invoke(cli, ["compile", str(model), "-o", str(output), "-q", "--trust-pickle"])
    assert trusted.exit_code == 0, trusted.output
    report = json.loads(cli_runner.invoke(cli, ["inspect", str(output), "--json"]).output)
    assert report["source"]["format"] == "sklearn-pickle" and report["outputs"][0]["shape"] == ["batch", 3]


def test_corrupt_model_exits_3(cli_runner, tmp_path):
    model = tmp_path / "broken.json"
    model.write_bytes((MODELS / "xgb_binary_nan.json").read_bytes()[:500])
    result = cli_runner.invoke(cli, ["compile", str(model), "-o", str(tmp_path / "broken.kiln")])
    assert result.exit_code == 3
    assert "not a valid xgboost-json model" in result.output


def test_gpu_target_exits_5(cli_runner, tmp_path):
    result = cli_runner.invoke(cli, ["compile", str(XGB_MODEL), "-t", "cuda-sm80", "-o", str(tmp_path / "x.kiln")])
    assert result.exit_code == 5
