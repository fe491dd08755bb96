"""Ops that ONNX defines as a function of other ops, and TVM's importer does not convert (or converts wrongly), are
compiled from their function bodies (kiln.compiler.passes.function_expansion) and match ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness

RNG = np.random.default_rng(19)
INT64 = TensorProto.INT64


def _floats(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _attention(q_shape, kv_shape, mask: np.ndarray | None = None, **attrs):
    """Opset-23 Attention of inputs q, k, v (an additive float or a boolean mask as a constant)."""
    def build():
        b = GraphBuilder("attention", opset=23)
        inputs = [b.input("q", q_shape), b.input("k", kv_shape), b.input("v", kv_shape)]
        if mask is not None:
            inputs.append(b.const(mask, "mask"))
        b.output(b.node("Attention", inputs, "y", name="attention", **attrs))
        feed = {"q": _floats(*q_shape), "k": _floats(*kv_shape), "v": _floats(*kv_shape)}
        return b, feed
    return build


def _attention_with_cache():
    """Opset-23 Attention that appends k and v to a past key / value cache and returns the present ones too."""
    def build():
        b = GraphBuilder("attention_cache", opset=23)
        inputs = [b.input(name, [1, 2, 3, 8]) for name in "qkv"]
        inputs += ["", b.input("past_key", [1, 2, 4, 8]), b.input("past_value", [1, 2, 4, 8])]
        b.nodes.append(onnx.helper.make_node("Attention", inputs, ["y", "present_key", "present_value"],
                                             name="attention", is_causal=1))
        for name in ("y", "present_key", "present_value"):
            b.output(name)
        return b, {name: _floats(1, 2, 3 if len(name) == 1 else 4, 8) for name in ("q", "k", "v", "past_key",
                                                                                  "past_value")}
    return build


def _rotary(interleaved: int = 0, rotary_dim: int = 0):
    """RotaryEmbedding of x [batch, heads, seq, head size] at given positions, with constant cos / sin caches."""
    def build():
        b = GraphBuilder("rotary", opset=23)
        half = (rotary_dim or 8) // 2
        angles = np.arange(16)[:, None] * (10000.0 ** (-np.arange(half) / half))[None, :]
        inputs = [b.input("x", [1, 2, 3, 8]), b.const(np.cos(angles).astype(np.float32), "cos"),
                  b.const(np.sin(angles).astype(np.float32), "sin"), b.input("positions", [1, 3], INT64)]
        attrs = {"interleaved": interleaved, **({"rotary_embedding_dim": rotary_dim} if rotary_dim else {})}
        b.output(b.node("RotaryEmbedding", inputs, "y", name="rotary", **attrs))
        return b, {"x": _floats(1, 2, 3, 8), "positions": np.array([[5, 0, 11]], np.int64)}
    return build


def _rms_normalization():
    """RMSNormalization over every dim (axis 0), which TVM's converter refuses."""
    def build():
        b = GraphBuilder("rms", opset=23)
        b.output(b.node("RMSNormalization", [b.input("x", [2, 3, 4]), b.const(_floats(2, 3, 4), "scale")], "y",
                        name="rms", axis=0, epsilon=1e-5))
        return b, {"x": _floats(2, 3, 4)}
    return build


def _layer_normalization(axis: int):
    """LayerNormalization whose Mean and InvStdDev outputs are read too."""
    def build():
        b = GraphBuilder("layer_norm", opset=17)
        x = b.input("x", [2, 3, 5])
        shape = [2, 3, 5][axis:]
        b.nodes.append(onnx.helper.make_node(
            "LayerNormalization", [x, b.const(_floats(*shape), "scale"), b.const(_floats(*shape), "bias")],
            ["y", "mean", "inv_std_dev"], name="layer_norm", axis=axis, epsilon=1e-3))
        for name in ("y", "mean", "inv_std_dev"):
            b.output(name)
        return b, {"x": _floats(2, 3, 5)}
    return build


def _nll_loss(reduction: str, weighted: bool):
    """NegativeLogLikelihoodLoss of log-probabilities [N, C, D] with integer targets, one of them ignored."""
    def build():
        b = GraphBuilder("nll", opset=22)
        inputs = [b.input("x", [3, 5, 2]), b.input("target", [3, 2], INT64)]
        if weighted:
            inputs.append(b.const(RNG.uniform(0.5, 2, 5).astype(np.float32), "weight"))
        b.output(b.node("NegativeLogLikelihoodLoss", inputs, "loss", name="nll", reduction=reduction,
                        ignore_index=4))
        return b, {"x": _floats(3, 5, 2), "target": np.array([[0, 4], [3, 1], [2, 2]], np.int64)}
    return build


