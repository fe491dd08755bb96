"""Corrupt tree models are refused (exit 3, naming the tree, the node and the field) before native code reads them.

Each model is one that tests/models/trees/make_models.py trained with the real library, edited to hold
one defect. The CLI runs in a child process limited to 4 GiB of address space and a timeout: without
the checks these models crash treelite or the compiled library, or make it walk a cycle until memory
runs out, and the child's failure then fails the test instead of starving the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import resource
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.testing.paths import TREE_MODELS as MODELS

MEMORY_LIMIT = 4 << 30
TIMEOUT_S = 120


def _limit_resources() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (TIMEOUT_S, TIMEOUT_S))


def kiln(*args: str | Path) -> subprocess.CompletedProcess:
    """`python -m kiln ARGS` in a session of its own, which is killed whole afterwards: the CLI forks a worker
    process, which would outlive a killed CLI process."""
    # The CLI limits its worker by KILN_MEMORY_LIMIT_GB, which must stay under the limit set here.
    environment = {**os.environ, "KILN_MEMORY_LIMIT_GB": str(MEMORY_LIMIT / 2**30 * 3 / 4)}
    process = subprocess.Popen([sys.executable, "-m", "kiln", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environment, preexec_fn=_limit_resources,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_refused(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 3, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr[-3000:]}"
    assert expected in result.stderr, result.stderr
    assert "the model file is corrupt (re-export it)" in result.stderr


# --- XGBoost JSON ------------------------------------------------------------------------------------------

def _booster(model: dict) -> dict:
    return model["learner"]["gradient_booster"]["model"]


def _xgb_child_past_nodes(model: dict) -> str:
    tree = _booster(model)["trees"][3]
    tree["left_children"][0] = 40
    return f"tree 3, node 0: left_children 40 is past the tree's {len(tree['left_children'])} nodes"


def _xgb_negative_feature(model: dict) -> str:
    _booster(model)["trees"][2]["split_indices"][0] = -1
    return "tree 2, node 0: split_indices -1 is not one of the 30 features"


def _xgb_cycle(model: dict) -> str:
    tree = _booster(model)["trees"][1]
    assert tree["left_children"][1] != -1  # node 1 splits
    tree["left_children"][1] = 0
    return "tree 1, node 1: left_children 0 leads back to node 0"


def _xgb_shared_node(model: dict) -> str:
    tree = _booster(model)["trees"][1]
    shared = tree["left_children"][1]
    tree["left_children"][2] = shared  # nodes 1 and 2, the root's children, both split
    return f"tree 1, node 2: left_children {shared} names node {shared}, already the child of node 1"


def _xgb_duplicate_id(model: dict) -> str:
    _booster(model)["trees"][4]["id"] = 1
    return "tree 4: id 1 repeats tree 1's id"


def _xgb_num_trees(model: dict) -> str:
    _booster(model)["gbtree_model_param"]["num_trees"] = "5"
    return "gbtree_model_param.num_trees counts 5 trees but the model holds 6"


def _xgb_class_past_classes(model: dict) -> str:
    _booster(model)["tree_info"][-1] = 3
    return "tree 17: tree_info 3 is not one of the model's 3 classes"


def _xgb_no_target(model: dict) -> str:
    model["learner"]["learner_model_param"]["num_target"] = "0"
    return "num_target is 0, less than 1"


XGBOOST_CASES = {
    "child-past-nodes": ("xgb_binary_nan.json", _xgb_child_past_nodes),
    "negative-feature": ("xgb_binary_nan.json", _xgb_negative_feature),
    "cycle": ("xgb_binary_nan.json", _xgb_cycle),
    "shared-node": ("xgb_binary_nan.json", _xgb_shared_node),
    "duplicate-tree-id": ("xgb_regression_nan.json", _xgb_duplicate_id),
    "num-trees-mismatch": ("xgb_regression_nan.json", _xgb_num_trees),
    "class-past-classes": ("xgb_multiclass_cat.json", _xgb_class_past_classes),
    "no-target": ("xgb_regression_nan.json", _xgb_no_target),
}


@pytest.mark.parametrize("case", list(XGBOOST_CASES))
def test_corrupt_xgboost_json_is_refused(case, tmp_path):
    name, mutate = XGBOOST_CASES[case]
    model = json.loads((MODELS / name).read_text())
    expected = mutate(model)
    path = tmp_path / name
    path.write_text(json.dumps(model))
    assert_refused(kiln("inspect", path), f"{path}: {expected}")


def test_xgboost_json_with_a_byte_that_is_not_utf8_is_refused(tmp_path):
    """treelite's error for such a file is itself not UTF-8, and decoding it raised in kiln (exit 1)."""
    data = (MODELS / "xgb_binary_nan.json").read_bytes()
    at = data.index(b'"split_indices"') + 3
    path = tmp_path / "latin1.json"
    path.write_bytes(data[:at] + b"\xe9" + data[at:])
    result = kiln("inspect", path)
    assert result.returncode == 3, f"exit {result.returncode}:\n{result.stderr[-3000:]}"
    assert f"{path}: not a valid xgboost-json model ('utf-8' codec can't decode byte 0xe9" in result.stderr
    assert "export it again" in result.stderr


