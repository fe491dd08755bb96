"""ai.onnx.ml's TreeEnsemble over a static input written as an unrolled walk of all its trees at once.

TVM 0.27 converts no ai.onnx.ml op. ONNX walks each tree from its root: an interior node compares feature
nodes_featureids of the row with its split by its mode (<=, <, >=, >, ==, != or membership of its set, the sets
given in membership_values in the order of the member nodes, ended by NaNs), a NaN feature going the true way where
nodes_missing_value_tracks_true says so, until a leaf (a one-leaf tree is a root whose branches both name it, as
ONNX Runtime reads it; ONNX's reference reads the leaf numbered as the root instead); the leaves' weights are then
aggregated into their targets, tree by tree in the order of tree_roots, in the input's type (SUM, AVERAGE: each
weight divided by the number of trees in double and added, MIN, MAX; a target no leaf reaches stays 0 for SUM and
AVERAGE). Here the state is one node index per row and tree, leaves numbered after the interior
nodes and leading to themselves: each step gathers the nodes' features, splits and modes from constant tables,
compares, and picks the next index with Where, as many steps as the deepest path. The leaves' weights are then
gathered and aggregated in double, tree by tree, rounded to the input's type after each, as ONNX's reference does.
post_transform other than NONE (ONNX's reference computes none; ONNX Runtime does), MIN or MAX where a row may
reach no leaf of a target (ONNX Runtime gives it 0, ONNX's reference the type's largest or smallest value), splits or
sets of another type than the input, and structures that are not trees are left as they are, and the support check
(kiln.compiler.backends.tvm.ops) names why with `tree_ensemble_refusal`. A model of ai.onnx.ml ops alone gets the
default domain imported for the ops written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.frontends.onnx import UPGRADE_OPSET
from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import element_types, rewrite_nodes, static_dims

if TYPE_CHECKING:
    import onnx

ML_DOMAIN = "ai.onnx.ml"
MAX_DEPTH = 512  # walk steps unrolled at most
_FLOAT, _DOUBLE = 1, 11
_LEQ, _LT, _GTE, _GT, _EQ, _NEQ, _MEMBER = range(7)
_AGGREGATES = {0: "AVERAGE", 1: "SUM", 2: "MIN", 3: "MAX"}


@dataclasses.dataclass(frozen=True)
class _Ensemble:
    """The node's attributes as arrays: interior nodes (nodes_*), leaves (leaf_*), roots."""

    features: np.ndarray
    splits: np.ndarray
    modes: np.ndarray
    true_ids: np.ndarray
    false_ids: np.ndarray
    true_leafs: np.ndarray
    false_leafs: np.ndarray
    tracks: np.ndarray
    members: np.ndarray | None
    weights: np.ndarray
    targets: np.ndarray
    roots: np.ndarray
    n_targets: int
    aggregate: int
    post_transform: int


def tree_ensemble_refusal(node: "onnx.NodeProto", dims: Mapping[str, Sequence[int | None]],
                          types: Mapping[str, int]) -> str | None:
    """Why tree_ensemble leaves the TreeEnsemble `node` as it is; None where it rewrites it. `dims` holds the values'
    shapes (None: symbolic), `types` their ONNX element types."""
    dtype, shape = types.get(node.input[0]), dims.get(node.input[0])
    if dtype not in (_FLOAT, _DOUBLE):
        return "input not float32 or float64"
    if shape is None or None in shape or len(shape) != 2:
        return "input shape not a static [N, F]; pin the input shapes"
    ensemble = _ensemble(node)
    if ensemble.post_transform != 0:
        return f"post_transform {ensemble.post_transform} (kiln computes NONE only)"
    if ensemble.aggregate not in _AGGREGATES:
        return f"aggregate_function {ensemble.aggregate}"
    if ensemble.splits.dtype != _numpy_type(dtype) or (ensemble.members is not None
                                                       and ensemble.members.dtype != ensemble.splits.dtype):
        return "nodes_splits or membership_values of another type than the input"
    return _structure_refusal(ensemble, shape[1])


def tree_ensemble(graph: Graph) -> Graph:
    dims = static_dims(graph.body.graph)
    types = element_types(graph.body.graph)

    def replace(node):
        if node.domain != ML_DOMAIN or node.op_type != "TreeEnsemble" or tree_ensemble_refusal(node, dims, types):
            return None
        return _rewrite(node, _ensemble(node), dims[node.input[0]], types[node.input[0]])

    return rewrite_nodes(graph, replace, default_opset=UPGRADE_OPSET)


