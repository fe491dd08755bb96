"""Train the small tree models that tests/test_trees*.py compile, with the real libraries.

Run from the repository root: `.venv/bin/python tests/models/trees/make_models.py`. It rewrites the
model files beside it and `heldout.npz` (held-out rows per data set, float32, some with NaNs).
Data comes from scikit-learn's bundled data sets (no download): breast_cancer (binary), wine
(multiclass), diabetes (regression). Categorical data sets turn one column into integer codes.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
NAN_FRACTION = 0.1
CATEGORIES = 6
# The column each `*_cat` data set turns into category codes: one the models split on (worst concave points,
# proline, bmi), so that categorical splits are really exercised.
CATEGORICAL_COLUMN = {"binary": 27, "multiclass": 12, "regression": 2}


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """name -> (train X, train y, held-out X), float32; `*_nan` sets have NaNs in train and test."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(SEED)
    sets = {}
    for name, loader in (("binary", load_breast_cancer), ("multiclass", load_wine), ("regression", load_diabetes)):
        X, y = loader(return_X_y=True)
        X = X.astype(np.float32)
        X_train, X_test, y_train, _ = train_test_split(X, y, test_size=40, random_state=SEED)
        sets[name] = (X_train, y_train, X_test)
        sets[f"{name}_nan"] = (_with_nans(X_train, rng), y_train, _with_nans(X_test, rng))
        column = CATEGORICAL_COLUMN[name]
        sets[f"{name}_cat"] = (_with_category(X_train, X, column), y_train, _with_category(X_test, X, column))
    return sets


