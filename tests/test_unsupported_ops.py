"""Correct or refuse (issue #19): what TVM's importer cannot convert is refused with exit 4 and the reason, by
what the importer really handles (domain, opset, constant-ness of parameters), subgraphs included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kiln.cli import cli
from kiln.errors import UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness


def _reduce_sum(path: Path, *, constant_axes: bool) -> Path:
    b = GraphBuilder("reduce", opset=18)
    x = b.input("x", [2, 3, 4])
    axes = b.const(np.array([1], np.int64), "axes") if constant_axes else b.input("axes", [1], TensorProto.INT64)
    b.output(b.node("ReduceSum", [x, axes], "out", name="sum_0", keepdims=0), [2, 4])
    return b.save(path)


def _compile(cli_runner, model: Path, tmp_path: Path, *shapes: str):
    args = ["compile", str(model), "-o", str(tmp_path / "o.kiln")]
    for shape in shapes:
        args += ["--input-shape", shape]
    return cli_runner.invoke(cli, args)


def test_runtime_axes_are_refused(cli_runner, tmp_path: Path):
    model = _reduce_sum(tmp_path / "model.onnx", constant_axes=False)
    result = _compile(cli_runner, model, tmp_path, "x:2x3x4", "axes:1")
    assert result.exit_code == UnsupportedOpError.exit_code, result.output
    assert "ReduceSum (axes must be constant) \u00d71 (nodes sum_0)" in result.stderr
    assert not (tmp_path / "o.kiln").exists()
    inspected = json.loads(cli_runner.invoke(cli, ["inspect", str(model), "--json"]).stdout)
    assert inspected["unsupported"] == {"ReduceSum (axes must be constant)": ["sum_0"]}


def test_constant_axes_compile_and_match(tmp_path: Path):
    model = _reduce_sum(tmp_path / "model.onnx", constant_axes=True)
    check_correctness(model, {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}, tmp_path)


def test_axes_computed_from_constants_count_as_constant(tmp_path: Path):
    from kiln.compiler.backends.tvm.ops import unsupported_ops

    b = GraphBuilder("reduce", opset=18)
    x = b.input("x", [2, 3, 4])
    axes = b.node("Add", [b.const(np.array([0], np.int64)), b.const(np.array([1], np.int64))])
    b.output(b.node("ReduceSum", [x, axes], "out", name="sum_0"), [2, 1, 4])
    assert unsupported_ops(b.model()) == {}


def _attention(path: Path) -> Path:
    b = GraphBuilder("attention", opset=23)
    q, k, v = (b.input(name, [1, 2, "seq", 8]) for name in "qkv")
    b.output(b.node("Attention", [q, k, v], "out", name="attn_0"), [1, 2, "seq", 8])
    return b.save(path)


def test_opset_23_attention_is_refused_and_inspected(cli_runner, tmp_path: Path):
    """Refused where its ONNX function body cannot replace it: that reshapes by the input shapes, here not known
    (kiln.compiler.passes.function_expansion; tests/test_onnx_functions.py compiles it with static shapes)."""
    model = _attention(tmp_path / "model.onnx")
    result = _compile(cli_runner, model, tmp_path)
    assert result.exit_code == UnsupportedOpError.exit_code, result.output
    assert "opset-23 Attention; TVM converts com.microsoft's" in result.stderr and "attn_0" in result.stderr
    human = cli_runner.invoke(cli, ["inspect", str(model)])
    assert human.exit_code == 0 and "Attention (opset-23 Attention" in human.stdout


def _if_model(path: Path, branch_op: str) -> Path:
    x_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])

    def branch(name: str, op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["x"], ["y"], name=f"{name}_op")], name, [], [x_info])

    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["out"], name="if_0", then_branch=branch("then", branch_op),
                          else_branch=branch("else", "Relu"))],
        "if", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_if_nested_in_an_if_branch_is_refused_and_one_level_compiles(cli_runner, tmp_path: Path):
    """TVM's VM code generator fails on nested If ("Var gv is not defined", exit 1); one level compiles."""
    def constant_branch(name: str, value: float) -> onnx.GraphProto:
        constant = helper.make_tensor(f"{name}_value", TensorProto.FLOAT, [1], [value])
        return helper.make_graph([helper.make_node("Constant", [], [f"{name}_out"], value=constant)], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1])])

    inner = helper.make_node("If", ["c2"], ["inner_out"], name="inner_if", then_branch=constant_branch("a", 1.0),
                             else_branch=constant_branch("b", 2.0))
    then = helper.make_graph([inner], "then", [], [helper.make_tensor_value_info("inner_out", TensorProto.FLOAT, [1])])
    for nested in (True, False):
        branch = then if nested else constant_branch("a", 1.0)
        graph = helper.make_graph(
            [helper.make_node("If", ["c1"], ["y"], name="outer_if", then_branch=branch,
                              else_branch=constant_branch("c", 3.0))], "g",
            [helper.make_tensor_value_info(name, TensorProto.BOOL, []) for name in ("c1", "c2")],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        model = tmp_path / f"nested_{nested}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
        result = cli_runner.invoke(cli, ["compile", str(model), "-o", str(tmp_path / f"{nested}.kiln"), "--quiet"])
        if nested:
            assert result.exit_code == UnsupportedOpError.exit_code, result.output
            assert "nodes outer_if/then_branch/inner_if" in result.stderr
        else:
            assert result.exit_code == 0, result.output


def test_unsupported_op_inside_if_branch(cli_runner, tmp_path: Path):
    model = _if_model(tmp_path / "model.onnx", "Celu")
    inspected = json.loads(cli_runner.invoke(cli, ["inspect", str(model), "--json"]).stdout)
    assert inspected["unsupported"] == {"Celu": ["if_0/then_branch/then_op"]}
    result = _compile(cli_runner, model, tmp_path)
    assert result.exit_code == UnsupportedOpError.exit_code, result.output
    assert "Celu \u00d71 (nodes if_0/then_branch/then_op)" in result.stderr


def test_other_domains_are_refused_by_domain(tmp_path: Path):
    from kiln.compiler.backends.tvm.ops import unsupported_ops

    b = GraphBuilder("ml")
    x = b.input("x", [1, 4])
    b.nodes.append(helper.make_node("Normalizer", [x], ["n"], name="norm_0", domain="ai.onnx.ml"))
    b.nodes.append(helper.make_node("FastGelu", ["n"], ["out"], name="gelu_0", domain="com.microsoft"))
    b.output("out", [1, 4])
    assert unsupported_ops(b.model()) == {"ai.onnx.ml.Normalizer (domain ai.onnx.ml)": ["norm_0"]}


def test_sequence_input_is_refused_before_symbolic_dims(cli_runner, tmp_path: Path):
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("SequenceLength", ["seq"], ["out"], name="len_0")], "seq", [seq],
                              [helper.make_tensor_value_info("out", TensorProto.INT64, [])])
    model = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    result = _compile(cli_runner, model, tmp_path)
    assert result.exit_code == UnsupportedOpError.exit_code, result.output
    assert "sequence inputs not pinned: give their elements' shapes with --sequence-shape" in result.stderr