def _softmax_cross_entropy(reduction: str):
    """SoftmaxCrossEntropyLoss (whose body holds a NegativeLogLikelihoodLoss), with its log_prob output."""
    def build():
        b = GraphBuilder("sce", opset=13)
        inputs = [b.input("x", [4, 3]), b.input("target", [4], INT64), b.const(np.array([1, 2, .5], np.float32))]
        b.nodes.append(onnx.helper.make_node("SoftmaxCrossEntropyLoss", inputs, ["loss", "log_prob"], name="sce",
                                             reduction=reduction))
        b.output("loss")
        b.output("log_prob")
        return b, {"x": _floats(4, 3), "target": np.array([2, 0, 1, 1], np.int64)}
    return build


def _single(op: str, opset: int, shape: list[int], *constants: np.ndarray, **attrs):
    """One op of input x (and constant inputs after it)."""
    def build():
        b = GraphBuilder(op.lower(), opset=opset)
        inputs = [b.input("x", shape), *(b.const(value) for value in constants)]
        b.output(b.node(op, inputs, "y", name=op.lower(), **attrs))
        return b, {"x": _floats(*shape)}
    return build


CASES = {
    "attention_4d": _attention([2, 3, 4, 8], [2, 3, 6, 8]),
    "attention_4d_float_mask_scaled": _attention([1, 2, 4, 8], [1, 2, 6, 8], _floats(4, 6), scale=0.2),
    "attention_4d_bool_mask": _attention([1, 2, 4, 8], [1, 2, 6, 8], RNG.uniform(size=(1, 1, 4, 6)) > 0.3),
    "attention_4d_causal": _attention([1, 2, 5, 8], [1, 2, 5, 8], is_causal=1),
    "attention_4d_gqa": _attention([2, 4, 3, 8], [2, 2, 5, 8]),
    "attention_3d_gqa_causal_softcap": _attention([2, 3, 32], [2, 5, 16], q_num_heads=4, kv_num_heads=2,
                                                  is_causal=1, softcap=2.0),
    "attention_4d_past_present_causal": _attention_with_cache(),
    "rotary": _rotary(),
    "rotary_interleaved_partial": _rotary(interleaved=1, rotary_dim=4),
    "rms_normalization_axis0": _rms_normalization(),
    "layer_normalization_outputs": _layer_normalization(-1),
    "layer_normalization_outputs_axis1": _layer_normalization(1),
    "nll_loss_mean_weighted": _nll_loss("mean", True),
    "nll_loss_none": _nll_loss("none", False),
    "softmax_cross_entropy_mean": _softmax_cross_entropy("mean"),
    "softmax_cross_entropy_none": _softmax_cross_entropy("none"),
    "center_crop_pad": _single("CenterCropPad", 18, [5, 2, 7], np.array([3, 9], np.int64), axes=[0, 2]),
    "celu": _single("Celu", 12, [3, 4], alpha=0.5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_function_op_matches_onnxruntime(name: str, tmp_path: Path):
    builder, feed = CASES[name]()
    path = builder.save(tmp_path / f"{name}.onnx", infer_shapes=True)
    check_correctness(path, feed, tmp_path, rtol=1e-4, atol=1e-5)


def _unsupported(builder: GraphBuilder, tmp_path: Path, shapes: dict | None = None) -> dict[str, list[str]]:
    from kiln.compiler.backends.tvm.ops import unsupported_ops
    from kiln.compiler.frontends import ImportOptions
    from kiln.pipeline import load

    path = builder.save(tmp_path / "model.onnx", infer_shapes=True)
    return unsupported_ops(load(path, ImportOptions(shapes or {})).body)


def test_body_needing_unknown_shapes_keeps_the_refusal(tmp_path: Path):
    """Attention's body reshapes by the inputs' shapes; with a symbolic dim they are not known before run time, so
    the node stays refused (pinning the dim, as compiling does, expands it)."""
    b = GraphBuilder("attention", opset=23)
    b.output(b.node("Attention", [b.input(name, ["batch", 2, 4, 8]) for name in "qkv"], "y", name="attention"))
    assert list(_unsupported(b, tmp_path)) == ["Attention (opset-23 Attention; TVM converts com.microsoft's)"]
    assert _unsupported(b, tmp_path, {name: (1, 2, 4, 8) for name in "qkv"}) == {}


def test_nodes_the_importer_converts_are_left_alone(tmp_path: Path):
    """LayerNormalization read for Y only is TVM's own op, not its body: the pass leaves the graph as it is."""
    from kiln.compiler.frontends import ImportOptions
    from kiln.pipeline import load

    b = GraphBuilder("layer_norm", opset=17)
    b.output(b.node("LayerNormalization", [b.input("x", [2, 5]), b.const(_floats(5), "scale")], "y", name="ln"))
    graph = load(b.save(tmp_path / "model.onnx", infer_shapes=True), ImportOptions({}))
    assert [node.op_type for node in graph.body.graph.node] == ["LayerNormalization"]
