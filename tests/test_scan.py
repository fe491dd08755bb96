"""Scan unrolled over its steps (passes.scan): small Scan models compiled by kiln against ONNX Runtime (a sum with a
state, each direction, scan axes other than 0, values of the outer scope, initializers and Constants in the body, two
states, scan inputs and scan outputs), the node suite's Scan cases against their expected outputs, and the forms
refused with exit 4 and the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kiln.cli import cli
from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes.scan import MAX_NODES, scan_refusal, unroll_scan
from kiln.errors import UnsupportedOpError
from kiln.testing.conformance import Status, load_cases, run_case
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness


def _value(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _body(nodes: list, inputs: list[str], outputs: list[str], initializers: dict[str, np.ndarray] | None = None):
    constants = [onnx.numpy_helper.from_array(array, name) for name, array in (initializers or {}).items()]
    return helper.make_graph(nodes, "body", [_value(name) for name in inputs], [_value(name) for name in outputs],
                             constants)


def _save(path: Path, body, feed: dict[str, np.ndarray], scan_inputs: list[str], outputs: list[str],
          before: tuple = (), **attributes) -> Path:
    """A graph of the nodes `before`, then one Scan node named "scan" of `body` over `scan_inputs` (its states the
    nodes' outputs and graph inputs), its outputs the graph's; every array of `feed` a graph input."""
    b = GraphBuilder("scan", opset=17)
    for name, array in feed.items():
        b.input(name, array.shape)
    b.nodes.extend(before)
    b.nodes.append(helper.make_node("Scan", scan_inputs, outputs, name="scan", body=body, **attributes))
    for name in outputs:
        b.output(name)
    return b.save(path, infer_shapes=True)


def _normal(rng, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


_SUM = _body([helper.make_node("Add", ["sum_in", "x_t"], ["sum_out"]),
              helper.make_node("Identity", ["sum_out"], ["y_t"])], ["sum_in", "x_t"], ["sum_out", "y_t"])


@pytest.mark.parametrize("attributes", [
    {},
    {"scan_input_directions": [1], "scan_output_directions": [1]},
    {"scan_input_directions": [1]},
    {"scan_input_axes": [1], "scan_output_axes": [-1]},
    {"scan_input_axes": [-1], "scan_output_axes": [1], "scan_output_directions": [1]},
], ids=["forward", "reverse", "reverse-input", "axis-1", "axis-last"])
def test_running_sum(tmp_path: Path, attributes: dict):
    rng = np.random.default_rng(0)
    x = _normal(rng, 4, 3, 2)
    axis = attributes.get("scan_input_axes", [0])[0]
    feed = {"initial": _normal(rng, *np.delete(x.shape, axis)), "x": x}
    model = _save(tmp_path / "sum.onnx", _SUM, feed, ["initial", "x"], ["total", "running"], num_scan_inputs=1,
                  **attributes)
    check_correctness(model, feed, tmp_path, rtol=1e-5, atol=1e-5)


def test_outer_values_initializers_and_constants_in_the_body(tmp_path: Path):
    """The body reads `w`, computed in the main graph, holds an initializer and a Constant node; the graph output
    `total` keeps its name."""
    body = _body([helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.float32(0.25))),
                  helper.make_node("Mul", ["h_in", "w"], ["scaled"]),
                  helper.make_node("Add", ["scaled", "x_t"], ["summed"]),
                  helper.make_node("Mul", ["summed", "half"], ["halved"]),
                  helper.make_node("Add", ["halved", "c"], ["h_out"]),
                  helper.make_node("Sub", ["h_out", "w"], ["y_t"])],
                 ["h_in", "x_t"], ["h_out", "y_t"], {"half": np.array([0.5, 2.0, -1.0], np.float32)})
    rng = np.random.default_rng(1)
    feed = {"initial": _normal(rng, 3), "x": _normal(rng, 5, 3), "v": _normal(rng, 3)}
    model = _save(tmp_path / "outer.onnx", body, feed, ["initial", "x"], ["total", "trace"],
                  before=(helper.make_node("Tanh", ["v"], ["w"]),), num_scan_inputs=1)
    check_correctness(model, feed, tmp_path, rtol=1e-5, atol=1e-5)
    rewritten = unroll_scan(load(model, {name: array.shape for name, array in feed.items()})).body
    assert "Scan" not in {node.op_type for node in rewritten.graph.node}
    assert [output.name for output in rewritten.graph.output] == ["total", "trace"]


def test_two_states_scan_inputs_and_outputs(tmp_path: Path):
    body = _body([helper.make_node("Mul", ["x_t", "z_t"], ["product"]),
                  helper.make_node("Add", ["a_in", "product"], ["a_out"]),
                  helper.make_node("Max", ["b_in", "x_t"], ["b_out"]),
                  helper.make_node("Mul", ["b_out", "z_t"], ["bz_t"]),
                  helper.make_node("Identity", ["a_out"], ["a_t"])],
                 ["a_in", "b_in", "x_t", "z_t"], ["a_out", "b_out", "a_t", "bz_t"])
    rng = np.random.default_rng(2)
    feed = {"a": _normal(rng, 2), "b": _normal(rng, 2), "x": _normal(rng, 3, 2), "z": _normal(rng, 2, 3)}
    model = _save(tmp_path / "two.onnx", body, feed, ["a", "b", "x", "z"], ["a_last", "b_last", "as", "bzs"],
                  num_scan_inputs=2, scan_input_axes=[0, 1], scan_input_directions=[0, 1], scan_output_axes=[0, 1],
                  scan_output_directions=[1, 0])
    check_correctness(model, feed, tmp_path, rtol=1e-5, atol=1e-5)


def _suite_cases() -> list:
    """The suite's Scan cases, and one function body holding a Scan. test_scan_sum is opset 8's, which the ONNX
    frontend upgrades before any pass runs."""
    return [case for case in load_cases() if (case.op == "Scan" and case.name != "test_scan_sum")
            or case.name == "test_linear_attention_gated_delta_expanded"]


@pytest.mark.parametrize("case", _suite_cases(), ids=lambda case: case.name)
def test_node_suite_case(tmp_path: Path, case):
    outcome = run_case(case, "kiln", tmp_path)
    assert outcome.status is Status.PASS, outcome


def test_nested_graph_in_the_body_is_refused(cli_runner, tmp_path: Path):
    branch = helper.make_graph([helper.make_node("Identity", ["x_t"], ["branch_out"])], "branch", [],
                               [_value("branch_out")])
    body = _body([helper.make_node("ReduceSum", ["x_t"], ["total_t"], keepdims=0),
                  helper.make_node("Greater", ["total_t", "zero"], ["positive"]),
                  helper.make_node("If", ["positive"], ["picked"], then_branch=branch, else_branch=branch),
                  helper.make_node("Add", ["s_in", "picked"], ["s_out"])],
                 ["s_in", "x_t"], ["s_out"], {"zero": np.array(0.0, np.float32)})
    rng = np.random.default_rng(3)
    feed = {"initial": _normal(rng, 2), "x": _normal(rng, 3, 2)}
    model = _save(tmp_path / "nested.onnx", body, feed, ["initial", "x"], ["total"], num_scan_inputs=1)
    result = cli_runner.invoke(cli, ["compile", str(model), "-o", str(tmp_path / "o.kiln"),
                                     "--input-shape", "initial:2", "--input-shape", "x:3x2"])
    assert result.exit_code == UnsupportedOpError.exit_code, result.output
    assert "Scan (If in the body (nested graphs are not unrolled))" in result.stderr, result.stderr


def test_scan_length_must_be_static_and_the_unrolling_small():
    scan = helper.make_node("Scan", ["initial", "x"], ["total", "running"], body=_SUM, num_scan_inputs=1)
    assert scan_refusal(scan, {"x": [None, 2]}) == "scan length not static; pin the input shapes"
    assert scan_refusal(scan, {"x": [3, 2]}) is None
    steps = MAX_NODES // len(_SUM.node) + 1
    assert scan_refusal(scan, {"x": [steps, 2]}) == f"{steps * 2:,} nodes once unrolled, over {MAX_NODES:,}"