def test_feature_past_num_feature_is_refused_at_compile(tmp_path):
    """XGBoost compiled this model, and every `kiln run` of the artifact then read past the row."""
    model = json.loads((MODELS / "xgb_binary_nan.json").read_text())
    _booster(model)["trees"][2]["split_indices"][0] = 10**6
    path, artifact = tmp_path / "model.json", tmp_path / "model.kiln"
    path.write_text(json.dumps(model))
    assert_refused(kiln("compile", path, "-o", artifact, "--quiet"),
                   "tree 2, node 0: split_indices 1000000 is not one of the 30 features")
    assert not artifact.exists()


# --- XGBoost UBJSON and legacy binary: the same checks, on fields read without treelite ---------------------

def _patch_ubjson_int32(data: bytes, key: str, tree: int, node: int, value: int) -> bytes:
    """`data` with tree `tree`'s `key` array (XGBoost writes int32 arrays as [$l#L<count>) holding `value` at `node`."""
    at = -1
    for _ in range(tree + 1):
        at = data.index(key.encode(), at + 1)
    header = at + len(key)
    assert data[header:header + 5] == b"[$l#L"
    offset = header + 5 + 8 + 4 * node
    return data[:offset] + struct.pack(">i", value) + data[offset + 4:]


def test_corrupt_xgboost_ubjson_is_refused(tmp_path):
    data = (MODELS / "xgb_multiclass_nan.ubj").read_bytes()
    path = tmp_path / "cycle.ubj"
    path.write_bytes(_patch_ubjson_int32(data, "left_children", 5, 2, 0))
    assert_refused(kiln("inspect", path), "tree 5, node 2: left_children 0 leads back to node 0")
    path = tmp_path / "feature.ubj"
    path.write_bytes(_patch_ubjson_int32(data, "split_indices", 7, 0, 13))
    assert_refused(kiln("inspect", path), "tree 7, node 0: split_indices 13 is not one of the 13 features")


def _legacy_node_offset(data: bytes, tree: int, node: int) -> int:
    """Where node `node` of tree `tree` starts in an XGBoost legacy binary file (see make_models.py)."""
    offset = 136
    for _ in range(2):  # the objective's and the booster's names
        offset += 8 + struct.unpack_from("<Q", data, offset)[0]
    offset += 160
    for _ in range(tree):  # TreeParam, then 20 bytes per node and 16 of statistics
        offset += 148 + 36 * struct.unpack_from("<i", data, offset + 4)[0]
    return offset + 148 + 20 * node


def test_corrupt_xgboost_legacy_binary_is_refused(tmp_path):
    """treelite reads this format natively; kiln reads its trees in Python first."""
    data = bytearray((MODELS / "xgb_binary_nan_legacy.bin").read_bytes())
    node = _legacy_node_offset(bytes(data), 2, 1)
    struct.pack_into("<i", data, node + 8, 0)  # node 1's right child: the root
    path = tmp_path / "cycle.bin"
    path.write_bytes(bytes(data))
    assert_refused(kiln("inspect", path), "tree 2, node 1: right_children 0 leads back to node 0")


# --- LightGBM ----------------------------------------------------------------------------------------------