def _with_nans(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    X = X.copy()
    X[rng.random(X.shape) < NAN_FRACTION] = np.nan
    return X


def _with_category(X: np.ndarray, reference: np.ndarray, column: int) -> np.ndarray:
    """`column` replaced by CATEGORIES integer codes (quantile bins of itself, in shuffled order), as float32."""
    edges = np.quantile(reference[:, column], np.linspace(0, 1, CATEGORIES + 1)[1:-1])
    shuffled = np.random.default_rng(SEED).permutation(CATEGORIES)  # so that code order does not follow value order
    X = X.copy()
    X[:, column] = shuffled[np.digitize(X[:, column], edges)].astype(np.float32)
    return X


XGB_OBJECTIVES = {"binary": {"objective": "binary:logistic"},
                  "multiclass": {"objective": "multi:softprob", "num_class": 3},
                  "regression": {"objective": "reg:squarederror"}}
LGB_OBJECTIVES = {"binary": {"objective": "binary"},
                  "multiclass": {"objective": "multiclass", "num_class": 3},
                  "regression": {"objective": "regression"}}


def train_xgboost(task: str, X: np.ndarray, y: np.ndarray, *, categorical: bool = False, rounds: int = 6):
    import xgboost as xgb

    column = CATEGORICAL_COLUMN[task]
    feature_types = ["c" if i == column else "q" for i in range(X.shape[1])] if categorical else None
    data = xgb.DMatrix(X, y, feature_types=feature_types, enable_categorical=categorical)
    params = {**XGB_OBJECTIVES[task], "max_depth": 3, "eta": 0.5, "seed": SEED, "nthread": 1}
    if categorical:
        params["max_cat_to_onehot"] = 1  # partition splits, not one-hot
    return xgb.train(params, data, num_boost_round=rounds)


def train_lightgbm(task: str, X: np.ndarray, y: np.ndarray, *, categorical: bool = False, rounds: int = 6):
    import lightgbm as lgb

    params = {**LGB_OBJECTIVES[task], "num_leaves": 8, "learning_rate": 0.4, "seed": SEED, "verbose": -1,
              "num_threads": 1, "min_data_in_leaf": 5, "min_data_per_group": 2, "cat_smooth": 0.1,
              "cat_l2": 0.1}
    data = lgb.Dataset(X, y, categorical_feature=[CATEGORICAL_COLUMN[task]] if categorical else "auto",
                       free_raw_data=False)
    return lgb.train(params, data, num_boost_round=rounds)


def sklearn_models(sets) -> dict[str, object]:
    from sklearn.ensemble import (ExtraTreesRegressor, GradientBoostingClassifier, GradientBoostingRegressor,
                                  HistGradientBoostingClassifier, HistGradientBoostingRegressor, IsolationForest,
                                  RandomForestClassifier)

    small = {"n_estimators": 4, "max_depth": 3, "random_state": SEED}
    hgb = {"max_iter": 4, "max_leaf_nodes": 6, "random_state": SEED}
    return {
        "rf_binary_nan": RandomForestClassifier(**small).fit(*sets["binary_nan"][:2]),
        "rf_multiclass": RandomForestClassifier(**small).fit(*sets["multiclass"][:2]),
        "et_regression": ExtraTreesRegressor(**small).fit(*sets["regression"][:2]),
        "gb_binary": GradientBoostingClassifier(**small).fit(*sets["binary"][:2]),
        "gb_multiclass": GradientBoostingClassifier(**small).fit(*sets["multiclass"][:2]),
        "gb_regression": GradientBoostingRegressor(**small).fit(*sets["regression"][:2]),
        "hgb_binary_nan": HistGradientBoostingClassifier(**hgb).fit(*sets["binary_nan"][:2]),
        "hgb_multiclass_cat": HistGradientBoostingClassifier(**hgb, categorical_features=[CATEGORICAL_COLUMN["multiclass"]]).fit(
            *sets["multiclass_cat"][:2]),
        "hgb_regression_nan": HistGradientBoostingRegressor(**hgb).fit(*sets["regression_nan"][:2]),
        "iforest": IsolationForest(n_estimators=5, max_samples=64, random_state=SEED).fit(sets["regression"][0]),
    }


def xgboost_legacy_binary(model_json: dict) -> bytes:
    """XGBoost's legacy binary format (dropped by XGBoost 3), written from its JSON form, for a gbtree model."""
    learner = model_json["learner"]
    params = learner["learner_model_param"]
    trees = learner["gradient_booster"]["model"]["trees"]
    num_class = int(params["num_class"])
    base_score = float(params["base_score"].strip("[]").split(",")[0])
    out = bytearray()
    # LearnerModelParam: base_score, num_feature, num_class, contain_extra_attrs, contain_eval_metrics,
    # major_version, minor_version, num_target, reserved[26]
    out += struct.pack("<fIiiiIIi", base_score, int(params["num_feature"]), num_class, 0, 0, 1, 7, 1)
    out += struct.pack("<26i", *[0] * 26)
    for name in (learner["objective"]["name"], "gbtree"):
        out += struct.pack("<Q", len(name)) + name.encode()
    # GBTreeModelParam: num_trees, num_roots (deprecated), num_feature, pad, num_pbuffer (deprecated),
    # num_output_group, size_leaf_vector, reserved[32]
    out += struct.pack("<iiiiqii", len(trees), 1, int(params["num_feature"]), 0, 0, max(num_class, 1), 0)
    out += struct.pack("<32i", *[0] * 32)
    for tree in trees:
        out += _legacy_tree(tree)
    tree_info = learner["gradient_booster"]["model"]["tree_info"]
    out += struct.pack(f"<{len(tree_info)}i", *tree_info)
    return bytes(out)


def _legacy_tree(tree: dict) -> bytes:
    left, right, parent = tree["left_children"], tree["right_children"], tree["parents"]
    count = len(left)
    # TreeParam: num_roots (deprecated), num_nodes, num_deleted, max_depth (deprecated), num_feature,
    # size_leaf_vector, reserved[31]
    out = bytearray(struct.pack("<6i", 1, count, 0, 0, int(tree["tree_param"]["num_feature"]), 0))
    out += struct.pack("<31i", *[0] * 31)
    for i in range(count):
        is_leaf = left[i] == -1
        index = tree["split_indices"][i] | (1 << 31 if tree["default_left"][i] else 0)
        index = 0 if is_leaf else index
        # the parent index has its top bit set for a left child; the root's parent is -1
        node_parent = 0xFFFFFFFF if i == 0 else parent[i] | (1 << 31 if left[parent[i]] == i else 0)
        out += struct.pack("<IiiIf", node_parent, left[i], right[i], index, tree["split_conditions"][i])
    for i in range(count):
        out += struct.pack("<fffi", tree["loss_changes"][i], tree["sum_hessian"][i], tree["base_weights"][i], 0)
    return bytes(out)


def main() -> None:
    import lightgbm  # noqa: F401  (fail early if a library is missing)
    import skops.io
    import xgboost  # noqa: F401

    sets = datasets()
    # Models are trained on data with NaNs (so that their default directions matter); tests run them on
    # held-out rows with and without NaNs. Each XGBoost storage format is covered by one task.
    xgb_suffix = {"binary": "json", "multiclass": "ubj", "regression": "json"}
    for task in ("binary", "multiclass", "regression"):
        train_xgboost(task, *sets[f"{task}_nan"][:2]).save_model(HERE / f"xgb_{task}_nan.{xgb_suffix[task]}")
        train_lightgbm(task, *sets[f"{task}_nan"][:2]).save_model(HERE / f"lgb_{task}_nan.txt")
        train_xgboost(task, *sets[f"{task}_cat"][:2], categorical=True).save_model(HERE / f"xgb_{task}_cat.json")
        train_lightgbm(task, *sets[f"{task}_cat"][:2], categorical=True).save_model(HERE / f"lgb_{task}_cat.txt")
    legacy = json.loads((HERE / "xgb_binary_nan.json").read_text())
    (HERE / "xgb_binary_nan_legacy.bin").write_bytes(xgboost_legacy_binary(legacy))
    for name, model in sklearn_models(sets).items():
        if name.startswith(("rf_", "iforest")):
            (HERE / f"sk_{name}.pkl").write_bytes(pickle.dumps(model, protocol=5))
        else:
            skops.io.dump(model, HERE / f"sk_{name}.skops", compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    np.savez_compressed(HERE / "heldout.npz", **{name: X_test for name, (_, _, X_test) in sets.items()})


if __name__ == "__main__":
    main()
