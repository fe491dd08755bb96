"""kiln's node walker (tree_nodes.py, tree_walk.h) decides every split exactly as tl2cgen's nested ifs do.

The models are built with treelite's ModelBuilder so that they hold what trained models rarely do:
all four comparison operators, infinite thresholds, both default directions, categories past
one 64-bit word and empty category lists, and trees 12 or 40 levels deep next to stumps. Each tree's leaves are
distinct powers of two (at most 2^18, one output per 16 trees: exact sums in float32), so the
outputs tell which leaf every tree chose. The reference is
the same model built as tl2cgen's nested ifs (which calibration data selects), fed with NaN, ±inf,
thresholds and their neighbours, negative, fractional and huge categories.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kiln.compiler.backends.tree_nodes import TREES_PER_GROUP
from kiln.compiler.backends.tree_runner import TreePredictor
from kiln.compiler.backends.treelite import TreeCode, build_library
from kiln.compiler.frontends.trees import INPUT_NAME, summarize
from kiln.compiler.graph import Graph, Provenance, Signature, TensorSpec
from kiln.targets import resolve

OPERATORS = ("<", "<=", ">", ">=")
NUM_FEATURE = 3
CATEGORICAL_FEATURE = 2


def _builder(threshold_type: str, class_ids: list[int]):
    from treelite.model_builder import Metadata, ModelBuilder, PostProcessorFunc, TreeAnnotation

    num_tree, num_class = len(class_ids), max(class_ids) + 1
    task = "kMultiClf" if num_class > 1 else "kRegressor"
    return ModelBuilder(
        threshold_type=threshold_type, leaf_output_type=threshold_type,
        metadata=Metadata(num_feature=NUM_FEATURE, task_type=task, average_tree_output=False, num_target=1,
                          num_class=[num_class], leaf_vector_shape=(1, 1)),
        tree_annotation=TreeAnnotation(num_tree=num_tree, target_id=[0] * num_tree,
                                       class_id=class_ids),
        postprocessor=PostProcessorFunc(name="identity_multiclass" if num_class > 1 else "identity"),
        base_scores=[0.0] * num_class)


def _stump(builder, test, left: float, right: float) -> None:
    builder.start_tree()
    builder.start_node(0)
    test(left_child_key=1, right_child_key=2)
    builder.end_node()
    for key, value in ((1, left), (2, right)):
        builder.start_node(key)
        builder.leaf(value)
        builder.end_node()
    builder.end_tree()


def _chain(builder, depth: int, leaf_bit: int) -> None:
    """A tree `depth` levels deep: node i sends x0 < i - depth/2 left to a leaf, the rest deeper."""
    builder.start_tree()
    for level in range(depth):
        builder.start_node(2 * level)
        builder.numerical_test(0, float(level - depth // 2), default_left=level % 2 == 0, opname="<",
                               left_child_key=2 * level + 1, right_child_key=2 * level + 2)
        builder.end_node()
        builder.start_node(2 * level + 1)
        builder.leaf(float(2 ** (leaf_bit + level % 3)))
        builder.end_node()
    builder.start_node(2 * depth)
    builder.leaf(0.5)
    builder.end_node()
    builder.end_tree()


def edge_case_model(threshold_type: str):
    """Numerical stumps for every operator x threshold x default direction, categorical stumps, a deep chain."""
    numerical = list(itertools.product(OPERATORS, (1.5, 0.0, np.inf, -np.inf), (True, False)))
    # (tl2cgen writes one test per 64 categories: a list up to 2^24 would take gcc minutes)
    categorical = list(itertools.product(([0, 3, 40, 63, 64, 100], [5], []), (True, False), (True, False)))
    num_tree = len(numerical) + len(categorical) + 1
    builder = _builder(threshold_type, [tree // 16 for tree in range(num_tree)])
    for tree, (op, threshold, default_left) in enumerate(numerical):
        _stump(builder, lambda **keys: builder.numerical_test(tree % CATEGORICAL_FEATURE, threshold,
                                                              default_left=default_left, opname=op, **keys),
               2.0 ** (tree % 16), 0.0)
    for tree, (categories, right_child, default_left) in enumerate(categorical, start=len(numerical)):
        _stump(builder, lambda **keys: builder.categorical_test(
            CATEGORICAL_FEATURE, default_left=default_left, category_list=categories,
            category_list_right_child=right_child, **keys), 2.0 ** (tree % 16), 0.0)
    _chain(builder, 12, 16)
    return builder.commit()


def edge_case_rows(threshold_type: str) -> np.ndarray:
    dtype = np.float32 if threshold_type == "float32" else np.float64
    below = np.nextafter(dtype(1.5), dtype(1))
    if dtype is np.float64:  # 1.5 - 1 ulp has 32 low bits set: tl2cgen's union Entry reads it as missing
        below = np.nextafter(below, dtype(1))
    numbers = [np.nan, -np.inf, np.inf, 0.0, -0.0, 1.5, np.nextafter(dtype(1.5), dtype(2)), below, -21.0, 19.5, 5.0]
    categories = [np.nan, -1.0, 0.0, 3.0, 3.7, 5.0, 40.0, 63.0, 64.0, 100.0, 2.0 ** 24, 2.0 ** 24 + 2, 1e10, np.inf]
    rows = [(a, b, c) for a in numbers for b in numbers for c in categories]
    return np.array(rows, dtype=dtype)


def _build(model, tmp_path, name: str, *, int8: bool = False, nested_if: bool = False) -> TreePredictor:
    summary = summarize(model)
    signature = Signature(inputs=(TensorSpec(INPUT_NAME, ("batch", summary.num_feature), "float32"),),
                          outputs=(TensorSpec(summary.output.value, ("batch", summary.num_class), summary.leaf_type),))
    preset, library = resolve("x86-64"), tmp_path / f"{name}.so"
    calibration = np.zeros((4, summary.num_feature), np.float32) if nested_if else None
    built = build_library(Graph(model, signature, Provenance("treelite", ())), preset, library, int8=int8,
                          calibration=calibration)
    assert built.code is (TreeCode.NESTED_IF if nested_if else TreeCode.NODE_WALK)
    return TreePredictor(library, preset, signature.inputs, signature.outputs)


@pytest.mark.parametrize("threshold_type", ["float32", "float64"])
@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_walker_decides_every_split_like_tl2cgen(threshold_type, int8, tmp_path):
    model = edge_case_model(threshold_type)
    assert summarize(model).max_depth == 12 and model.num_tree % TREES_PER_GROUP  # a padded last group
    rows = edge_case_rows(threshold_type)
    walker = _build(model, tmp_path, "walk", int8=int8)
    nested_if = _build(model, tmp_path, "nested-if", int8=int8, nested_if=True)
    expected = nested_if.predict(rows)
    assert len(np.unique(expected, axis=0)) > 100  # the rows reach many different leaf combinations
    np.testing.assert_array_equal(walker.predict(rows), expected)
    np.testing.assert_array_equal(walker.predict(rows.astype(np.float64)), nested_if.predict(rows.astype(np.float64)))
    for row in rows[::97]:  # one row alone walks the same trees
        np.testing.assert_array_equal(walker.predict(row), nested_if.predict(row))


def test_deep_trees_match_treelite_reference(tmp_path):
    """Chains of 40 levels grouped with stumps: a group walks as deep as its deepest tree, leaves hold still."""
    import treelite

    builder = _builder("float64", [tree % 3 for tree in range(2 * TREES_PER_GROUP + 3)])
    for tree in range(2 * TREES_PER_GROUP + 3):
        if tree % 4 == 0:
            _chain(builder, 40, tree % 7)
        else:
            _stump(builder, lambda **keys: builder.numerical_test(tree % 2, tree - 9.5, default_left=tree % 3 == 0,
                                                                  opname="<=", **keys), float(tree), -float(tree))
    model = builder.commit()
    rows = np.random.default_rng(0).uniform(-25, 25, size=(500, NUM_FEATURE))
    rows[::7, 0] = np.nan
    got = _build(model, tmp_path, "deep").predict(rows)
    assert got.shape == (500, 3)
    np.testing.assert_allclose(got, treelite.gtil.predict(model, rows).reshape(500, 3), rtol=1e-12)


def test_walker_reads_doubles_that_tl2cgen_takes_for_missing(tmp_path):
    """tl2cgen marks a missing value by an int -1 over the double's low 32 bits; kiln's walker tests NaN."""
    import treelite

    model = edge_case_model("float64")
    rows = np.array([[np.nextafter(1.5, 1.0), np.nextafter(1.5, 1.0), 3.0]])
    assert rows.view(np.uint64)[0, 0] & 0xFFFFFFFF == 0xFFFFFFFF
    numerical = slice(0, 2)  # the outputs of numerical splits (treelite's own predict differs on empty category lists)
    got = _build(model, tmp_path, "walk").predict(rows)[:, numerical]
    np.testing.assert_array_equal(got, treelite.gtil.predict(model, rows).reshape(1, -1)[:, numerical])
    assert not np.array_equal(got, _build(model, tmp_path, "nested-if", nested_if=True).predict(rows)[:, numerical])