def _edit_lightgbm(text: str, tree: int, key: str, index: int, value: int) -> str:
    """`text` with entry `index` of tree `tree`'s `key` line set to `value`."""
    begin = text.index(f"\nTree={tree}\n")
    line = re.compile(rf"^{key}=(.*)$", re.MULTILINE).search(text, begin)
    values = line[1].split()
    values[index] = str(value)
    return text[:line.start(1)] + " ".join(values) + text[line.end(1):]


LIGHTGBM_CASES = {
    "child-past-nodes": (lambda text: _edit_lightgbm(text, 3, "left_child", 5, 40),
                         "tree 3, node 5: left_child 40 is past the tree's 7 internal nodes"),
    "leaf-past-leaves": (lambda text: _edit_lightgbm(text, 3, "right_child", 2, -20),
                         "tree 3, node 2: right_child -20 is leaf 19, past the tree's 8 leaves (num_leaves)"),
    "negative-feature": (lambda text: _edit_lightgbm(text, 4, "split_feature", 0, -3),
                         "tree 4, node 0: split_feature -3 is not one of the 30 features"),
    "feature-past-num-feature": (lambda text: _edit_lightgbm(text, 4, "split_feature", 6, 30),
                                 "tree 4, node 6: split_feature 30 is not one of the 30 features"),
    # left_child=1 0 ...: node 1 sends rows back to the root
    "cycle": (lambda text: _edit_lightgbm(text, 0, "left_child", 1, 0),
              "tree 0, node 1: left_child 0 leads back to node 0"),
    # the root's children, nodes 1 and 3, both split: node 3 takes node 1's left child as its own
    "shared-node": (lambda text: _edit_lightgbm(text, 0, "left_child", 3, 2),
                    "tree 0, node 3: left_child 2 names node 2, already the child of node 1"),
    "duplicate-tree-id": (lambda text: text.replace("\nTree=2\n", "\nTree=1\n"),
                          "tree 2: the tree's header line is 'Tree=1'"),
    "tree-count-mismatch": (lambda text: text[:text.index("Tree=5\n")] + text[text.index("end of trees"):],
                            "tree_sizes gives 6 sizes that do not match the 5 trees"),
    "no-class": (lambda text: text.replace("\nnum_class=1\n", "\nnum_class=0\n"),
                 "num_class=0 is not an integer of 1 or more"),
}


@pytest.mark.parametrize("case", list(LIGHTGBM_CASES))
def test_corrupt_lightgbm_is_refused(case, tmp_path):
    mutate, expected = LIGHTGBM_CASES[case]
    text = (MODELS / "lgb_binary_nan.txt").read_text()
    assert re.search(r"^Tree=0\nnum_leaves=8\n(.*\n){4}decision_type=.*\nleft_child=1 2 5 ", text, re.MULTILINE)
    path = tmp_path / "model.txt"
    path.write_text(mutate(text))
    assert_refused(kiln("inspect", path), f"{path}: {expected}")


def test_categorical_split_past_num_cat_is_refused(tmp_path):
    text = (MODELS / "lgb_binary_cat.txt").read_text()
    tree = re.search(r"\nTree=1\n(?:.*\n)*?decision_type=(.*)\n", text)
    node = tree[1].split().index("1")  # the tree's categorical split
    path = tmp_path / "model.txt"
    path.write_text(_edit_lightgbm(text, 1, "threshold", node, 4))
    assert_refused(kiln("compile", path, "-o", tmp_path / "model.kiln", "--quiet"),
                   f"tree 1, node {node}: threshold 4 is not one of the 1 categorical splits of the tree (num_cat)")


# --- scikit-learn ------------------------------------------------------------------------------------------

def _rf_tree(model: Any, index: int) -> Any:
    return model.estimators_[index].tree_


def _sk_child_past_nodes(model: Any) -> str:
    _rf_tree(model, 0).children_right[2] = 40
    return "tree 0, node 2: children_right 40 is past the tree's 9 nodes"


def _sk_negative_feature(model: Any) -> str:
    _rf_tree(model, 1).feature[4] = -5
    return "tree 1, node 4: feature -5 is not one of the 13 features"


def _sk_feature_past_features(model: Any) -> str:
    _rf_tree(model, 1).feature[0] = 13
    return "tree 1, node 0: feature 13 is not one of the 13 features"


