"""The fitted trees of scikit-learn estimators checked before treelite imports them (see validate.py).

treelite copies each tree's `tree_` arrays (children_left/right, feature, threshold, value,
n_node_samples, ...) with the shapes it expects and hands them to C++ with the tree count the
estimator declares; HistGradientBoosting's TreePredictor node records go the same way. A shape, a
count or an index that disagrees is read out of bounds there, so each is checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kiln.compiler.frontends.source_format import SourceFormat
from kiln.compiler.frontends.trees.validate import (CORRUPT, Forest, check_file, check_forest, check_indices,
                                                    check_lightgbm, corrupt)
from kiln.errors import InputError

_LEAF = -1  # sklearn's TREE_LEAF, in children_left
_UNDEFINED = -2  # sklearn's TREE_UNDEFINED, a leaf's feature
_BITSET_WORDS = 8  # 256 categories, as 32-bit words
_NODE_ARRAYS = ("children_left", "children_right", "feature", "threshold", "n_node_samples", "weighted_n_node_samples",
                "impurity", "missing_go_to_left")


def check_native(path: Path, model: Any) -> None:
    """Check the trees of a model object from a pickle or skops file, before treelite imports it."""
    module = type(model).__module__.split(".")[0]
    try:
        if module == "xgboost":
            booster = model.get_booster() if hasattr(model, "get_booster") else model
            check_file(path, SourceFormat.XGBOOST_JSON, bytes(booster.save_raw(raw_format="json")))
        elif module == "lightgbm":
            check_lightgbm(path, getattr(model, "booster_", model).model_to_string().encode())
    except (AttributeError, ValueError):  # not fitted (and not serializable): treelite's import says so
        return
    if module == "sklearn":
        check_sklearn(path, model)


def check_sklearn(path: Path, model: Any) -> None:
    """RandomForest/ExtraTrees, GradientBoosting, IsolationForest and HistGradientBoosting models; other
    estimators are left to treelite, which refuses them."""
    if hasattr(model, "_predictors"):
        _check_hist_gradient_boosting(path, model, _count(path, model, "n_features_in_"))
    elif hasattr(model, "estimators_"):
        _check_tree_ensemble(path, model)


def _count(path: Path, owner: Any, name: str, minimum: int = 1) -> int:
    value = getattr(owner, name, None)
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{path}: {type(owner).__name__}.{name} is {value!r}, not an integer of {minimum} or more; "
                         "the estimator is not fitted, or the file is corrupt (fit and save it again)")
    return int(value)


def _check_tree_ensemble(path: Path, model: Any) -> None:
    from sklearn.ensemble import (ExtraTreesClassifier, ExtraTreesRegressor, GradientBoostingClassifier,
                                  GradientBoostingRegressor, IsolationForest, RandomForestClassifier,
                                  RandomForestRegressor)

    estimators = model.estimators_
    if isinstance(model, (GradientBoostingClassifier, GradientBoostingRegressor)):
        classes = _count(path, model, "n_classes_") if isinstance(model, GradientBoostingClassifier) else 1
        expected = (_count(path, model, "n_estimators_"), 1 if classes <= 2 else classes)
        if np.shape(estimators) != expected:
            raise InputError(f"{path}: estimators_ has shape {np.shape(estimators)} where n_estimators_ and the "
                             f"classes call for {expected}; {CORRUPT}")
        estimators, value_shape = list(np.ravel(estimators)), (1, 1)
    elif isinstance(model, (RandomForestClassifier, ExtraTreesClassifier, RandomForestRegressor, ExtraTreesRegressor,
                            IsolationForest)):
        if len(estimators) != _count(path, model, "n_estimators"):
            raise InputError(f"{path}: estimators_ holds {len(estimators)} trees where n_estimators is "
                             f"{model.n_estimators}; {CORRUPT}")
        value_shape = (1, 1) if isinstance(model, IsolationForest) else (_count(path, model, "n_outputs_"), 1)
        if isinstance(model, (RandomForestClassifier, ExtraTreesClassifier)):
            classes = np.atleast_1d(model.n_classes_)
            if classes.size < 1 or classes.min() < 1:
                raise InputError(f"{path}: n_classes_ is {model.n_classes_}; every output has a class at least; "
                                 f"{CORRUPT}")
            value_shape = (value_shape[0], int(classes.max()))
    else:
        return
    num_feature = _count(path, model, "n_features_in_")
    trees = [getattr(estimator, "tree_", None) for estimator in estimators]
    for index, tree in enumerate(trees):
        _check_tree_arrays(path, index, tree, value_shape)
    sizes = [tree.node_count for tree in trees]
    start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    left, right, feature = (np.concatenate([getattr(tree, name) for tree in trees]).astype(np.int64)
                            for name in ("children_left", "children_right", "feature"))
    forest = Forest(path, start, left, right, left == _LEAF, ("children_left", "children_right"))
    check_forest(forest)
    if isinstance(model, IsolationForest):
        _check_iforest_features(path, model, forest, feature, num_feature)
    else:
        check_indices(forest, feature, num_feature, "feature", "features of the model (n_features_in_)")


def _check_tree_arrays(path: Path, index: int, tree: Any, value_shape: tuple[int, int]) -> None:
    if tree is None or not isinstance(getattr(tree, "node_count", None), (int, np.integer)) or tree.node_count < 1:
        raise corrupt(path, index, "", "the estimator has no fitted tree_ (node_count of 1 or more)")
    count = int(tree.node_count)
    for name in _NODE_ARRAYS:
        shape = np.shape(getattr(tree, name, None))
        if shape != (count,):
            raise corrupt(path, index, "", f"tree_.{name} has shape {shape} for the tree's {count} nodes (node_count)")
    if np.shape(tree.value) != (count, *value_shape):
        raise corrupt(path, index, "", f"tree_.value has shape {np.shape(tree.value)} where the model's outputs call "
                                       f"for {(count, *value_shape)}")


def _check_iforest_features(path: Path, model: Any, forest: Forest, feature: np.ndarray, num_feature: int) -> None:
    """An IsolationForest tree numbers the features it was given: tree i's feature k is estimators_features_[i][k]."""
    subsets = list(getattr(model, "estimators_features_", ()))
    if len(subsets) != len(forest.start) - 1:
        raise InputError(f"{path}: estimators_features_ lists {len(subsets)} feature subsets for "
                         f"{len(forest.start) - 1} trees; {CORRUPT}")
    for index, subset in enumerate(subsets):
        subset = np.asarray(subset)
        if subset.ndim != 1 or subset.dtype.kind not in "iu" or np.any((subset < 0) | (subset >= num_feature)):
            raise corrupt(path, index, "", f"estimators_features_[{index}] is not a list of the model's {num_feature} "
                                           "feature indices (n_features_in_)")
    per_node = np.repeat([len(subset) for subset in subsets], np.diff(forest.start))
    check_indices(forest, feature, per_node, "feature", "features the tree was grown on (estimators_features_)")
    # treelite maps every node's feature but scikit-learn's "undefined" through the subset, leaves' too
    bad = forest.leaf & (feature != _UNDEFINED) & ((feature < 0) | (feature >= per_node))
    if bad.any():
        tree, node = forest.locate(int(np.argmax(bad)))
        raise corrupt(path, tree, f"node {node}", f"feature {int(feature[np.argmax(bad)])} on a leaf, which holds "
                                                  f"{_UNDEFINED} or one of the tree's features")