def test_a_model_of_the_ml_domain_only_is_refused_by_its_domain_not_its_opset(cli_runner, tmp_path: Path):
    """An ai.onnx.ml model imports no default-domain opset: it was told its "opset 1 is older than 11" (exit 3)."""
    node = helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml", name="normalize", norm="MAX")
    graph = helper.make_graph([node], "ml", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)])
    onnx.save(model, str(tmp_path / "ml.onnx"))
    result = _compile(cli_runner, tmp_path / "ml.onnx", tmp_path)
    assert result.exit_code == UnsupportedOpError.exit_code, result.output
    assert "ai.onnx.ml.Normalizer (domain ai.onnx.ml)" in result.stderr and "older than" not in result.stderr


def test_outputs_the_converter_leaves_empty_are_refused(tmp_path: Path):
    """TVM's LayerNormalization computes only Y: a graph reading Mean and InvStdDev got empty arrays (exit 0)."""
    from kiln.compiler.backends.tvm.ops import unsupported_ops

    b = GraphBuilder("layer_norm", opset=17)
    x = b.input("x", [2, 4])
    scale, bias = b.const(np.ones(4, np.float32)), b.const(np.zeros(4, np.float32))
    b.nodes.append(helper.make_node("LayerNormalization", [x, scale, bias], ["y", "mean", "inv_std"], name="ln"))
    for name in ("y", "mean", "inv_std"):
        b.output(name, [2, 4] if name == "y" else [2, 1])
    assert unsupported_ops(b.model()) == {"LayerNormalization (Mean and InvStdDev outputs)": ["ln"]}
    b.outputs[1:] = []
    b.nodes[0].output[1:] = []
    check_correctness(b.save(tmp_path / "y_only.onnx"), {"x": np.random.default_rng(0).standard_normal((2, 4),
                                                                                                     np.float32)},
                      tmp_path)


def test_attributes_the_converter_ignores_are_refused(tmp_path: Path):
    """TVM's IsInf ignores detect_negative=0 and answered True for -inf too (exit 0, a wrong answer)."""
    from kiln.compiler.backends.tvm.ops import unsupported_ops

    def is_inf(**attributes) -> onnx.ModelProto:
        b = GraphBuilder("isinf", opset=13)
        b.input("x", [4])
        b.nodes.append(helper.make_node("IsInf", ["x"], ["y"], name="inf", **attributes))
        b.output("y", [4], TensorProto.BOOL)
        return b.model()

    assert unsupported_ops(is_inf(detect_negative=0)) == {"IsInf (detect_negative 0 (the converter ignores it))":
                                                          ["inf"]}
    assert unsupported_ops(is_inf(detect_negative=1)) == {}
    onnx.save(is_inf(), str(tmp_path / "isinf.onnx"))
    check_correctness(tmp_path / "isinf.onnx", {"x": np.array([1.0, np.inf, -np.inf, np.nan], np.float32)}, tmp_path)


