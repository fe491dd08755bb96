"""Tree models checked in Python before any native code (treelite, tl2cgen, the compiled library) reads them.

treelite trusts the structure it is given: a child index past the node count is read out of bounds, a
cycle is walked (and its queue grown) until memory runs out, and a feature index past num_feature
becomes an out-of-bounds read in every prediction of the compiled library. So every tree is checked
here: child indices in range, every node reached exactly once from its root (no cycle, no node with two
parents, no orphan), feature, leaf and category indices in range, and tree and class counts that agree.
Each format's reader turns its trees into one `Forest` of numpy arrays, checked in time linear in the
nodes; only a tree found wrong is walked node by node in Python, to name the node at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compiler.frontends.source_format import SourceFormat
from kiln.errors import InputError

CORRUPT = "the model file is corrupt (re-export it)"
# XGBoost marks a pruned node deleted with this split index and default_left set; it stays in the arrays
# unreached.
XGBOOST_DELETED = 0x7FFFFFFF


def corrupt(path: Path, tree: int, node: str, detail: str) -> InputError:
    where = f"tree {tree}, {node}" if node else f"tree {tree}"
    return InputError(f"{path}: {where}: {detail}; {CORRUPT}")


def malformed(path: Path, source_format: SourceFormat, detail: str) -> InputError:
    return InputError(f"{path}: not a valid {source_format.value} model ({detail}); the file may be truncated "
                      "or corrupt: export it again")


def check_file(path: Path, source_format: SourceFormat, data: bytes) -> None:
    """Check the trees of an XGBoost (JSON, UBJSON, legacy binary) or LightGBM file whose bytes are `data`."""
    if source_format is SourceFormat.LIGHTGBM:
        check_lightgbm(path, data)
        return
    from kiln.compiler.frontends.trees.xgboost_files import Unreadable, read_xgboost

    try:
        document = read_xgboost(data, source_format)
    except Unreadable as exc:
        raise malformed(path, source_format, str(exc)) from exc
    check_xgboost(path, source_format, document)


@dataclass(frozen=True, eq=False)
class Forest:
    """Every tree's nodes end to end, tree t's at start[t]:start[t + 1], children numbered within their tree.

    A node that is not a leaf has two children. `skipped` nodes (XGBoost's deleted ones) have none and
    must not be reached; every other node is reached exactly once from its tree's root, node 0. With
    `first_leaf` (LightGBM), a tree's nodes from first_leaf[t] on are its leaves, named as the file
    numbers them (leaf k, written ~k in a child field).
    """

    path: Path
    start: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf: np.ndarray
    fields: tuple[str, str]
    skipped: np.ndarray | None = None
    first_leaf: np.ndarray | None = None

    @property
    def splits(self) -> np.ndarray:
        return ~self.leaf if self.skipped is None else ~(self.leaf | self.skipped)

    def locate(self, index: int) -> tuple[int, int]:
        tree = int(np.searchsorted(self.start, index, side="right")) - 1
        return tree, int(index - self.start[tree])

    def name(self, tree: int, node: int) -> str:
        if self.first_leaf is not None and node >= self.first_leaf[tree]:
            return f"leaf {node - self.first_leaf[tree]}"
        return f"node {node}"

    def written(self, tree: int, node: int) -> int:
        """`node` as a child field of the file holds it."""
        if self.first_leaf is not None and node >= self.first_leaf[tree]:
            return ~int(node - self.first_leaf[tree])
        return node


def check_forest(forest: Forest) -> None:
    """Children in range, and every node but the skipped ones reached exactly once from its root."""
    sizes = np.diff(forest.start)
    if np.any(sizes < 1):
        raise corrupt(forest.path, int(np.argmax(sizes < 1)), "", "the tree has no nodes")
    tree_of = np.repeat(np.arange(len(sizes)), sizes)
    splits = forest.splits
    for field, children in zip(forest.fields, (forest.left, forest.right)):
        bad = splits & ((children < 0) | (children >= sizes[tree_of]))
        if bad.any():
            tree, node = forest.locate(int(np.argmax(bad)))
            value, size = int(children[forest.start[tree] + node]), int(sizes[tree])
            where = "past" if value >= size else "not one of"
            raise corrupt(forest.path, tree, forest.name(tree, node), f"{field} {value} is {where} the tree's {size} nodes")
    base = forest.start[tree_of]
    parents = np.flatnonzero(splits)
    named = np.concatenate([forest.left[parents] + base[parents], forest.right[parents] + base[parents]])
    times_named = np.bincount(named, minlength=len(forest.leaf))
    wrong = times_named > 1
    wrong[forest.start[:-1]] |= times_named[forest.start[:-1]] > 0
    if forest.skipped is not None:
        wrong |= forest.skipped & (times_named > 0)
    if wrong.any():
        raise _explain(forest, forest.locate(int(np.argmax(wrong)))[0])
    # No node is named twice and no root at all, so this walk visits each node once at most.
    reached = np.zeros(len(forest.leaf), bool)
    frontier = forest.start[:-1]
    while frontier.size:
        reached[frontier] = True
        frontier = frontier[splits[frontier]]
        frontier = np.concatenate([forest.left[frontier], forest.right[frontier]]) + np.tile(base[frontier], 2)
    wrong = ~reached if forest.skipped is None else reached == forest.skipped
    if wrong.any():
        raise _explain(forest, forest.locate(int(np.argmax(wrong)))[0])


def _explain(forest: Forest, tree: int) -> InputError:
    """The first fault in `tree`'s shape, found by walking it depth first from its root."""
    begin, end = int(forest.start[tree]), int(forest.start[tree + 1])
    children = (forest.left[begin:end].tolist(), forest.right[begin:end].tolist())
    splits = forest.splits[begin:end].tolist()
    skipped = [False] * (end - begin) if forest.skipped is None else forest.skipped[begin:end].tolist()
    name = lambda node: forest.name(tree, node)  # noqa: E731
    if skipped[0]:
        return corrupt(forest.path, tree, name(0), "the root is marked deleted")
    # 1: on the path from the root to the node being walked; 2: walked
    state, parent = [0] * (end - begin), [-1] * (end - begin)
    state[0], stack = 1, [(0, 0)]
    while stack:
        node, side = stack.pop()
        if side == 2 or not splits[node]:
            state[node] = 2
            continue
        stack.append((node, side + 1))
        child = children[side][node]
        named = f"{forest.fields[side]} {forest.written(tree, child)}"
        if state[child] == 1:
            return corrupt(forest.path, tree, name(node), f"{named} leads back to {name(child)}, on this node's own "
                                                          "path from the root: the tree has a cycle")
        if state[child] == 2:
            return corrupt(forest.path, tree, name(node), f"{named} names {name(child)}, already the child of "
                                                          f"{name(parent[child])}: a node with two parents")
        if skipped[child]:
            return corrupt(forest.path, tree, name(node), f"{named} names {name(child)}, which is marked deleted")
        state[child], parent[child] = 1, node
        stack.append((child, 0))
    orphan = next(node for node, seen in enumerate(state) if not seen and not skipped[node])
    return corrupt(forest.path, tree, name(orphan), "no node reached from the root names it as a child (an orphan, "
                                                    "or part of a detached cycle)")


def check_indices(forest: Forest, values: np.ndarray, limit: np.ndarray | int, field: str, what: str) -> None:
    """Each split's `values` (features, category offsets...) within [0, limit): `limit` is per node or one for all."""
    limit = np.broadcast_to(limit, values.shape)
    bad = forest.splits & ((values < 0) | (values >= limit))
    if bad.any():
        index = int(np.argmax(bad))
        tree, node = forest.locate(index)
        raise corrupt(forest.path, tree, forest.name(tree, node),
                      f"{field} {int(values[index])} is not one of the {int(limit[index])} {what}")


# --- XGBoost -------------------------------------------------------------------------------------------------

def check_xgboost(path: Path, source_format: SourceFormat, document: dict[str, Any]) -> None:
    """An XGBoost model document (the JSON form; the readers give UBJSON and legacy binary files the same)."""
    field = _Fields(path, source_format)
    learner = field.get(document, "learner", dict)
    params = field.get(learner, "learner_model_param", dict)
    num_feature = field.count(params, "num_feature", minimum=1)
    num_class = field.count(params, "num_class", minimum=0, default=0)
    num_target = field.count(params, "num_target", minimum=1, default=1)
    booster = field.get(learner, "gradient_booster", dict)
    weight_drop = None
    if booster.get("name") == "dart":
        weight_drop = field.get(booster, "weight_drop", (list, np.ndarray))
        booster = field.get(booster, "gbtree", dict)
    elif booster.get("name") != "gbtree":
        return  # gblinear has no trees (treelite refuses it)
    model = field.get(booster, "model", dict)
    trees = field.get(model, "trees", list)
    booster_param = field.get(model, "gbtree_model_param", dict)
    declared = field.count(booster_param, "num_trees", minimum=0)
    field.count(booster_param, "num_parallel_tree", minimum=1, default=1)
    tree_info = field.ints(model, "tree_info")
    for name, count in (("gbtree_model_param.num_trees", declared), ("tree_info", len(tree_info)),
                        ("weight_drop", len(trees) if weight_drop is None else len(weight_drop))):
        if count != len(trees):
            raise InputError(f"{path}: {name} counts {count} trees but the model holds {len(trees)}; {CORRUPT}")
    if "iteration_indptr" in model:
        _check_iterations(path, field.ints(model, "iteration_indptr"), len(trees))
    outputs = num_class if num_class > 1 else num_target
    bad = np.flatnonzero((tree_info < 0) | (tree_info >= outputs))
    if bad.size:
        raise corrupt(path, int(bad[0]), "", f"tree_info {int(tree_info[bad[0]])} is not one of the model's {outputs} "
                                             f"{'classes' if num_class > 1 else 'targets'}")
    arrays = [_xgboost_tree(field, index, tree) for index, tree in enumerate(trees)]
    for name, count in (("num_class", num_class), ("num_target", num_target)):
        if trees and count > len(trees) * max(tree["width"] for tree in arrays):
            # each class or target has a tree of its own, or a value in every leaf
            raise InputError(f"{path}: {name} {count} is more than the model's {len(trees)} trees can predict; "
                             f"{CORRUPT}")
    if not trees:
        return  # refused later with its own message (kiln.compiler.frontends.trees.load)
    nodes = _concatenate(arrays)
    skipped = (nodes["split_indices"] == XGBOOST_DELETED) & (nodes["default_left"] != 0)
    forest = Forest(path, nodes["start"], nodes["left_children"], nodes["right_children"],
                    (nodes["left_children"] == -1) & ~skipped, ("left_children", "right_children"), skipped=skipped)
    check_forest(forest)
    check_indices(forest, nodes["split_indices"], num_feature, "split_indices",
                  "features of the model (learner_model_param.num_feature)")
    categorical = np.flatnonzero(forest.splits & (nodes["split_type"] == 1))
    listed = [index for index, tree in enumerate(trees) if len(np.atleast_1d(tree.get("categories_nodes", [])))]
    holding = np.searchsorted(forest.start, categorical, side="right") - 1
    for index in np.union1d(listed, holding).astype(int).tolist():
        begin, end = forest.start[index], forest.start[index + 1]
        nodes_in_tree = categorical[(categorical >= begin) & (categorical < end)] - begin
        _check_xgboost_categories(field, index, trees[index], nodes_in_tree, int(end - begin))


def _concatenate(trees: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The trees' per-node arrays end to end, and "start": where each tree's nodes begin (and the total)."""
    columns = {key: np.concatenate([tree[key] for tree in trees]) for key, value in trees[0].items()
               if isinstance(value, np.ndarray)}
    sizes = [len(tree["left_children"]) for tree in trees]
    return {**columns, "start": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)}


class _Fields:
    """Typed reads of an XGBoost document's fields, refusing the file by name when one is missing or mistyped."""

    def __init__(self, path: Path, source_format: SourceFormat):
        self.path, self.source_format = path, source_format

    def get(self, owner: dict, key: str, kind: type | tuple[type, ...]) -> Any:
        value = owner.get(key) if isinstance(owner, dict) else None
        if not isinstance(value, kind):
            raise malformed(self.path, self.source_format, f"no valid \"{key}\"")
        return value

    def count(self, owner: dict, key: str, *, minimum: int, default: int | None = None, where: str = "") -> int:
        value = owner.get(key, default)
        try:
            number = int(value)  # XGBoost writes its parameters as strings
        except (TypeError, ValueError):
            raise malformed(self.path, self.source_format, f"{where}{key} {value!r} is not an integer") from None
        if number < minimum:
            raise InputError(f"{self.path}: {where}{key} is {number}, less than {minimum}; {CORRUPT}")
        return number

    def ints(self, owner: dict, key: str, where: str = "") -> np.ndarray:
        value = owner.get(key)
        array = np.asarray(value if value is not None else [])
        if array.size == 0:
            return np.zeros(0, np.int64)
        if array.ndim != 1 or array.dtype.kind not in "biu":
            raise malformed(self.path, self.source_format, f"{where}{key} is not a list of integers")
        return array.astype(np.int64)


def _check_iterations(path: Path, bounds: np.ndarray, num_trees: int) -> None:
    if bounds.size == 0 or bounds[0] != 0 or bounds[-1] != num_trees or np.any(np.diff(bounds) < 0):
        raise InputError(f"{path}: iteration_indptr {bounds.tolist()[:8]} does not split the model's {num_trees} "
                         f"trees into rounds; {CORRUPT}")


def _xgboost_tree(field: _Fields, index: int, tree: Any) -> dict[str, Any]:
    """One tree's per-node arrays (left_children, right_children, split_indices, default_left, split_type)
    and the width of its leaves."""
    if not isinstance(tree, dict):
        raise malformed(field.path, field.source_format, f"tree {index} is not an object")
    tree_id = tree.get("id", index)
    if tree_id != index:
        repeat = isinstance(tree_id, int) and 0 <= tree_id < index
        raise corrupt(field.path, index, "", (f"id {tree_id} repeats tree {tree_id}'s id" if repeat else
                                              f"id {tree_id!r} at position {index} of the trees list")
                      + " (ids number the trees 0, 1, 2, ... in list order)")
    where = f"tree {index}: "
    param = field.get(tree, "tree_param", dict)
    num_nodes = field.count(param, "num_nodes", minimum=1, where=where)
    arrays: dict[str, Any] = {"width": max(1, field.count(param, "size_leaf_vector", minimum=0, default=1,
                                                          where=where))}
    for key in ("left_children", "right_children", "split_indices", "default_left", "split_type"):
        arrays[key] = field.ints(tree, key, where)
        if key == "split_type" and not len(arrays[key]):
            arrays[key] = np.zeros(num_nodes, np.int64)  # no split_type: every split is numerical
        if len(arrays[key]) != num_nodes:
            raise corrupt(field.path, index, "", f"{key} holds {len(arrays[key])} entries for the tree's {num_nodes} "
                                                 "nodes (tree_param.num_nodes)")
    return arrays


def _check_xgboost_categories(field: _Fields, index: int, tree: dict, categorical: np.ndarray, num_nodes: int) -> None:
    """treelite finds a categorical split's record by binary search over categories_nodes and reads its
    categories[segment:segment + size] unchecked."""
    where = f"tree {index}: "
    nodes, segments, sizes, categories = (field.ints(tree, key, where) for key in
                                          ("categories_nodes", "categories_segments", "categories_sizes", "categories"))
    path = field.path
    if not len(nodes) == len(segments) == len(sizes):
        raise corrupt(path, index, "", f"categories_nodes, categories_segments and categories_sizes hold {len(nodes)}, "
                                       f"{len(segments)} and {len(sizes)} entries (one per categorical split)")
    if np.any((nodes < 0) | (nodes >= num_nodes)) or np.any(np.diff(nodes) <= 0):
        raise corrupt(path, index, "", f"categories_nodes {nodes.tolist()[:8]} are not the tree's node numbers in "
                                       "increasing order")
    bad = np.flatnonzero((segments < 0) | (sizes < 0) | (segments + sizes > len(categories)))
    if bad.size:
        k = int(bad[0])
        raise corrupt(path, index, f"node {int(nodes[k])}", f"categories_segments {int(segments[k])} and "
                                                            f"categories_sizes {int(sizes[k])} reach past the "
                                                            f"{len(categories)} entries of categories")
    if np.any(categories < 0):
        raise corrupt(path, index, "", f"categories holds {int(categories.min())}; categories are non-negative")
    unlisted = categorical[~np.isin(categorical, nodes)]
    if unlisted.size:
        raise corrupt(path, index, f"node {int(unlisted[0])}", "split_type 1 (categorical) but categories_nodes "
                                                               "does not list the node")


# --- LightGBM ------------------------------------------------------------------------------------------------

_TREE_LINE = b"\nTree="
_END_OF_TREES = b"\nend of trees"
_CATEGORICAL_BIT = 1
_MISSING_TYPES = 3  # decision_type bits 2-3: none, zero, NaN


def check_lightgbm(path: Path, data: bytes) -> None:
    """A LightGBM text model (its trees end at the "end of trees" line, which the caller has found)."""
    end = data.find(_END_OF_TREES) + 1
    starts, found = [], data.find(_TREE_LINE, 0, end)
    while found >= 0:
        starts.append(found + 1)
        found = data.find(_TREE_LINE, found + 1, end)
    header = _key_values(data[:starts[0] if starts else end])
    num_class = _lightgbm_count(path, header, "num_class", None, minimum=1)
    per_iteration = _lightgbm_count(path, header, "num_tree_per_iteration", None, minimum=1, default=num_class)
    num_feature = _lightgbm_count(path, header, "max_feature_idx", None, minimum=0) + 1
    spans = list(zip(starts, starts[1:] + [end]))
    if num_class > 1 and per_iteration != num_class:
        # treelite gives tree i to class i % num_class, LightGBM to class i % num_tree_per_iteration
        raise InputError(f"{path}: num_tree_per_iteration {per_iteration} differs from num_class {num_class}; {CORRUPT}")
    if len(spans) % per_iteration:
        raise InputError(f"{path}: {len(spans)} trees is not a whole number of rounds of num_tree_per_iteration "
                         f"{per_iteration}; {CORRUPT}")
    # treelite gives every key=value line after a "Tree=" line to that tree, up to the next one or the end of the
    # file: the last tree also takes the lines after "end of trees" (a num_leaves there overrides its own)
    read = spans[:-1] + [(spans[-1][0], len(data))] if spans else []
    trees = [_lightgbm_tree(path, index, data[begin:stop]) for index, (begin, stop) in enumerate(read)]
    if not trees:
        return  # refused later with its own message (kiln.compiler.frontends.trees.load)
    nodes = _concatenate(trees)
    first_leaf = np.array([tree["num_leaves"] - 1 for tree in trees])
    tree_of = np.repeat(np.arange(len(trees)), np.diff(nodes["start"]))
    leaf = np.arange(len(tree_of)) - nodes["start"][tree_of] >= first_leaf[tree_of]
    forest = Forest(path, nodes["start"], nodes["left_children"], nodes["right_children"], leaf,
                    ("left_child", "right_child"), first_leaf=first_leaf)
    check_forest(forest)
    check_indices(forest, nodes["split_feature"], num_feature, "split_feature",
                  "features of the model (max_feature_idx + 1)")
    check_indices(forest, nodes["category"], nodes["categories"], "threshold", "categorical splits of the tree "
                  "(num_cat): a categorical split's threshold numbers its cat_boundaries entry")
    if b"tree_sizes" in header:  # LightGBM itself reads each tree at the offset these sizes give
        sizes = _lightgbm_ints(path, header, "tree_sizes", None)
        if len(sizes) != len(spans) or np.any(sizes != [stop - begin for begin, stop in spans]):
            raise InputError(f"{path}: tree_sizes gives {len(sizes)} sizes that do not match the {len(spans)} trees "
                             f"the file holds, byte for byte; {CORRUPT}")


def _key_values(block: bytes) -> dict[bytes, bytes]:
    pairs = (line.partition(b"=") for line in block.split(b"\n"))
    return {key.strip(): value.strip() for key, sep, value in pairs if sep}


def _lightgbm_count(path: Path, values: dict[bytes, bytes], key: str, tree: int | None, *, minimum: int,
                    default: int | None = None) -> int:
    raw = values.get(key.encode())
    if raw is None and default is not None:
        return default
    numbers = _lightgbm_ints(path, values, key, tree)
    where = f"tree {tree}: " if tree is not None else ""
    if len(numbers) != 1 or numbers[0] < minimum:
        raise InputError(f"{path}: {where}{key}={(raw or b'').decode(errors='replace')} is not an integer of "
                         f"{minimum} or more; {CORRUPT}")
    return int(numbers[0])


def _lightgbm_ints(path: Path, values: dict[bytes, bytes], key: str, tree: int | None) -> np.ndarray:
    where = f"tree {tree}: " if tree is not None else ""
    try:
        return np.array(values.get(key.encode(), b"").split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise InputError(f"{path}: {where}{key} holds values that are not 64-bit integers; {CORRUPT}") from None


def _lightgbm_tree(path: Path, index: int, block: bytes) -> dict[str, Any]:
    """One "Tree=" block's nodes, its splits and then its leaves (as Forest numbers them): children,
    split_feature, and for categorical splits the cat_boundaries entry and num_cat."""
    title, _, body = block.partition(b"\n")
    if title.strip() != f"Tree={index}".encode():
        raise corrupt(path, index, "", f"the tree's header line is {title.strip().decode(errors='replace')!r} where "
                                       f"trees are numbered in order (Tree={index}): a tree is missing or repeated")
    values = _key_values(body)
    num_leaves = _lightgbm_count(path, values, "num_leaves", index, minimum=1)
    num_cat = _lightgbm_count(path, values, "num_cat", index, minimum=0, default=0)
    splits = num_leaves - 1
    lengths = {"leaf_value": num_leaves, "leaf_weight": num_leaves, "leaf_count": num_leaves,
               **dict.fromkeys(("split_feature", "threshold", "decision_type", "left_child", "right_child",
                                "split_gain", "internal_value", "internal_weight", "internal_count"), splits)}
    for key, length in lengths.items():
        text = values.get(key.encode())
        if text and text.split(b" ") != text.split():  # kiln parses at any whitespace, treelite at each space
            raise corrupt(path, index, "", f"{key} holds values not separated by single spaces")
        required = key == "leaf_value" or (splits and key in ("split_feature", "threshold", "left_child", "right_child"))
        # counted as treelite splits them, at each space
        if (text is None and required) or (text is not None and (text.count(b" ") + 1 if text else 0) != length):
            found = "no" if text is None else text.count(b" ") + 1 if text else 0
            raise corrupt(path, index, "", f"{key} holds {found} values where num_leaves {num_leaves} needs {length}")
    children = [_lightgbm_ints(path, values, key, index) for key in ("left_child", "right_child")]
    for key, child in zip(("left_child", "right_child"), children):
        bad = np.flatnonzero((child >= splits) | (~child >= num_leaves))
        if bad.size:
            value = int(child[bad[0]])
            detail = (f"{key} {value} is past the tree's {splits} internal nodes" if value >= 0 else
                      f"{key} {value} is leaf {~value}, past the tree's {num_leaves} leaves (num_leaves)")
            raise corrupt(path, index, f"node {int(bad[0])}", detail)
    decision = (_lightgbm_ints(path, values, "decision_type", index) if b"decision_type" in values
                else np.zeros(splits, np.int64))
    missing = np.flatnonzero((decision >> 2) & 3 == _MISSING_TYPES)
    if missing.size:
        raise corrupt(path, index, f"node {int(missing[0])}", f"decision_type {int(decision[missing[0]])} has missing "
                                                               "type 3 (LightGBM defines 0 to 2)")
    categorical = (decision & _CATEGORICAL_BIT) != 0
    category = np.zeros(splits, np.int64)
    if categorical.any():
        category[categorical] = _lightgbm_category_offsets(path, index, values, num_cat)[categorical]
    leaves = np.zeros(num_leaves, np.int64)
    return {"left_children": np.concatenate([np.where(children[0] >= 0, children[0], splits + ~children[0]), leaves]),
            "right_children": np.concatenate([np.where(children[1] >= 0, children[1], splits + ~children[1]), leaves]),
            "split_feature": np.concatenate([_lightgbm_ints(path, values, "split_feature", index), leaves]),
            "category": np.concatenate([category, leaves]),
            "categories": np.concatenate([np.where(categorical, num_cat, 1), leaves + 1]),
            "num_leaves": num_leaves}


def _lightgbm_category_offsets(path: Path, index: int, values: dict[bytes, bytes], num_cat: int) -> np.ndarray:
    """Each split's threshold as an index into cat_boundaries, after checking that cat_boundaries cuts
    cat_threshold into num_cat pieces (treelite reads both unchecked)."""
    bounds = _lightgbm_ints(path, values, "cat_boundaries", index)
    words = len(values.get(b"cat_threshold", b"").split())
    if len(bounds) != num_cat + 1 or bounds[0] != 0 or bounds[-1] != words or np.any(np.diff(bounds) < 0):
        raise corrupt(path, index, "", f"cat_boundaries {bounds.tolist()[:8]} does not cut cat_threshold's {words} "
                                       f"words into num_cat {num_cat} pieces")
    try:
        thresholds = np.array(values[b"threshold"].split(), dtype=np.float64)
    except ValueError:
        raise corrupt(path, index, "", "threshold holds values that are not numbers") from None
    # treelite truncates the threshold to an int; clipped first, a huge one stays out of range when cast
    return np.where(np.isfinite(thresholds), np.clip(thresholds, -1, 2**31), -1).astype(np.int64)
