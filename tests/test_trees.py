"""Tree ensembles compiled with tl2cgen give the native libraries' predictions, and fail clearly on bad input.

Models and held-out rows come from tests/models/trees/make_models.py (scikit-learn's bundled data).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.compiler.frontends import ImportOptions
from kiln.compiler.manifest import Precision
from kiln.errors import InputError, SettingError, TargetError
from kiln.settings import as_flags
from kiln.testing.paths import TREE_MODELS as MODELS
from kiln.testing.reference import compile_to

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def heldout() -> dict[str, np.ndarray]:
    with np.load(MODELS / "heldout.npz") as archive:
        return {name: archive[name] for name in archive.files}


def rows_for(data: str, heldout: dict[str, np.ndarray], with_nans: bool) -> np.ndarray:
    """Held-out rows of data set `data` without NaNs; with_nans adds them again with the NaNs of `TASK_nan`."""
    task = data.split("_")[0]
    rows = heldout[data.removesuffix("_nan")]
    if not with_nans:
        return rows
    return np.vstack([rows, np.where(np.isnan(heldout[f"{task}_nan"]), np.nan, rows)])


def compile_tree(model: Path, folder: Path, *, int8: bool = False, target: str = "x86-64",
                 trust_pickle: bool = False, calib: Path | None = None) -> Path:
    return compile_to(model, folder / f"{model.name}.kiln", target, imports=ImportOptions(trust_pickle=trust_pickle),
                      precision=Precision.INT8 if int8 else Precision.FP32, calib=calib)


def native_outputs(model_file: str, rows: np.ndarray) -> np.ndarray:
    """What the framework itself predicts, as rows x outputs (the layout kiln documents)."""
    path = MODELS / model_file
    if model_file.startswith("xgb_"):
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(bytearray(path.read_bytes()))
        return booster.inplace_predict(rows).reshape(len(rows), -1)
    if model_file.startswith("lgb_"):
        import lightgbm

        return lightgbm.Booster(model_file=str(path)).predict(rows).reshape(len(rows), -1)
    model = _load_sklearn(path)
    if model_file.startswith("sk_iforest"):
        return -model.score_samples(rows).reshape(len(rows), 1)
    if model_file.startswith(("sk_gb_binary", "sk_hgb_binary")):  # one sigmoid output: the positive class
        return model.predict_proba(rows)[:, 1:]
    if hasattr(model, "predict_proba"):
        return model.predict_proba(rows)
    return model.predict(rows).reshape(len(rows), 1)


def _load_sklearn(path: Path):
    if path.suffix == ".pkl":
        return pickle.loads(path.read_bytes())  # our own committed test model
    import skops.io

    return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))


# (model file, held-out data set, test rows with NaNs too)
CASES = [
    ("xgb_binary_nan.json", "binary_nan", True),
    ("xgb_binary_nan_legacy.bin", "binary_nan", True),
    ("xgb_multiclass_nan.ubj", "multiclass_nan", True),
    ("xgb_regression_nan.json", "regression_nan", True),
    ("xgb_binary_cat.json", "binary_cat", True),
    ("xgb_multiclass_cat.json", "multiclass_cat", True),
    ("xgb_regression_cat.json", "regression_cat", True),
    ("lgb_binary_nan.txt", "binary_nan", True),
    ("lgb_multiclass_nan.txt", "multiclass_nan", True),
    ("lgb_regression_nan.txt", "regression_nan", True),
    ("lgb_binary_cat.txt", "binary_cat", True),
    ("lgb_multiclass_cat.txt", "multiclass_cat", True),
    ("lgb_regression_cat.txt", "regression_cat", True),
    ("sk_rf_binary_nan.pkl", "binary_nan", True),
    ("sk_rf_multiclass.pkl", "multiclass", False),
    ("sk_et_regression.skops", "regression", False),
    ("sk_gb_binary.skops", "binary", False),
    ("sk_gb_multiclass.skops", "multiclass", False),
    ("sk_gb_regression.skops", "regression", False),
    ("sk_hgb_binary_nan.skops", "binary_nan", True),
    ("sk_hgb_multiclass_cat.skops", "multiclass_cat", False),
    ("sk_hgb_regression_nan.skops", "regression_nan", True),
    ("sk_iforest.pkl", "regression", False),
]
# Native references for the legacy binary format: XGBoost 3 cannot read it, so compare with the JSON it came from.
SAME_MODEL = {"xgb_binary_nan_legacy.bin": "xgb_binary_nan.json"}


# Threshold quantization on one model per framework and task (each compile takes a second or two).
INT8_CASES = [case for case in CASES if case[0].startswith(("xgb_", "lgb_")) and "legacy" not in case[0]] + [
    case for case in CASES if case[0] in ("sk_rf_binary_nan.pkl", "sk_hgb_multiclass_cat.skops", "sk_iforest.pkl")]


@pytest.mark.parametrize("model_file,data,with_nans,int8", [case + (False,) for case in CASES] + [
    case + (True,) for case in INT8_CASES], ids=[c[0] for c in CASES] + [f"{c[0]}-int8" for c in INT8_CASES])
def test_compiled_predictions_equal_native(model_file, data, with_nans, int8, heldout, tmp_path):
    rows = rows_for(data, heldout, with_nans)
    artifact = compile_tree(MODELS / model_file, tmp_path, int8=int8, trust_pickle=True)
    predictor = kiln.load(artifact)
    got = predictor.predict(rows)
    expected = native_outputs(SAME_MODEL.get(model_file, model_file), rows)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["backend"] == "tl2cgen" and manifest["tree"]["int8"] is int8
    assert manifest["tree"]["code"] == "node-walk"
    assert manifest["outputs"][0]["name"] == manifest["tree"]["output"]


def test_categorical_models_hold_categorical_splits():
    """The categorical cases above really exercise categorical splits (not just numeric ones)."""
    from kiln.compiler.frontends import load_graph
    from kiln.compiler.frontends.trees import summarize

    for model_file in [case[0] for case in CASES if "_cat" in case[0]]:
        assert summarize(load_graph(MODELS / model_file, ImportOptions()).body).categorical, model_file


def test_source_formats_are_detected_from_content_not_name(tmp_path):
    from kiln.compiler.frontends import SourceFormat, detect_format

    expected = {"xgb_binary_nan.json": SourceFormat.XGBOOST_JSON, "xgb_multiclass_nan.ubj": SourceFormat.XGBOOST_UBJSON,
                "xgb_binary_nan_legacy.bin": SourceFormat.XGBOOST_BINARY, "lgb_binary_nan.txt": SourceFormat.LIGHTGBM,
                "sk_iforest.pkl": SourceFormat.SKLEARN_PICKLE, "sk_gb_binary.skops": SourceFormat.SKOPS}
    for name, source_format in expected.items():
        renamed = tmp_path / f"model-{source_format.value}.dat"
        renamed.write_bytes((MODELS / name).read_bytes())
        assert detect_format(renamed) is source_format, name


def test_single_row_float64_and_threads_match_the_batch_path(heldout, tmp_path):
    artifact = compile_tree(MODELS / "xgb_multiclass_nan.ubj", tmp_path)
    rows = rows_for("multiclass_nan", heldout, with_nans=True)
    one_thread, two_threads = kiln.load(artifact, threads=1), kiln.load(artifact, threads=2)
    batch = one_thread.predict(rows)
    np.testing.assert_array_equal(one_thread.predict(rows[3]), batch[3])
    np.testing.assert_array_equal(one_thread.predict(rows.astype(np.float64)), batch)
    np.testing.assert_array_equal(one_thread.predict(np.asfortranarray(rows)), batch)
    many = np.tile(rows, (1000, 1))  # enough rows x trees to run on several threads
    np.testing.assert_array_equal(two_threads.predict(many), np.tile(batch, (1000, 1)))
    assert list(two_threads.run({"input": rows})) == ["probability"]


def test_calibration_data_annotates_branches(heldout, tmp_path):
    calib = tmp_path / "calib.csv"
    rows = rows_for("binary_nan", heldout, with_nans=True)  # NaN is a missing value, not bad data
    assert np.isnan(rows).any()
    np.savetxt(calib, rows, delimiter=",", header=",".join(f"f{i}" for i in range(rows.shape[1])))
    artifact = compile_tree(MODELS / "lgb_binary_nan.txt", tmp_path, int8=True, calib=calib)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["tree"]["annotated"] and manifest["precision"] == "int8"
    assert manifest["tree"]["code"] == "nested-if"  # annotations are for branches, which only nested ifs have
    np.testing.assert_allclose(kiln.load(artifact).predict(rows), native_outputs("lgb_binary_nan.txt", rows),
                               rtol=RTOL, atol=ATOL)


def test_big_models_are_split_into_bounded_translation_units():
    import treelite
    import xgboost

    from kiln.compiler.backends.treelite import NODES_PER_UNIT, parallel_comp

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8)).astype(np.float32)
    booster = xgboost.train({"max_depth": 3, "nthread": 1}, xgboost.DMatrix(X, X[:, 0] * X[:, 1]), 2000)
    model = treelite.frontend.from_xgboost(booster)
    nodes = sum(int(model.get_tree_accessor(i).get_field("num_nodes")[0]) for i in range(model.num_tree))
    units = parallel_comp(model)
    assert units > 1 and nodes / units <= NODES_PER_UNIT


# --- bad input ---------------------------------------------------------------------------------------------

class _CreatesFile:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_pickle_is_refused_without_trust_and_runs_no_code(tmp_path):
    witness = tmp_path / "pwned"
    malicious = tmp_path / "model.pkl"
    malicious.write_bytes(pickle.dumps(_CreatesFile(witness), protocol=4))
    with pytest.raises(SettingError) as error:
        compile_tree(malicious, tmp_path)
    assert "--trust-pickle" in as_flags(error.value)  # the library names the setting; the CLI shows its flag
    assert not witness.exists()
    assert not (tmp_path / "model.pkl.kiln").exists()


def test_skops_with_untrusted_types_is_refused(tmp_path):
    import os

    import skops.io

    model = tmp_path / "model.skops"
    skops.io.dump({"hook": os.system}, model)
    with pytest.raises(InputError, match="does not trust: .*system"):
        compile_tree(model, tmp_path)


def _truncated(name: str, tmp_path: Path) -> Path:
    data = (MODELS / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("name", ["xgb_binary_nan.json", "xgb_multiclass_nan.ubj", "xgb_binary_nan_legacy.bin",
                                  "lgb_binary_nan.txt", "sk_gb_binary.skops", "sk_iforest.pkl"])
def test_truncated_model_files_are_input_errors(name, tmp_path):
    with pytest.raises(InputError):
        compile_tree(_truncated(name, tmp_path), tmp_path, trust_pickle=True)


def test_corrupt_model_is_an_input_error(tmp_path):
    model = json.loads((MODELS / "xgb_binary_nan.json").read_text())
    model["learner"]["gradient_booster"]["model"]["trees"][0]["left_children"] = "corrupt"
    path = tmp_path / "corrupt.json"
    path.write_text(json.dumps(model))
    with pytest.raises(InputError, match="not a valid xgboost-json model"):
        compile_tree(path, tmp_path)


def test_model_without_trees_is_an_input_error(tmp_path):
    model = json.loads((MODELS / "xgb_regression_nan.json").read_text())
    booster = model["learner"]["gradient_booster"]["model"]
    booster["trees"], booster["tree_info"] = [], []
    booster["iteration_indptr"] = [0]
    booster["gbtree_model_param"]["num_trees"] = "0"
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(model))
    with pytest.raises(InputError, match="no trees"):
        compile_tree(path, tmp_path)


def test_wrong_feature_count_or_dtype_at_predict_time(heldout, tmp_path):
    predictor = kiln.load(compile_tree(MODELS / "lgb_binary_nan.txt", tmp_path))
    rows = heldout["binary"]
    with pytest.raises(InputError, match="rows of 30 features"):
        predictor.predict(rows[:, :29])
    with pytest.raises(InputError, match="dtype int64"):
        predictor.predict(rows.astype(np.int64))
    with pytest.raises(InputError, match="expected input"):
        predictor.run({"x": rows})


def test_missing_cross_compiler_names_the_debian_package(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(TargetError, match="apt-get install gcc-aarch64-linux-gnu"):
        compile_tree(MODELS / "lgb_binary_nan.txt", tmp_path, target="aarch64")


def test_gpu_targets_are_refused_for_trees(tmp_path):
    with pytest.raises(TargetError, match="CPU targets"):
        compile_tree(MODELS / "lgb_binary_nan.txt", tmp_path, target="cuda-sm80")


@pytest.mark.parametrize("framework", ["xgboost", "lightgbm"])
def test_single_tree_model(framework, heldout, tmp_path):
    """One tree is a group of one tree and 7 empty ones for the walker; with calibration data, tl2cgen
    inlines it into predict(), a path of its own in kiln."""
    rows = rows_for("regression_nan", heldout, with_nans=True)
    X = np.nan_to_num(rows[: len(rows) // 2])
    y = X[:, 2] * 3.0 + X[:, 8]
    if framework == "xgboost":
        import xgboost

        booster = xgboost.train({"max_depth": 3, "nthread": 1}, xgboost.DMatrix(X, y), 1)
        path, native = tmp_path / "one.json", booster.inplace_predict
    else:
        import lightgbm

        booster = lightgbm.train({"num_leaves": 4, "verbose": -1, "min_data_in_leaf": 2, "num_threads": 1},
                                 lightgbm.Dataset(X, y), 1)
        path, native = tmp_path / "one.txt", booster.predict
    booster.save_model(path)
    calib = tmp_path / "calib.npy"
    np.save(calib, X)
    for code, calibration in (("node-walk", None), ("nested-if", calib)):
        artifact = compile_tree(path, tmp_path, calib=calibration)
        tree = json.loads((artifact / "manifest.json").read_text())["tree"]
        assert (tree["code"], tree["parallel_comp"]) == (code, 1)
        np.testing.assert_allclose(kiln.load(artifact).predict(rows), native(rows).reshape(-1, 1), rtol=RTOL,
                                   atol=ATOL)
