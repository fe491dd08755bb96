"""Constant folding and shape resolution before import (issue #19), and the CPU pipeline's sort/scan dispatch
and symbolic extents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from kiln.compiler.frontends import ImportOptions, load_graph
from kiln.compiler.passes.fold_constants import fold_constants
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness, onnxruntime_outputs

INT64 = 7  # onnx.TensorProto.INT64


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _scalar_fill(value: float):
    from onnx import helper

    return helper.make_tensor("value", 1, [1], [value])


def _positions(b: GraphBuilder, x: str) -> str:
    """Range(0, Shape(x)[1]): position ids, the way exporters compute them."""
    length = b.node("Gather", [b.node("Shape", [x]), b.const(np.array(1, dtype=np.int64))], axis=0)
    return b.node("Range", [b.const(np.array(0, dtype=np.int64)), length, b.const(np.array(1, dtype=np.int64))])


def _causal_mask(b: GraphBuilder, positions: str) -> str:
    """Where(column <= row, 0, -inf): what attention scores get added so that no position sees a later one."""
    visible = b.node("LessOrEqual", [b.node("Unsqueeze", [positions, b.const(_i64(0))]),
                                     b.node("Unsqueeze", [positions, b.const(_i64(1))])])
    return b.node("Where", [visible, b.const(np.array(0, dtype=np.float32)),
                            b.const(np.array(-np.inf, dtype=np.float32))])


def _constant_of_empty_shape(b: GraphBuilder) -> tuple[list[int], set[str]]:
    b.input("x", [2, 3])
    scalar = b.node("ConstantOfShape", [b.const(_i64())], value=_scalar_fill(1.5))  # shape []: a scalar
    b.node("Add", ["x", scalar], "y")
    return [2, 3], {"Add"}


def _shape_chain_reshape(b: GraphBuilder) -> tuple[list[int], set[str]]:
    b.input("x", ["batch", 4, 6])
    batch = b.node("Gather", [b.node("Shape", ["x"]), b.const(np.array(0, dtype=np.int64))], axis=0)
    shape = b.node("Concat", [b.node("Unsqueeze", [batch, b.const(_i64(0))]), b.const(_i64(-1))], axis=0)
    b.node("Reshape", ["x", shape], "y")
    return [2, 4, 6], {"Reshape"}


def _range_over_shape(b: GraphBuilder) -> tuple[list[int], set[str]]:
    b.input("x", [1, "seq", 4])
    column = b.node("Unsqueeze", [b.node("Cast", [_positions(b, "x")], to=1), b.const(_i64(0, 2))])
    b.node("Add", ["x", column], "y")
    return [1, 5, 4], {"Add"}


def _masked_softmax(b: GraphBuilder) -> tuple[list[int], set[str]]:
    b.input("x", [1, "seq", "seq"])
    b.node("Softmax", [b.node("Add", ["x", _causal_mask(b, _positions(b, "x"))])], "y", axis=-1)
    return [1, 5, 5], {"Add", "Softmax"}


def _constant_node_shape(b: GraphBuilder) -> tuple[list[int], set[str]]:
    from onnx import numpy_helper

    b.input("x", [2, 3])
    shape = b.node("Constant", [], value=numpy_helper.from_array(_i64(3, 2)))
    b.node("Reshape", ["x", shape], "y")
    return [2, 3], {"Reshape"}


FOLDED = {"constant_of_empty_shape": _constant_of_empty_shape, "shape_chain_reshape": _shape_chain_reshape,
          "range_over_shape": _range_over_shape, "causal_mask": _masked_softmax,
          "constant_node_shape": _constant_node_shape}


def _folded(build: Callable[[GraphBuilder], tuple[list[int], set[str]]], tmp_path: Path):
    """(source model path, folded ModelProto, pinned input shape, op types expected to remain)."""
    import onnx

    b = GraphBuilder("folding", opset=17)
    shape, remaining = build(b)
    b.output("y")  # its type from shape inference
    path = b.save(tmp_path / "model.onnx", infer_shapes=True)
    onnx.checker.check_model(str(path), full_check=True)
    graph = fold_constants(load_graph(path, ImportOptions({"x": tuple(shape)})))
    onnx.checker.check_model(graph.body, full_check=True)
    return path, graph.body, shape, remaining


@pytest.mark.parametrize("name", sorted(FOLDED))
def test_constant_subgraphs_become_initializers(name: str, tmp_path: Path):
    path, folded, shape, remaining = _folded(FOLDED[name], tmp_path)
    assert {node.op_type for node in folded.graph.node} == remaining
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(onnxruntime_outputs(folded, {"x": x})[0], onnxruntime_outputs(path, {"x": x})[0])


def _random_normal(b: GraphBuilder) -> tuple[list[int], set[str]]:
    b.input("x", [2, 3])
    b.node("Add", ["x", b.node("RandomNormal", [], shape=[2, 3], seed=1.0)], "y")
    return [2, 3], {"Add", "RandomNormal"}


def _dequantized_weight(b: GraphBuilder) -> tuple[list[int], set[str]]:
    b.input("x", [2, 3])
    weight = b.node("DequantizeLinear", [b.const(np.arange(12, dtype=np.int8).reshape(3, 4)),
                                         b.const(np.array(0.1, dtype=np.float32)), b.const(np.array(0, np.int8))])
    b.node("MatMul", ["x", weight], "y")
    return [2, 3], {"DequantizeLinear", "MatMul"}


def _large_fill(b: GraphBuilder) -> tuple[list[int], set[str]]:
    b.input("x", [1024, "n"])
    b.node("Add", ["x", b.node("ConstantOfShape", [b.node("Shape", ["x"])], value=_scalar_fill(2.0))], "y")
    return [1024, 2048], {"Add", "ConstantOfShape"}  # 2M elements: computed at run time from a stored shape


@pytest.mark.parametrize("build", [_random_normal, _dequantized_weight, _large_fill], ids=lambda f: f.__name__[1:])
def test_random_quantization_and_large_results_stay_nodes(build, tmp_path: Path):
    path, folded, shape, remaining = _folded(build, tmp_path)
    assert {node.op_type for node in folded.graph.node} == remaining
    assert folded.ByteSize() < 10_000
    if build is not _random_normal:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(onnxruntime_outputs(folded, {"x": x})[0],
                                      onnxruntime_outputs(path, {"x": x})[0])


def test_a_graph_without_constant_subgraphs_is_returned_as_is(tmp_path: Path):
    b = GraphBuilder("plain", opset=17)
    b.input("x", [2, 3])
    b.node("Relu", ["x"], "y")
    b.output("y", [2, 3])
    graph = load_graph(b.save(tmp_path / "plain.onnx"), ImportOptions())
    assert fold_constants(graph) is graph


def _transformer_block(path: Path) -> Path:
    """Single-head causal self-attention as transformers exports it: position ids Range(0, Shape(x)[1]), a causal
    mask Where(mask, 0, -inf), ConstantOfShape([]) for the score scale, Shape -> Gather -> Concat -> Reshape."""
    rng = np.random.default_rng(0)
    width = 16
    b = GraphBuilder("attention", opset=17)
    b.input("x", [1, "seq", width])
    weight = lambda *shape: b.const((rng.standard_normal(shape) * 0.3).astype(np.float32))  # noqa: E731
    positions = _positions(b, "x")
    h = b.node("Add", ["x", b.node("Gather", [weight(32, width), positions], axis=0)])
    q, k, v = (b.node("MatMul", [h, weight(width, width)]) for _ in range(3))
    scores = b.node("MatMul", [q, b.node("Transpose", [k], perm=[0, 2, 1])])
    scale = b.node("ConstantOfShape", [b.const(_i64())], value=_scalar_fill(width ** -0.5))
    attention = b.node("Softmax", [b.node("Add", [b.node("Mul", [scores, scale]), _causal_mask(b, positions)])],
                       axis=-1)
    shape = b.node("Shape", ["x"])
    dims = [b.node("Unsqueeze", [b.node("Gather", [shape, b.const(np.array(i, dtype=np.int64))], axis=0),
                                 b.const(_i64(0))]) for i in (0, 1)]
    out = b.node("Reshape", [b.node("MatMul", [attention, v]), b.node("Concat", [*dims, b.const(_i64(-1))], axis=0)])
    b.node("Add", [out, h], "y")
    b.output("y", [1, "seq", width])
    return b.save(path, check=True)


def test_transformer_block_compiles_and_matches_onnxruntime(tmp_path: Path):
    model = _transformer_block(tmp_path / "attention.onnx")
    x = np.random.default_rng(1).standard_normal((1, 8, 16)).astype(np.float32)
    check_correctness(model, {"x": x}, tmp_path, rtol=1e-4, atol=1e-5)


def _topk(b: GraphBuilder) -> None:
    from onnx import helper

    b.input("x", [3, 10])
    b.nodes.append(helper.make_node("TopK", ["x", b.const(_i64(4))], ["values", "indices"], axis=-1))
    b.output("values", [3, 4])
    b.output("indices", [3, 4], dtype=INT64)


def _cumsum(b: GraphBuilder) -> None:
    b.input("x", [3, 10])
    b.node("CumSum", ["x", b.const(np.array(1, dtype=np.int64))], "y")
    b.output("y", [3, 10])


def _cumsum_exclusive_reverse(b: GraphBuilder) -> None:
    b.input("x", [3, 10])
    b.node("CumSum", ["x", b.const(np.array(0, dtype=np.int64))], "y", exclusive=1, reverse=1)
    b.output("y", [3, 10])


@pytest.mark.parametrize("build", [_topk, _cumsum, _cumsum_exclusive_reverse], ids=lambda f: f.__name__[1:])
def test_sort_and_scan_ops_compile_and_match_onnxruntime(build, tmp_path: Path):
    b = GraphBuilder(build.__name__[1:], opset=17)
    build(b)
    x = np.random.default_rng(2).standard_normal((3, 10)).astype(np.float32)
    check_correctness(b.save(tmp_path / "model.onnx", check=True), {"x": x}, tmp_path)


def test_a_symbolic_extent_leaves_the_kernel_to_tvms_default_schedule():
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    import kiln
    from kiln.compiler.backends.tvm.schedules.common import cpu_spec
    from kiln.compiler.backends.tvm.schedules.pipeline import cpu_pipeline, fuse, rules_used, schedule_module

    @tvm.script.ir_module
    class Dynamic:
        @R.function
        def main(x: R.Tensor(("n", 16), "float32")) -> R.Tensor(("n", 16), "float32"):
            with R.dataflow():
                y = R.nn.relu(R.add(x, R.const(1.0, "float32")))
                R.output(y)
            return y

    target = tvm.target.Target(kiln.target("host").tvm_target)
    with target:
        scheduled = schedule_module(cpu_spec(target))(fuse(Dynamic, target))
    assert set(rules_used(scheduled).values()) == {"none"}
    rules: dict[str, int] = {}
    vm = relax.VirtualMachine(tvm.compile(Dynamic, target=target, relax_pipeline=cpu_pipeline(target, rules=rules)),
                              tvm.cpu())
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), np.maximum(x + 1, 0), rtol=1e-6)
    assert rules == {"none": 1}
