"""The chores the graph passes share: rewrite_nodes leaves the graph it is given as it is, and is_onnx_op takes both
names of ONNX's default domain."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import is_onnx_op, rewrite_nodes
from kiln.testing.onnx_graphs import GraphBuilder


def _graph() -> Graph:
    b = GraphBuilder("relu_then_neg")
    b.input("x", [2])
    b.output(b.node("Neg", [b.node("Relu", ["x"], name="relu")], "y", name="neg"), [2])
    return Graph(b.model(check=True), None, None)


def test_rewrite_nodes_replaces_in_a_copy_and_keeps_the_graph_where_nothing_changes():
    graph = _graph()
    before = graph.body.SerializeToString()

    def replace(node):
        if not is_onnx_op(node, "Relu"):
            return None
        constants = {"zero": np.zeros((), np.float32)}
        return [helper.make_node("Max", [node.input[0], "zero"], list(node.output), name=node.name)], constants

    rewritten = rewrite_nodes(graph, replace)
    assert [n.op_type for n in rewritten.body.graph.node] == ["Max", "Neg"]
    assert [numpy_helper.to_array(t).tolist() for t in rewritten.body.graph.initializer] == [0.0]
    assert graph.body.SerializeToString() == before
    assert rewrite_nodes(graph, lambda node: None) is graph


def test_is_onnx_op_takes_both_names_of_the_default_domain():
    relu, explicit = helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["y"], domain="ai.onnx")
    other = helper.make_node("Relu", ["x"], ["y"], domain="com.microsoft")
    assert is_onnx_op(relu) and is_onnx_op(explicit, "Relu") and is_onnx_op(relu, "Conv", "Relu")
    assert not is_onnx_op(relu, "Conv") and not is_onnx_op(other) and not is_onnx_op(other, "Relu")