def _ensemble(node: "onnx.NodeProto") -> _Ensemble:
    from onnx import helper, numpy_helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    arrays = {name: numpy_helper.to_array(value) if hasattr(value, "dims") else np.array(value)
              for name, value in values.items()}
    count = len(arrays.get("nodes_featureids", []))

    def ints(name: str) -> np.ndarray:
        return np.asarray(arrays.get(name, np.zeros(count, np.int64)), np.int64).reshape(-1)

    return _Ensemble(
        ints("nodes_featureids"), arrays.get("nodes_splits", np.zeros(count)).reshape(-1), ints("nodes_modes"),
        ints("nodes_truenodeids"), ints("nodes_falsenodeids"), ints("nodes_trueleafs"), ints("nodes_falseleafs"),
        ints("nodes_missing_value_tracks_true"),
        arrays["membership_values"].reshape(-1) if "membership_values" in arrays else None,
        arrays.get("leaf_weights", np.zeros(0)).reshape(-1), ints("leaf_targetids"), ints("tree_roots"),
        int(values.get("n_targets", 0)), int(values.get("aggregate_function", 1)),
        int(values.get("post_transform", 0)))


def _structure_refusal(ensemble: _Ensemble, features: int) -> str | None:
    """Why the ensemble's attributes describe no trees kiln can walk over `features` features; None where they do."""
    e, count = ensemble, len(ensemble.features)
    if any(len(a) != count for a in (e.splits, e.modes, e.true_ids, e.false_ids, e.true_leafs, e.false_leafs,
                                     e.tracks)) or len(e.weights) != len(e.targets):
        return "nodes_* or leaf_* attributes of different lengths"
    if not len(e.roots):
        return "no trees"
    if ((e.features < 0) | (e.features >= features)).any() or ((e.modes < 0) | (e.modes > _MEMBER)).any():
        return "a node's feature outside the input's or its mode unknown"
    if ((e.targets < 0) | (e.targets >= e.n_targets)).any():
        return "a leaf's target outside n_targets"
    for ids, leafs in ((e.true_ids, e.true_leafs), (e.false_ids, e.false_leafs)):
        bound = np.where(leafs != 0, len(e.weights), count)
        if ((ids < 0) | (ids >= bound)).any():
            return "a branch to a node or leaf that does not exist"
    if ((e.roots < 0) | (e.roots >= count)).any():
        return "a tree root that does not exist"
    if _member_sets(e) is None:
        return "membership_values does not give one set per member node"
    depth = _depth(e)
    if depth is None:
        return "a node that leads back to itself (not a tree)"
    if depth > MAX_DEPTH:
        return f"paths {depth} nodes deep, over the {MAX_DEPTH} kiln unrolls"
    if e.aggregate in (2, 3) and set(range(e.n_targets)) - _always_reached(e):
        return ("MIN or MAX with a target some rows may reach no leaf of (ONNX Runtime gives it 0, ONNX's reference "
                "the type's largest or smallest value)")
    return None


def _always_reached(e: _Ensemble) -> set[int]:
    """The targets every row reaches a leaf of: those of the trees whose leaves all have one target (the trees
    have been checked to be trees)."""
    def targets(index: int) -> set[int]:
        found: set[int] = set()
        for child, leaf in ((e.true_ids[index], e.true_leafs[index]), (e.false_ids[index], e.false_leafs[index])):
            found |= {int(e.targets[child])} if leaf else targets(int(child))
        return found

    return {found.pop() for found in map(targets, e.roots) if len(found) == 1}


def _member_sets(e: _Ensemble) -> list[np.ndarray] | None:
    """The sets of the member nodes in the order of the nodes, or None where membership_values has not one each."""
    count = int((e.modes == _MEMBER).sum())
    if e.members is None:
        return [] if count == 0 else None
    ends = np.flatnonzero(np.isnan(e.members))
    if len(ends) != count:
        return None
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [e.members[start:end] for start, end in zip(starts, ends)]


def _depth(e: _Ensemble) -> int | None:
    """The most interior nodes on a path from a root to a leaf; None where a path comes back to a node."""
    depths: dict[int, int] = {}

    def walk(index: int, path: frozenset[int]) -> int | None:
        if index in path:
            return None
        if index not in depths:
            below = [0 if leaf else walk(int(child), path | {index})
                     for child, leaf in ((e.true_ids[index], e.true_leafs[index]),
                                         (e.false_ids[index], e.false_leafs[index]))]
            if None in below:
                return None
            depths[index] = 1 + max(below)
        return depths[index]

    found = [walk(int(root), frozenset()) for root in e.roots]
    return None if None in found else max(found)


