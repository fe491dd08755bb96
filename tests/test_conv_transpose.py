"""The sub-pixel rewrite of ConvTranspose (passes.conv_transpose) against ONNX Runtime running the original node:
a grid of kernels, strides, pads and output paddings, what it leaves as is, and a compiled model (#26 item 2)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest

import kiln
from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes import run_passes
from kiln.compiler.passes.conv_transpose import conv_transpose
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

RNG = np.random.default_rng(26)


def _model(folder: Path, channels: tuple[int, int], size: tuple[int, int], kernel: tuple[int, int],
           bias: bool = True, **attributes) -> Path:
    """x [2, IC, H, W] -> ConvTranspose(kernel, **attributes) -> y, its output shape left to inference."""
    (ic, oc), group = channels, attributes.get("group", 1)
    b = GraphBuilder("conv_transpose", opset=17)
    b.input("x", [2, ic, *size])
    inputs = ["x", b.const(RNG.standard_normal((ic, oc // group, *kernel)).astype(np.float32))]
    if bias:
        inputs.append(b.const(RNG.standard_normal(oc).astype(np.float32)))
    b.node("ConvTranspose", inputs, "y", kernel_shape=list(kernel), **attributes)
    b.output("y")
    return b.save(folder / "conv_transpose.onnx", infer_shapes=True)


def _check_rewrite(path: Path) -> onnx.ModelProto:
    rewritten = conv_transpose(load(path)).body
    onnx.checker.check_model(rewritten)
    assert "ConvTranspose" not in [node.op_type for node in rewritten.graph.node]
    shape = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    feed = {"x": RNG.standard_normal(shape).astype(np.float32)}
    expected, = onnxruntime_outputs(path, feed)
    got, = onnxruntime_outputs(rewritten, feed)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    return rewritten


GRID = [(k, s, pads, extra) for k, s, pads, extra in itertools.product(
    (1, 2, 3, 4, 5), (1, 2, 3), ((0, 0, 0, 0), (1, 1, 1, 1), (2, 1, 0, 3)), (0, 1, 2)) if extra < s]


@pytest.mark.parametrize("kernel, stride, pads, output_padding", GRID)
def test_rewrite_matches_onnxruntime(tmp_path, kernel, stride, pads, output_padding):
    path = _model(tmp_path, (3, 5), (5, 7), (kernel, kernel), strides=[stride, stride], pads=list(pads),
                  output_padding=[output_padding, output_padding])
    _check_rewrite(path)


@pytest.mark.parametrize("kernel, strides, pads, output_padding", [
    ((4, 3), (2, 3), (1, 0, 1, 2), (1, 0)),
    ((2, 5), (3, 1), (0, 2, 4, 2), (2, 0)),
    ((3, 3), (2, 2), (5, 5, 5, 5), (0, 0)),  # pads past the kernel: the conv starts later in the phases
])
def test_rewrite_of_unequal_axes_matches_onnxruntime(tmp_path, kernel, strides, pads, output_padding):
    path = _model(tmp_path, (16, 8), (9, 6), kernel, bias=False, strides=list(strides), pads=list(pads),
                  output_padding=list(output_padding))
    _check_rewrite(path)


@pytest.mark.parametrize("attributes", [{"group": 2}, {"dilations": [2, 2]}, {"auto_pad": "SAME_UPPER"}])
def test_other_conv_transposes_are_left_as_they_are(tmp_path, attributes):
    path = _model(tmp_path, (4, 4), (4, 4), (3, 3), strides=[2, 2], **attributes)
    graph = load(path)
    assert conv_transpose(graph) is graph


def test_rewritten_pose_head_compiles_and_matches_onnxruntime(tmp_path):
    """simple_pose's head in small: ConvTranspose(4, 2, 1) + BatchNorm + ReLU twice, then a 1x1 conv."""
    b = GraphBuilder("pose_head", opset=17)
    b.input("x", [1, 32, 4, 3])
    y = "x"
    for _ in range(2):
        weight = b.const((RNG.standard_normal((32, 32, 4, 4)) * 0.1).astype(np.float32))
        y = b.node("ConvTranspose", [y, weight], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[4, 4])
        y = b.node("BatchNormalization", [y, *(b.const(RNG.uniform(0.5, 1.5, 32).astype(np.float32))
                                               for _ in range(4))])
        y = b.node("Relu", [y])
    b.node("Conv", [y, b.const(RNG.standard_normal((17, 32, 1, 1)).astype(np.float32))], "heat")
    b.output("heat", [1, 17, 16, 12])
    original = b.save(tmp_path / "head.onnx", check=True)
    rewritten = tmp_path / "head_subpixel.onnx"
    onnx.save(conv_transpose(run_passes(load(original))).body, str(rewritten))
    feed = {"x": RNG.standard_normal((1, 32, 4, 3)).astype(np.float32)}
    artifact = compile_to(rewritten, tmp_path / "head.kiln", shapes={"x": (1, 32, 4, 3)})
    got = kiln.load(artifact).run(feed)["heat"]
    np.testing.assert_allclose(got, onnxruntime_outputs(original, feed)[0], rtol=1e-4, atol=1e-4)