def _sk_cycle(model: Any) -> str:
    _rf_tree(model, 3).children_left[9] = 8  # node 9 is node 8's left child
    return "tree 3, node 9: children_left 8 leads back to node 8"


def _sk_shared_node(model: Any) -> str:
    tree = _rf_tree(model, 3)  # the root's children, nodes 1 and 8, both split
    tree.children_left[8] = tree.children_left[1]
    return "tree 3, node 8: children_left 2 names node 2, already the child of node 1"


def _sk_tree_count(model: Any) -> str:
    model.n_estimators = 3
    return "estimators_ holds 4 trees where n_estimators is 3"


SKLEARN_CASES = {
    "child-past-nodes": _sk_child_past_nodes,
    "negative-feature": _sk_negative_feature,
    "feature-past-num-feature": _sk_feature_past_features,
    "cycle": _sk_cycle,
    "shared-node": _sk_shared_node,
    "tree-count-mismatch": _sk_tree_count,
}


@pytest.mark.parametrize("case", list(SKLEARN_CASES))
def test_corrupt_random_forest_is_refused(case, tmp_path):
    model = pickle.loads((MODELS / "sk_rf_multiclass.pkl").read_bytes())  # our own committed test model
    expected = SKLEARN_CASES[case](model)
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model, protocol=5))
    assert_refused(kiln("inspect", path, "--trust-pickle"), f"{path}: {expected}")


def _skops_model(name: str) -> Any:
    import skops.io

    return skops.io.load(MODELS / name, trusted=skops.io.get_untrusted_types(file=MODELS / name))


def test_corrupt_hist_gradient_boosting_is_refused(tmp_path):
    model = _skops_model("sk_hgb_regression_nan.skops")
    nodes = model._predictors[2][0].nodes
    split = int(np.flatnonzero(nodes["is_leaf"] == 0)[1])
    nodes["left"][split] = 0
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model, protocol=5))
    assert_refused(kiln("inspect", path, "--trust-pickle"),
                   f"tree 2, node {split}: nodes['left'] 0 leads back to node 0")


# --- models that are not corrupt ---------------------------------------------------------------------------

def _compile_and_predict(model_path: Path, folder: Path, rows: np.ndarray, *flags: str) -> np.ndarray:
    import kiln as kiln_library

    artifact = folder / "model.kiln"
    result = kiln("compile", model_path, "-o", artifact, "--quiet", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return kiln_library.load(artifact).predict(rows)


def test_pruned_xgboost_nodes_are_not_orphans(tmp_path):
    """XGBoost's exact method leaves pruned nodes in the arrays, marked deleted and reached from no node."""
    import xgboost

    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 5)).astype(np.float32)
    booster = xgboost.train({"tree_method": "exact", "gamma": 5.0, "max_depth": 5, "nthread": 1},
                            xgboost.DMatrix(X, X[:, 0] + rng.standard_normal(400)), 5)
    path = tmp_path / "pruned.json"
    booster.save_model(path)
    deleted = [int(tree["tree_param"]["num_deleted"]) for tree in _booster(json.loads(path.read_text()))["trees"]]
    assert sum(deleted) > 0
    got = _compile_and_predict(path, tmp_path, X)
    np.testing.assert_allclose(got.ravel(), booster.inplace_predict(X), rtol=1e-5, atol=1e-6)


def test_early_stopped_gradient_boosting_compiles(tmp_path):
    """treelite reads n_estimators trees, but a model that stopped early holds n_estimators_ (it read past them)."""
    from sklearn.ensemble import GradientBoostingRegressor

    with np.load(MODELS / "heldout.npz") as archive:
        rows = archive["regression"]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, rows.shape[1]))
    model = GradientBoostingRegressor(n_estimators=200, n_iter_no_change=2, max_depth=2, random_state=0).fit(
        X, X[:, 0] * 3 + rng.standard_normal(300))
    assert model.n_estimators_ < model.n_estimators
    path = tmp_path / "gb.pkl"
    path.write_bytes(pickle.dumps(model, protocol=5))
    got = _compile_and_predict(path, tmp_path, rows, "--trust-pickle")
    np.testing.assert_allclose(got.ravel(), model.predict(rows), rtol=1e-5, atol=1e-6)