def _tables(e: _Ensemble) -> dict[str, np.ndarray]:
    """Per state (interior nodes, then leaves): feature, split, next states, leaf weight (double) and target."""
    count, leaves = len(e.features), len(e.weights)
    states = np.arange(count, count + leaves)
    weights = e.weights.astype(np.float64) / (len(e.roots) if e.aggregate == 0 else 1)
    return {"feature": np.concatenate([e.features, np.zeros(leaves, np.int64)]),
            "split": np.concatenate([e.splits, np.zeros(leaves, e.splits.dtype)]),
            "true": np.concatenate([e.true_ids + count * (e.true_leafs != 0), states]),
            "false": np.concatenate([e.false_ids + count * (e.false_leafs != 0), states]),
            "weight": np.concatenate([np.zeros(count), weights]),
            "target": np.concatenate([np.full(count, -1, np.int64), e.targets])}


def _rewrite(node: "onnx.NodeProto", e: _Ensemble, shape: tuple[int, ...], dtype: int):
    from onnx import helper

    stem = node.name or node.output[0]
    tables = _tables(e)
    constants = {f"{stem}_{name}": table for name, table in tables.items()}
    constants[f"{stem}_state0"] = np.broadcast_to(e.roots, (shape[0], len(e.roots))).copy()
    nodes, state = [], f"{stem}_state0"
    for step in range(_depth(e)):
        state = _step(stem, step, node.input[0], state, e, nodes, constants)
    for name in ("weight", "target"):
        nodes.append(helper.make_node("Gather", [f"{stem}_{name}", state], [f"{stem}_leaf_{name}"]))
    aggregated, aggregate_constants = _aggregate(node, e, dtype)
    return nodes + aggregated, {**constants, **aggregate_constants}


def _step(tables: str, step: int, data: str, state: str, e: _Ensemble, nodes: list, constants: dict) -> str:
    """Append one step of the walk from `state` ([N, trees] indices); the next state's name. The node's constant
    tables are named `tables`_..."""
    from onnx import helper

    stem = f"{tables}_step{step}"
    x, split = f"{stem}_x", f"{stem}_split"
    nodes += [helper.make_node("Gather", [f"{tables}_feature", state], [f"{stem}_feature"]),
              helper.make_node("GatherElements", [data, f"{stem}_feature"], [x], axis=1),
              helper.make_node("Gather", [f"{tables}_split", state], [split])]
    present = sorted(set(e.modes.tolist()))
    compared = {mode: _compare(f"{stem}_mode{mode}", mode, x, split, state, e, nodes, constants, tables)
                for mode in present}
    taken = compared[present[0]]
    for mode in present[1:]:
        constants[f"{tables}_is{mode}"] = np.concatenate([e.modes == mode, np.zeros(len(e.weights), bool)])
        nodes += [helper.make_node("Gather", [f"{tables}_is{mode}", state], [f"{stem}_at{mode}"]),
                  helper.make_node("Where", [f"{stem}_at{mode}", compared[mode], taken], [f"{stem}_taken{mode}"])]
        taken = f"{stem}_taken{mode}"
    if e.tracks.any():
        constants[f"{tables}_tracks"] = np.concatenate([e.tracks != 0, np.zeros(len(e.weights), bool)])
        nodes += [helper.make_node("IsNaN", [x], [f"{stem}_nan"]),
                  helper.make_node("Gather", [f"{tables}_tracks", state], [f"{stem}_tracked"]),
                  helper.make_node("And", [f"{stem}_nan", f"{stem}_tracked"], [f"{stem}_missing"]),
                  helper.make_node("Or", [taken, f"{stem}_missing"], [f"{stem}_taken"])]
        taken = f"{stem}_taken"
    nodes += [helper.make_node("Gather", [f"{tables}_true", state], [f"{stem}_true"]),
              helper.make_node("Gather", [f"{tables}_false", state], [f"{stem}_false"]),
              helper.make_node("Where", [taken, f"{stem}_true", f"{stem}_false"], [f"{stem}_next"])]
    return f"{stem}_next"


