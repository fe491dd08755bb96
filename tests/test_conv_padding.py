"""Conv padding made explicit (passes.conv_padding): "same" auto-padding resolved and zero Pads folded into the Conv,
each rewritten graph against ONNX Runtime running the original, what is left alone, and a compiled model."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest

from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes.conv_padding import conv_padding
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness, onnxruntime_outputs

RNG = np.random.default_rng(7)
SHAPE = (1, 4, 11, 10)


def _conv(b: GraphBuilder, x: str, kernel: tuple[int, int], output: str | None = None, **attributes) -> str:
    weight = b.const(RNG.standard_normal((6, SHAPE[1] // attributes.get("group", 1), *kernel)).astype(np.float32))
    return b.node("Conv", [x, weight, b.const(RNG.standard_normal(6).astype(np.float32))], output, **attributes)


def _matches(path: Path) -> onnx.ModelProto:
    """The rewritten model, after checking that it computes what ONNX Runtime computes with the original."""
    rewritten = conv_padding(load(path)).body
    onnx.checker.check_model(rewritten)
    feed = {"x": RNG.standard_normal(SHAPE).astype(np.float32)}
    for actual, expected in zip(onnxruntime_outputs(rewritten, feed), onnxruntime_outputs(path, feed)):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    return rewritten


def _attributes(model: onnx.ModelProto) -> list[dict]:
    return [{a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            for node in model.graph.node if node.op_type == "Conv"]


@pytest.mark.parametrize("mode, kernel, stride", list(itertools.product(
    ("SAME_UPPER", "SAME_LOWER"), ((3, 3), (4, 5), (1, 1)), (1, 2, 3))))
def test_same_auto_padding_becomes_explicit(tmp_path: Path, mode: str, kernel, stride: int):
    b = GraphBuilder("same", opset=17)
    b.input("x", SHAPE)
    _conv(b, "x", kernel, "y", auto_pad=mode, kernel_shape=list(kernel), strides=[stride] * 2)
    b.output("y")
    (conv,) = _attributes(_matches(b.save(tmp_path / "same.onnx", infer_shapes=True)))
    assert conv["auto_pad"] == b"NOTSET" and len(conv["pads"]) == 4


@pytest.mark.parametrize("pads, conv_pads, auto_pad", [
    ([0, 0, 0, 0, 0, 0, 1, 1], None, "VALID"),  # TensorFlow-style "same" for a stride-2 conv
    ([0, 0, 2, 1, 0, 0, 0, 3], [1, 0, 1, 2], None),
    ([0, 0, 0, 0, 0, 0, 0, 0], None, None),
])
def test_a_zero_pad_folds_into_the_conv(tmp_path: Path, pads, conv_pads, auto_pad):
    b = GraphBuilder("pad", opset=17)
    b.input("x", SHAPE)
    padded = b.node("Pad", ["x", b.const(np.array(pads, np.int64)), b.const(np.array(0.0, np.float32))])
    attributes = {"pads": conv_pads} if conv_pads else {"auto_pad": auto_pad} if auto_pad else {}
    _conv(b, padded, (3, 3), "y", strides=[2, 2], **attributes)
    b.output("y")
    rewritten = _matches(b.save(tmp_path / "pad.onnx", infer_shapes=True))
    assert [node.op_type for node in rewritten.graph.node] == ["Conv"]


def _pad_then(b: GraphBuilder, value: float, mode: str = "constant", reader: str = "Conv") -> None:
    b.input("x", SHAPE)
    padded = b.node("Pad", ["x", b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
                            b.const(np.array(value, np.float32))], mode=mode)
    _conv(b, padded, (3, 3), "y")
    b.output("y")
    if reader == "Relu":
        b.node("Relu", [padded], "z")
        b.output("z")


@pytest.mark.parametrize("value, mode, reader", [(1.5, "constant", "Conv"), (0.0, "reflect", "Conv"),
                                                 (0.0, "constant", "Relu")])
def test_a_pad_the_conv_cannot_take_stays(tmp_path: Path, value: float, mode: str, reader: str):
    b = GraphBuilder("kept", opset=17)
    _pad_then(b, value, mode, reader)
    assert "Pad" in [node.op_type for node in _matches(b.save(tmp_path / "kept.onnx", infer_shapes=True)).graph.node]


def test_compiled_same_convs_match_onnxruntime(tmp_path: Path):
    b = GraphBuilder("compiled", opset=17)
    b.input("x", SHAPE)
    y = _conv(b, "x", (3, 3), auto_pad="SAME_UPPER", kernel_shape=[3, 3], strides=[2, 2])
    padded = b.node("Pad", [b.node("Relu", [y]), b.const(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64))])
    weight = b.const(RNG.standard_normal((6, 6, 3, 3)).astype(np.float32))
    b.node("Conv", [padded, weight], "y", strides=[2, 2])
    b.output("y")
    path = b.save(tmp_path / "compiled.onnx", infer_shapes=True)
    check_correctness(path, {"x": RNG.standard_normal(SHAPE).astype(np.float32)}, tmp_path)
