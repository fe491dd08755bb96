"""Scan nodes unrolled into the steps they run.

TVM 0.27's ONNX importer has no converter for Scan. Once the scan length is static, each node is written out step
by step, as ONNX defines it:

    step t      each scan input sliced at t along its axis (scan_input_axes, default 0; from the end where its
                scan_input_direction is 1): Gather
                the body's nodes, its values named `{node}/step{t}/...`, its inputs bound to the states the step
                before left (the node's initial states at the first step) and to the slices
    outputs     the final states; each scan output, the steps' values stacked along its axis (scan_output_axes,
                default 0), the last step's first where its scan_output_direction is 1: Unsqueeze, one Concat

The body's initializers become the main graph's, once for all the steps; the values it reads from the outer scope
are read as they are. What the steps compute from constants and shapes is folded afterwards (fold_constants), as in
any other part of the graph. (Opset 8's Scan, with a batch axis and sequence_lens, never reaches here: the ONNX
frontend upgrades models older than opset 11, and ONNX's converter rewrites it as opset 9's, the batch axis dropped
from the graph's inputs and outputs.)

Unrolled: a Scan of the main graph whose scan length is static, whose body holds no If / Loop / Scan of its own
(nested graphs are not renamed here) and no sparse initializer, and which unrolls to at most MAX_NODES nodes. Any
other is left as it is, and the support check (kiln.compiler.backends.tvm.ops) names why with `scan_refusal`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import infer_shapes, is_onnx_op
from kiln.compiler.passes.fold_constants import fold_constants
from kiln.compiler.passes.recurrent import Emitter, Refused, unroll_nodes

if TYPE_CHECKING:
    import onnx

MAX_NODES = 20_000  # body nodes × steps: a long sequence is refused rather than handed to TVM as a graph that size


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a Scan node's attributes and static shapes say."""

    steps: int
    states: tuple[str, ...]  # the initial states
    scans: tuple[str, ...]
    input_axes: tuple[int, ...]
    input_reverse: tuple[bool, ...]
    output_axes: tuple[int, ...]
    output_reverse: tuple[bool, ...]


def unroll_scan(graph: Graph) -> Graph:
    # only integer constants (indices, axes) are made here: the element type is never used
    unrolled = unroll_nodes(graph, _is_scan, lambda node, values, dims: _plan(node, dims),
                            lambda model, node: np.dtype(np.int64), _unroll)
    if unrolled is graph:
        return graph
    return fold_constants(dataclasses.replace(unrolled, body=infer_shapes(unrolled.body)))


def scan_refusal(node: "onnx.NodeProto", dims: Mapping[str, Sequence[int | None]]) -> str | None:
    """Why unroll_scan leaves the Scan `node` as it is; None where it unrolls it. `dims` holds the values' shapes
    (None: symbolic)."""
    try:
        _plan(node, dims)
    except Refused as refused:
        return str(refused)
    return None


def _is_scan(node: "onnx.NodeProto") -> bool:
    return is_onnx_op(node, "Scan")


def _plan(node, dims: Mapping) -> _Plan:
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    body, count = attributes["body"], attributes["num_scan_inputs"]
    nested = sorted({inner.op_type for inner in body.node
                     if any(a.HasField("g") or a.graphs for a in inner.attribute)})
    if nested:
        raise Refused(f"{', '.join(nested)} in the body (nested graphs are not unrolled)")
    if body.sparse_initializer:
        raise Refused("sparse initializers in the body")
    states, scans = tuple(node.input[:len(node.input) - count]), tuple(node.input[len(node.input) - count:])
    axes = tuple(attributes.get("scan_input_axes", [0] * count))
    lengths = {dims[name][axis] for name, axis in zip(scans, axes) if dims.get(name) and dims[name][axis] is not None}
    if len(lengths) > 1:
        raise Refused("scan inputs of different lengths")
    if not lengths:
        raise Refused("scan length not static; pin the input shapes")
    steps = lengths.pop()
    if not steps:
        raise Refused("empty scan (length 0)")
    if steps * len(body.node) > MAX_NODES:
        raise Refused(f"{steps * len(body.node):,} nodes once unrolled, over {MAX_NODES:,}")
    outputs = len(node.output) - len(states)
    return _Plan(steps, states, scans, axes,
                 tuple(map(bool, attributes.get("scan_input_directions", [0] * count))),
                 tuple(attributes.get("scan_output_axes", [0] * outputs)),
                 tuple(map(bool, attributes.get("scan_output_directions", [0] * outputs))))


def _unroll(node, plan: _Plan, e: Emitter) -> None:
    """Write (into `e`) the node's steps and outputs."""
    from onnx import helper, numpy_helper

    body = helper.get_attribute_value(next(a for a in node.attribute if a.name == "body"))
    shared = {}  # the body's initializers, one copy for all the steps
    for tensor in body.initializer:
        shared[tensor.name] = e.fresh(tensor.name)
        e.constants[shared[tensor.name]] = numpy_helper.to_array(tensor)
    indices = [e.const(np.array(t, np.int64)) for t in range(plan.steps)]
    states, produced = plan.states, []
    for t in range(plan.steps):
        sliced = [e.op("Gather", [name, indices[plan.steps - 1 - t if reverse else t]], axis=axis)
                  for name, axis, reverse in zip(plan.scans, plan.input_axes, plan.input_reverse)]
        results = _inline(body, [*states, *sliced], shared, e, f"step{t}")
        states = results[:len(states)]
        produced.append(results[len(states):])
    for state, name in zip(states, node.output):
        if name:
            e.op("Identity", [state], [name])
    for j, (axis, reverse) in enumerate(zip(plan.output_axes, plan.output_reverse)):
        name = node.output[len(states) + j]
        if name:
            _stack(e, [step[j] for step in (reversed(produced) if reverse else produced)], axis, name)


def _inline(body: "onnx.GraphProto", feeds: list[str], shared: dict[str, str], e: Emitter, label: str) -> list[str]:
    """Write (into `e`) the body's nodes once, its inputs bound to `feeds`; the names of its outputs."""
    import onnx

    names = {**shared, **{value.name: feed for value, feed in zip(body.input, feeds)}}
    for node in body.node:
        copied = onnx.NodeProto()
        copied.CopyFrom(node)
        copied.name = e.fresh(f"{label}/{node.name or node.op_type}")
        del copied.input[:]
        copied.input.extend(names.get(name, name) for name in node.input)
        for k, name in enumerate(node.output):
            if name:
                names[name] = copied.output[k] = e.fresh(f"{label}/{name}")
        e.nodes.append(copied)
    return [names.get(value.name, value.name) for value in body.output]


def _stack(e: Emitter, pieces: list[str], axis: int, output: str) -> None:
    """Write the pieces, stacked along a new `axis` (of the result's rank), into `output`."""
    if e.opset >= 13:
        axes = e.const(np.array([axis], np.int64))
        pieces = [e.op("Unsqueeze", [piece, axes]) for piece in pieces]
    else:
        pieces = [e.op("Unsqueeze", [piece], axes=[axis]) for piece in pieces]
    e.concat(pieces, axis, output)