def _compare(stem: str, mode: int, x: str, split: str, state: str, e: _Ensemble, nodes: list, constants: dict,
             tables: str) -> str:
    """Append the nodes that compare the features `x` by `mode` (all [N, trees]); their output. <= and >= are
    written as < or > and ==, which no op set before 12 lacks and which NaN makes false as ONNX does."""
    from onnx import helper

    if mode == _MEMBER:
        return _membership(stem, x, state, e, nodes, constants, tables)
    ops = {_LEQ: ("Less", "Equal"), _LT: ("Less",), _GTE: ("Greater", "Equal"), _GT: ("Greater",),
           _EQ: ("Equal",), _NEQ: ("Equal",)}[mode]
    outputs = [f"{stem}_{op.lower()}" for op in ops]
    nodes += [helper.make_node(op, [x, split], [output]) for op, output in zip(ops, outputs)]
    if len(outputs) == 2:
        nodes.append(helper.make_node("Or", outputs, [f"{stem}_or"]))
        return f"{stem}_or"
    if mode == _NEQ:  # NaN is unequal to every split
        nodes.append(helper.make_node("Not", outputs, [f"{stem}_not"]))
        return f"{stem}_not"
    return outputs[0]


def _membership(stem: str, x: str, state: str, e: _Ensemble, nodes: list, constants: dict, tables: str) -> str:
    """Append the nodes that test the features `x` for membership of their node's set; their output. The sets are
    the columns of a table padded with NaN, which equals nothing."""
    from onnx import helper

    sets = iter(_member_sets(e))
    rows = [next(sets) if mode == _MEMBER else np.zeros(0, e.splits.dtype) for mode in e.modes]
    width = max(len(row) for row in rows)
    table = np.full((len(e.modes) + len(e.weights), max(width, 1)), np.nan, e.splits.dtype)
    for index, row in enumerate(rows):
        table[index, :len(row)] = row
    found = None
    for column in range(table.shape[1]):
        name = f"{stem}_set{column}"
        constants[f"{tables}_set{column}"] = table[:, column]
        nodes += [helper.make_node("Gather", [f"{tables}_set{column}", state], [f"{name}_member"]),
                  helper.make_node("Equal", [x, f"{name}_member"], [f"{name}_equal"])]
        if found is not None:
            nodes.append(helper.make_node("Or", [found, f"{name}_equal"], [f"{name}_found"]))
        found = f"{name}_equal" if found is None else f"{name}_found"
    return found


def _aggregate(node: "onnx.NodeProto", e: _Ensemble, dtype: int):
    """The nodes that fold the trees' leaf weights ([N, trees] leaf_weight, leaf_target) into [N, n_targets] one tree
    at a time, in double rounded to the input's type after each; and their constants."""
    from onnx import helper

    stem = node.name or node.output[0]
    start = {0: 0.0, 1: 0.0, 2: np.finfo(_numpy_type(dtype)).max, 3: np.finfo(_numpy_type(dtype)).min}[e.aggregate]
    constants = {f"{stem}_start": np.full((1, e.n_targets), start, np.float64),
                 f"{stem}_targets": np.arange(e.n_targets, dtype=np.int64)}
    nodes, total = [], f"{stem}_start"
    for tree in range(len(e.roots)):
        at, last = f"{stem}_tree{tree}", tree == len(e.roots) - 1
        constants[f"{at}_index"] = np.array([tree], np.int64)
        nodes += [helper.make_node("Gather", [f"{stem}_leaf_weight", f"{at}_index"], [f"{at}_weight"], axis=1),
                  helper.make_node("Gather", [f"{stem}_leaf_target", f"{at}_index"], [f"{at}_target"], axis=1),
                  helper.make_node("Equal", [f"{at}_target", f"{stem}_targets"], [f"{at}_hit"])]
        if e.aggregate in (0, 1):
            nodes += [helper.make_node("Add", [total, f"{at}_weight"], [f"{at}_sum"]),
                      helper.make_node("Where", [f"{at}_hit", f"{at}_sum", total], [f"{at}_total"])]
        else:
            nodes += [helper.make_node("Less" if e.aggregate == 2 else "Greater", [f"{at}_weight", total],
                                       [f"{at}_beyond"]),
                      helper.make_node("And", [f"{at}_hit", f"{at}_beyond"], [f"{at}_taken"]),
                      helper.make_node("Where", [f"{at}_taken", f"{at}_weight", total], [f"{at}_total"])]
        total = f"{at}_total"
        if dtype == _FLOAT:
            nodes.append(helper.make_node("Cast", [total], [node.output[0] if last else f"{at}_rounded"], to=_FLOAT))
            if not last:
                nodes.append(helper.make_node("Cast", [f"{at}_rounded"], [f"{at}_double"], to=_DOUBLE))
                total = f"{at}_double"
    if dtype == _DOUBLE:
        nodes.append(helper.make_node("Identity", [total], [node.output[0]]))
    nodes[-1].name = node.name
    return nodes, constants


def _numpy_type(dtype: int) -> type:
    return np.float32 if dtype == _FLOAT else np.float64
