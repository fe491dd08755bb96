"""TfIdfVectorizer of an integer pool and ai.onnx.ml's TreeEnsemble compile and compute as ONNX Runtime (and ONNX's
reference, where the two agree), where kiln refused both: TVM's importer converts neither. What kiln does not
compute (string pools, post transforms) is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.errors import UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs


def _kiln(model: Path, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    artifact = compile_to(model, tmp_path / "m.kiln", "host", shapes={"x": x.shape}, verify=False)
    return kiln.load(artifact).run({"x": x})["y"]


def _tfidf(path: Path, x: np.ndarray, **attributes) -> Path:
    b = GraphBuilder("tfidf", opset=17)
    b.input("x", x.shape, TensorProto.INT32 if x.dtype == np.int32 else TensorProto.INT64)
    b.node("TfIdfVectorizer", ["x"], "y", **attributes)
    b.output("y", None)
    return b.save(path, infer_shapes=True)


_POOL = dict(ngram_counts=[0, 4, 10], pool_int64s=[2, 3, 5, 4, 5, 6, 7, 8, 6, 7, 2, 3, 5],
             ngram_indexes=[0, 1, 2, 3, 4, 5, 6, 7])
TFIDF_CASES = {
    # unigrams counted once whatever the skips, bigrams and the trigram at every skip up to 2
    "tf 1-3 grams, skips 2, [3, 7]": (np.array([[2, 3, 5, 4, 5, 6, 7], [7, 8, 6, 7, 2, 3, 5], [5, 5, 5, 4, 4, 4, 2]]),
                                      dict(mode="TF", min_gram_length=1, max_gram_length=3, max_skip_count=2, **_POOL)),
    "idf weighted, bigrams only, [11]": (np.array([5, 6, 0, 7, 8, 5, 6, 9, 6, 7, 5], np.int32),
                                         dict(mode="IDF", min_gram_length=2, max_gram_length=2, max_skip_count=1,
                                              weights=[0.5, 1.5, -2.0, 3.25, 7.0, 0.125, 9.0, 1.0], **_POOL)),
    "tfidf weighted, uni- and bigrams, [2, 5]": (np.array([[2, 2, 3, 4, 4], [6, 7, 6, 7, 6]]),
                                                 dict(mode="TFIDF", min_gram_length=1, max_gram_length=2,
                                                      max_skip_count=3,
                                                      weights=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], **_POOL)),
    # two n-grams counted at one coordinate, an unweighted IDF (1 where found)
    "idf shared coordinate, [4, 3]": (np.array([[2, 3, 9], [4, 4, 4], [8, 8, 8], [5, 4, 2]], np.int32),
                                      dict(mode="IDF", min_gram_length=1, max_gram_length=1, max_skip_count=0,
                                           ngram_counts=[0], pool_int64s=[2, 3, 4, 5], ngram_indexes=[1, 1, 0, 2])),
    # rows too short for any bigram: all zeros
    "tf bigrams over one token, [3, 1]": (np.array([[5], [6], [7]]),
                                          dict(mode="TF", min_gram_length=2, max_gram_length=2, max_skip_count=4,
                                               **_POOL)),
}


@pytest.mark.parametrize("case", TFIDF_CASES)
def test_tfidf_vectorizer_matches_onnx_runtime(case: str, tmp_path: Path):
    x, attributes = TFIDF_CASES[case]
    model = _tfidf(tmp_path / "t.onnx", x, **attributes)
    expected = onnxruntime_outputs(model, {"x": x})[0]
    if "weights" in attributes or attributes["mode"] == "TF":  # ONNX's reference raises on weighting without them
        np.testing.assert_array_equal(ReferenceEvaluator(str(model)).run(None, {"x": x})[0], expected)
    got = _kiln(model, x, tmp_path)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_tfidf_pool_value_an_int32_input_cannot_hold_matches_nothing(tmp_path: Path):
    x = np.array([[1, 2, 3, -1]], np.int32)
    attributes = dict(mode="TF", min_gram_length=1, max_gram_length=1, max_skip_count=0, ngram_counts=[0],
                      pool_int64s=[2, 2**32 + 3, -1, 2**32 - 1], ngram_indexes=[0, 1, 2, 3])
    model = _tfidf(tmp_path / "t.onnx", x, **attributes)
    np.testing.assert_array_equal(_kiln(model, x, tmp_path), [[1, 0, 1, 0]])


def test_tfidf_of_a_string_pool_is_refused_with_the_reason(tmp_path: Path):
    b = GraphBuilder("tfidf", opset=17)
    b.input("x", (2, 3), TensorProto.STRING)
    b.node("TfIdfVectorizer", ["x"], "y", name="tfidf", mode="TF", min_gram_length=1, max_gram_length=1,
           max_skip_count=0, ngram_counts=[0], pool_strings=["a", "b"], ngram_indexes=[0, 1])
    b.output("y", (2, 2))
    model = b.save(tmp_path / "t.onnx")
    with pytest.raises(UnsupportedOpError) as raised:
        compile_to(model, tmp_path / "t.kiln", "host", verify=False)
    assert raised.value.unsupported == {
        "TfIdfVectorizer (pool_strings (string input; kiln counts integer pools only))": ["tfidf"]}


# Three trees over 3 features: every mode, a NaN split, a set (of integers: ONNX Runtime takes no others), NaNs
# tracked to the true branch, a one-leaf tree (its leaf numbered as its root, which ONNX's reference needs), and
# targets 0 .. 2 of 4 (target 3 no leaf reaches).
_NODES = dict(
    nodes_featureids=[0, 1, 2, 1, 0, 2, 1, 0], nodes_modes=[0, 1, 6, 2, 3, 4, 5, 0],
    nodes_splits=[0.5, -1.25, np.nan, 3.0, 2.0, 7.0, 0.0, 0.0],
    nodes_truenodeids=[1, 0, 1, 2, 5, 4, 5, 7], nodes_falsenodeids=[2, 3, 6, 3, 6, 7, 8, 7],
    nodes_trueleafs=[0, 1, 1, 1, 0, 1, 1, 1], nodes_falseleafs=[0, 0, 1, 1, 0, 1, 1, 1],
    nodes_missing_value_tracks_true=[1, 0, 0, 1, 0, 1, 0, 0], tree_roots=[0, 4, 7],
    leaf_targetids=[0, 1, 2, 0, 1, 2, 0, 1, 2], membership_values=[1.0, 4.0, -3.0, np.nan],
    leaf_weights=[1.5, -2.25, 0.1, 10.0, 1e-3, 3.3, -7.5, 0.7, 1e8])


def _tree_ensemble(path: Path, dtype: int, rows: int, aggregate: int, post_transform: int = 0, **changes) -> Path:
    numpy_type = np.float32 if dtype == TensorProto.FLOAT else np.float64
    attributes = {**_NODES, "n_targets": 4, **changes}
    attributes = {name: numpy_helper.from_array(np.array(value, np.uint8 if name == "nodes_modes" else numpy_type))
                  if name in ("nodes_modes", "nodes_splits", "membership_values", "leaf_weights") else value
                  for name, value in attributes.items()}
    node = helper.make_node("TreeEnsemble", ["x"], ["y"], name="trees", domain="ai.onnx.ml",
                            aggregate_function=aggregate, post_transform=post_transform, **attributes)
    graph = helper.make_graph([node], "trees", [helper.make_tensor_value_info("x", dtype, [rows, 3])],
                              [helper.make_tensor_value_info("y", dtype, [rows, attributes["n_targets"]])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 5)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


_ROWS = np.array([[0.5, -1.25, 1.0], [0.4, -2.0, 4.0], [np.nan, 3.0, 7.0], [2.5, np.nan, -3.0], [0.6, 0.0, np.nan],
                  [-0.0, 3.5, 7.0], [2.0, -1.25, 0.0]])


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
@pytest.mark.parametrize("aggregate", [0, 1, 2, 3], ids=["average", "sum", "min", "max"])
def test_tree_ensemble_matches_onnx_runtime(dtype: int, aggregate: int, tmp_path: Path):
    x = _ROWS.astype(np.float32 if dtype == TensorProto.FLOAT else np.float64)
    # MIN and MAX: every target reached (trees 0 and 2 give targets 0 and 1 alone)
    changes = dict(n_targets=2, leaf_targetids=[0, 0, 0, 0, 1, 0, 0, 1, 1]) if aggregate in (2, 3) else {}
    model = _tree_ensemble(tmp_path / "t.onnx", dtype, len(x), aggregate, **changes)
    expected = onnxruntime_outputs(model, {"x": x})[0]
    got = _kiln(model, x, tmp_path)
    assert got.dtype == x.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_array_equal(got, ReferenceEvaluator(str(model)).run(None, {"x": x})[0])


def test_tree_ensemble_with_a_post_transform_is_refused_with_the_reason(tmp_path: Path):
    model = _tree_ensemble(tmp_path / "t.onnx", TensorProto.FLOAT, 2, 1, post_transform=2)
    with pytest.raises(UnsupportedOpError) as raised:
        compile_to(model, tmp_path / "t.kiln", "host", verify=False)
    assert raised.value.unsupported == {
        "ai.onnx.ml.TreeEnsemble (domain ai.onnx.ml; post_transform 2 (kiln computes NONE only))": ["trees"]}


def test_tree_ensemble_min_with_a_target_a_row_may_miss_is_refused_with_the_reason(tmp_path: Path):
    model = _tree_ensemble(tmp_path / "t.onnx", TensorProto.FLOAT, 2, 2)
    with pytest.raises(UnsupportedOpError) as raised:
        compile_to(model, tmp_path / "t.kiln", "host", verify=False)
    (reason, nodes), = raised.value.unsupported.items()
    assert "MIN or MAX with a target some rows may reach no leaf of" in reason and nodes == ["trees"]