def test_inputs_the_converter_takes_wrongly_at_run_time_are_refused():
    """TVM's Expand broadcasts to a run-time shape one way only ([3, 1] by [2, 1, 6] gave [2, 1, 6], not
    [2, 3, 6]); its NonMaxSuppression replaces run-time limits with its defaults. Both were wrong answers."""
    from kiln.compiler.backends.tvm.ops import unsupported_ops

    b = GraphBuilder("expand", opset=13)
    b.output(b.node("Expand", [b.input("x", [3, 1]), b.input("shape", [3], TensorProto.INT64)], "y", name="exp"))
    assert unsupported_ops(b.model()) == {"Expand (shape must be constant)": ["exp"]}
    b = GraphBuilder("nms", opset=11)
    limits = [b.const(np.array([2], np.int64)), b.input("iou", [1]), b.const(np.array([0.0], np.float32))]
    b.output(b.node("NonMaxSuppression", [b.input("boxes", [1, 6, 4]), b.input("scores", [1, 1, 6]), *limits],
                    "selected", name="nms"))
    assert unsupported_ops(b.model()) == {"NonMaxSuppression (iou_threshold must be constant)": ["nms"]}


def _one_node(op: str, inputs: list[tuple[str, int, list[int]]], outputs: int = 1, opset: int = 23,
              **attributes) -> onnx.ModelProto:
    """A graph of one node named "n" over graph inputs (name, element type, shape); "" for an omitted input."""
    b = GraphBuilder(op.lower(), opset=opset)
    names = [b.input(name, shape, dtype) if name else "" for name, dtype, shape in inputs]
    b.nodes.append(helper.make_node(op, names, [f"y{i}" for i in range(outputs)], name="n", **attributes))
    for i in range(outputs):
        b.output(f"y{i}")
    return b.model()


F32, F16, I32, I64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT32, TensorProto.INT64
# Each raised an exception in TVM's importer or legalization (exit 1) before it was refused.
CONVERTER_CRASHES = {
    "ConstantOfShape (input must be constant)": _one_node("ConstantOfShape", [("shape", I64, [3])]),
    "MaxPool (Indices output)": _one_node("MaxPool", [("x", F32, [1, 1, 4, 4])], outputs=2, kernel_shape=[2, 2]),
    "DequantizeLinear (block_size 2 (the converter rejects it))": _one_node(
        "DequantizeLinear", [("x", TensorProto.INT8, [2, 4]), ("scale", F32, [2, 2])], axis=1, block_size=2),
    "OptionalHasElement (no input; the converter needs one)": _one_node("OptionalHasElement", []),
    "Elu (float16 input; the converter's constants are float32)": _one_node("Elu", [("x", F16, [4])]),
    "Pow (exponent of another type than the base)": _one_node("Pow", [("x", F32, [4]), ("e", I64, [4])]),
    "Pow (int32 base; Relax's power takes floats only)": _one_node("Pow", [("x", I32, [4]), ("e", I32, [4])]),
    "EyeLike (dtype other than the input's)": _one_node("EyeLike", [("x", I32, [3, 3])], dtype=TensorProto.DOUBLE),
    "RMSNormalization (axis 0: every dim normalized)": _one_node(
        "RMSNormalization", [("x", F32, [2, 3]), ("w", F32, [2, 3])], axis=-2),
}


@pytest.mark.parametrize("label", CONVERTER_CRASHES)
def test_nodes_the_converter_crashes_on_are_refused(label: str):
    from kiln.compiler.backends.tvm.ops import unsupported_ops

    assert unsupported_ops(CONVERTER_CRASHES[label]) == {label: ["n"]}


def test_the_same_ops_with_what_the_converter_takes_are_not_refused():
    from kiln.compiler.backends.tvm.ops import unsupported_ops

    for model in (_one_node("MaxPool", [("x", F32, [1, 1, 4, 4])], kernel_shape=[2, 2]),
                  _one_node("Elu", [("x", F32, [4])]), _one_node("Pow", [("x", F32, [4]), ("e", F32, [4])]),
                  _one_node("EyeLike", [("x", I32, [3, 3])], dtype=I32), _one_node("OptionalHasElement", [("", 0, [])]),
                  _one_node("RMSNormalization", [("x", F32, [2, 3]), ("w", F32, [3])], axis=-1)):
        assert unsupported_ops(model) == {}, model.graph.node[0].op_type


def test_an_optional_input_given_a_shape_is_a_tensor_of_its_type(cli_runner, tmp_path: Path):
    """Pinning its shape once turned the optional input into a tensor of no dtype, which the runner could not
    allocate ("unknown dtype `unknown`", exit 1); the pinned optional is now given (kiln.compiler.frontends.sequences),
    a tensor of the type it wraps."""
    optional = helper.make_tensor_type_proto(TensorProto.FLOAT, [4])
    graph = helper.make_graph(
        [helper.make_node("OptionalHasElement", ["opt"], ["out"], name="has_0")], "optional",
        [helper.make_value_info("opt", helper.make_optional_type_proto(optional))],
        [helper.make_tensor_value_info("out", TensorProto.BOOL, [])])
    model = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(model))
    result = _compile(cli_runner, model, tmp_path, "opt:4")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o.kiln" / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "opt", "shape": [4], "dtype": "float32"}]