def _check_hist_gradient_boosting(path: Path, model: Any, num_feature: int) -> None:
    rounds, per_round = model._predictors, _count(path, model, "n_trees_per_iteration_")
    if hasattr(model, "classes_") and per_round != (1 if len(model.classes_) <= 2 else len(model.classes_)):
        # treelite takes the class count from classes_, and a tree per class per round when there are 3 or more
        raise InputError(f"{path}: n_trees_per_iteration_ {per_round} does not fit the {len(model.classes_)} classes "
                         f"of classes_; {CORRUPT}")
    if len(rounds) != _count(path, model, "n_iter_") or any(len(trees) != per_round for trees in rounds):
        raise InputError(f"{path}: _predictors holds {[len(trees) for trees in rounds][:8]} trees per round where "
                         f"n_iter_ {model.n_iter_} rounds of n_trees_per_iteration_ {per_round} are declared; {CORRUPT}")
    predictors = [predictor for trees in rounds for predictor in trees]
    records = [getattr(predictor, "nodes", None) for predictor in predictors]
    for index, nodes in enumerate(records):
        names = getattr(getattr(nodes, "dtype", None), "names", None) or ()
        if np.ndim(nodes) != 1 or len(nodes) < 1 or not {"left", "right", "is_leaf", "feature_idx"} <= set(names):
            raise corrupt(path, index, "", "the TreePredictor holds no node records (nodes)")
    start = np.concatenate([[0], np.cumsum([len(nodes) for nodes in records])]).astype(np.int64)
    left, right, feature, leaf, categorical, bitset = (
        np.concatenate([nodes[name] for nodes in records]).astype(np.int64)
        for name in ("left", "right", "feature_idx", "is_leaf", "is_categorical", "bitset_idx"))
    forest = Forest(path, start, left, right, leaf != 0, ("nodes['left']", "nodes['right']"))
    check_forest(forest)
    # scikit-learn takes is_leaf for a leaf, treelite a left child of 0; is_categorical == 1 for a category split
    wrong = ((leaf != 0) != (left == 0)) | (leaf > 1) | (categorical > 1)
    if wrong.any():
        tree, node = forest.locate(int(np.argmax(wrong)))
        index = start[tree] + node
        raise corrupt(path, tree, f"node {node}", f"nodes['is_leaf'] {leaf[index]}, nodes['is_categorical'] "
                                                  f"{categorical[index]} and nodes['left'] {left[index]} disagree "
                                                  "(flags are 0 or 1, and a leaf's left is 0)")
    check_indices(forest, feature, num_feature, "nodes['feature_idx']", "features of the model (n_features_in_)")
    for index, predictor in enumerate(predictors):
        shape = np.shape(getattr(predictor, "raw_left_cat_bitsets", None))
        if len(shape) != 2 or shape[1] != _BITSET_WORDS:
            raise corrupt(path, index, "", f"raw_left_cat_bitsets has shape {shape}, not (splits, {_BITSET_WORDS})")
    bitsets = np.repeat([len(predictor.raw_left_cat_bitsets) for predictor in predictors], np.diff(start))
    check_indices(forest, np.where(categorical != 0, bitset, 0), np.where(categorical != 0, bitsets, 1),
                  "nodes['bitset_idx']", "category bitsets of the tree (raw_left_cat_bitsets)")
    # Nodes number features as the bin mapper does (categorical ones first since scikit-learn 1.4), and
    # treelite looks a categorical split's known categories up by that number.
    declared = getattr(getattr(model, "_bin_mapper", None), "is_categorical", None)
    declared = np.zeros(num_feature, bool) if declared is None else np.asarray(declared, bool)
    if declared.shape != (num_feature,):
        raise InputError(f"{path}: _bin_mapper.is_categorical has shape {declared.shape} for the model's {num_feature} "
                         f"features; {CORRUPT}")
    wrong = forest.splits & (categorical != 0) & ~declared[np.clip(feature, 0, num_feature - 1)]
    if wrong.any():
        tree, node = forest.locate(int(np.argmax(wrong)))
        raise corrupt(path, tree, f"node {node}", f"a categorical split on feature {int(feature[start[tree] + node])}, "
                                                  "which _bin_mapper.is_categorical does not mark categorical")
    _check_known_categories(path, model, forest, predictors, feature, np.flatnonzero(forest.splits & (categorical != 0)),
                            bitset)


def _check_known_categories(path: Path, model: Any, forest: Forest, predictors: list, feature: np.ndarray,
                            splits: np.ndarray, bitset: np.ndarray) -> None:
    """treelite maps a category split's bits through the encoder's categories_ of its feature (scikit-learn
    1.4 on), reading one entry per set bit."""
    try:
        known = [len(categories) for categories in model._preprocessor.transformers_[0][1].categories_]
    except (AttributeError, IndexError, TypeError):  # no encoder: bits are the categories themselves
        return
    for index in splits.tolist():
        tree, node = forest.locate(index)
        words = np.ascontiguousarray(predictors[tree].raw_left_cat_bitsets[bitset[index]], dtype="<u4")
        bits = np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little"))
        limit = known[feature[index]] if feature[index] < len(known) else 0
        if bits.size and bits[-1] >= limit:
            raise corrupt(path, tree, f"node {node}", f"raw_left_cat_bitsets[{bitset[index]}] sets bit {bits[-1]}, past "
                                                      f"the {limit} known categories of feature {feature[index]}")
