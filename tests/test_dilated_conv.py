"""The space-to-batch rewrite of dilated Convs (passes.dilated_conv) against ONNX Runtime running the original node,
what it leaves as is, and a compiled model (#26 item 2)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest

import kiln
from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes.dilated_conv import dilated_conv
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

RNG = np.random.default_rng(262)


def _model(folder: Path, kernel: tuple[int, int], group: int = 1, **attributes) -> Path:
    """x [2, 4, 11, 9] -> Conv(6 channels, kernel, group, **attributes) with a bias -> y."""
    b = GraphBuilder("dilated", opset=17)
    b.input("x", [2, 4, 11, 9])
    weight = b.const(RNG.standard_normal((6, 4 // group, *kernel)).astype(np.float32))
    b.node("Conv", ["x", weight, b.const(RNG.standard_normal(6).astype(np.float32))], "y", group=group, **attributes)
    b.output("y")
    return b.save(folder / "dilated.onnx", infer_shapes=True)


@pytest.mark.parametrize("kernel, dilations, pads, group", list(itertools.product(
    ((3, 3), (2, 3), (1, 1)), ((2, 2), (4, 4), (3, 2), (1, 2)), ((0, 0, 0, 0), (2, 2, 2, 2), (4, 3, 0, 5)), (1, 2))))
def test_rewrite_matches_onnxruntime(tmp_path, kernel, dilations, pads, group):
    path = _model(tmp_path, kernel, group, dilations=list(dilations), pads=list(pads))
    rewritten = dilated_conv(load(path)).body
    onnx.checker.check_model(rewritten)
    assert not any(a.name == "dilations" for node in rewritten.graph.node for a in node.attribute)
    feed = {"x": RNG.standard_normal((2, 4, 11, 9)).astype(np.float32)}
    expected, = onnxruntime_outputs(path, feed)
    got, = onnxruntime_outputs(rewritten, feed)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# the centre tap over every output; each other tap a Conv over the outputs where it reads the map, padded back
_PIECES = ["Pad", *["Slice", "Conv", "Pad"] * 4, "Slice", "Conv", *["Slice", "Conv", "Pad"] * 4, "Sum", "Reshape", "Add"]


@pytest.mark.parametrize("shape, dilation, group, form", [
    ((1, 4, 12, 40), 2, 1, ["Pad", "Reshape", "Transpose", "Reshape", "Conv", "Reshape", "Transpose", "Reshape"]),
    ((1, 4, 12, 40), 2, 2, ["Pad", "Reshape", "Transpose", "Reshape", "Conv", "Reshape", "Transpose", "Reshape"]),
    ((1, 4, 12, 14), 2, 1, ["Pad", *["Slice"] * 9, "Concat", "Conv"]),  # phases 7 wide: the taps as channels
    ((1, 4, 6, 6), 12, 1, ["Pad", "Slice", "Conv"]),  # past the map: only the centre tap reads data
    ((1, 4, 6, 6), 4, 1, _PIECES),  # the outer taps read the map for a third of the outputs: one Conv each there
    ((1, 4, 6, 6), 5, 1, _PIECES),  # the outer taps reach one row or column
])
def test_each_form_matches_onnxruntime(tmp_path, shape, dilation, group, form):
    """Space-to-batch where the phases are wide, the taps as channels where they would be narrow (DeepLab's ASPP),
    over the outputs where they read the map when that is much less than all."""
    b = GraphBuilder("form", opset=17)
    b.input("x", list(shape))
    weight = b.const(RNG.standard_normal((6, shape[1] // group, 3, 3)).astype(np.float32))
    b.node("Conv", ["x", weight, b.const(RNG.standard_normal(6).astype(np.float32))], "y", group=group,
           dilations=[dilation] * 2, pads=[dilation] * 4)
    b.output("y")
    path = b.save(tmp_path / "form.onnx", infer_shapes=True)
    rewritten = dilated_conv(load(path)).body
    assert [node.op_type for node in rewritten.graph.node] == form
    feed = {"x": RNG.standard_normal(shape).astype(np.float32)}
    np.testing.assert_allclose(onnxruntime_outputs(rewritten, feed)[0], onnxruntime_outputs(path, feed)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attributes", [{"dilations": [2, 2], "strides": [2, 2]},
                                        {"dilations": [2, 2], "auto_pad": "SAME_UPPER"}, {}])
def test_other_convs_are_left_as_they_are(tmp_path, attributes):
    graph = load(_model(tmp_path, (3, 3), **attributes))
    assert dilated_conv(graph) is graph


def test_rewritten_dilated_conv_compiles_and_matches_onnxruntime(tmp_path):
    """DeepLab's dilated 3x3 in small: 16 channels, dilation 2, padded to keep 12x12, then ReLU."""
    b = GraphBuilder("deeplab_block", opset=17)
    b.input("x", [1, 16, 12, 12])
    weight = b.const((RNG.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32))
    b.node("Relu", [b.node("Conv", ["x", weight], dilations=[2, 2], pads=[2, 2, 2, 2])], "y")
    b.output("y", [1, 16, 12, 12])
    original = b.save(tmp_path / "dilated.onnx", check=True)
    rewritten = tmp_path / "dilated_s2b.onnx"
    onnx.save(dilated_conv(load(original)).body, str(rewritten))
    feed = {"x": RNG.standard_normal((1, 16, 12, 12)).astype(np.float32)}
    got = kiln.load(compile_to(rewritten, tmp_path / "dilated.kiln", shapes={"x": (1, 16, 12, 12)})).run(feed)["y"]
    np.testing.assert_allclose(got, onnxruntime_outputs(original, feed)[0], rtol=1e-4, atol=1e-4)
