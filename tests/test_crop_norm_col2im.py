"""LpNormalization, CenterCropPad and Col2Im, which TVM's importer has no converter for, compile through kiln's
passes and compute as ONNX Runtime (LpNormalization) and onnx.reference (the others) do, with their parameters as
constants and, for CenterCropPad's shape and Col2Im's image_shape and block_shape, as inputs given at run time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes.center_crop_pad import center_crop_pad
from kiln.compiler.passes.col2im import MAX_TABLE, col2im, col2im_refusal
from kiln.compiler.passes.lp_normalization import lp_normalization
from kiln.errors import UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

_TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.int32: TensorProto.INT32,
          np.int64: TensorProto.INT64}


def _kiln(model: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> np.ndarray:
    artifact = compile_to(model, tmp_path / "model.kiln", "host", shapes={k: v.shape for k, v in feed.items()},
                          verify=False)
    return kiln.load(artifact).run(feed)["y"]


# ---- LpNormalization ---------------------------------------------------------------------------------------

def _lp(path: Path, x: np.ndarray, opset: int, **attributes) -> Path:
    b = GraphBuilder("lp", opset=opset)
    b.input("x", x.shape, _TYPES[x.dtype.type])
    b.output(b.node("LpNormalization", ["x"], "y", **attributes), x.shape, _TYPES[x.dtype.type])
    return b.save(path, check=True)


def _signed(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Values of both signs with a zero slice along the last axis and the first, so that some norms are 0."""
    x = np.random.default_rng(sum(shape)).normal(size=shape).astype(dtype)
    x[..., 0] = 0
    x[0] = 0
    return x


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("opset", [17, 22])  # ReduceL1 / L2's axes: an attribute before opset 18, an input after
def test_lp_normalization_matches_onnx_runtime(p: int, axis: int, opset: int, tmp_path: Path):
    x = _signed((3, 5, 7))
    model = _lp(tmp_path / "lp.onnx", x, opset, p=p, axis=axis)
    got, expected = _kiln(model, {"x": x}, tmp_path), onnxruntime_outputs(model, {"x": x})[0]
    assert not np.isnan(got).any()  # zero norms give 0, not 0 / 0
    assert (got[0] == 0).all() and (got[..., 0] == 0).all()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_l1_norm_takes_absolute_values_where_onnx_reference_does_not(tmp_path: Path):
    x = np.array([[-3, 1, 0], [2, -2, 0], [-1, -1, -2]], np.float64)
    model = _lp(tmp_path / "lp.onnx", x, 22, p=1, axis=1)
    got = _kiln(model, {"x": x}, tmp_path)
    np.testing.assert_array_equal(got, [[-0.75, 0.25, 0], [0.5, -0.5, 0], [-0.25, -0.25, -0.5]])
    np.testing.assert_array_equal(got, onnxruntime_outputs(model, {"x": x})[0])


def test_lp_normalization_of_other_p_is_refused_for_why(tmp_path: Path):
    model = _lp(tmp_path / "lp.onnx", np.ones((2, 3), np.float32), 22, p=3)
    with pytest.raises(UnsupportedOpError, match=r"LpNormalization \(p 3"):
        compile_to(model, tmp_path / "lp.kiln", "host", verify=False)
    graph = load(model)
    assert lp_normalization(graph) is graph


# ---- CenterCropPad -----------------------------------------------------------------------------------------

def _crop_pad(path: Path, x: np.ndarray, sizes: np.ndarray, axes: list[int] | None, constant: bool) -> Path:
    b = GraphBuilder("crop_pad", opset=18)
    b.input("x", x.shape, _TYPES[x.dtype.type])
    shape = b.const(sizes, "shape") if constant else b.input("shape", sizes.shape, _TYPES[sizes.dtype.type])
    out = list(x.shape)
    for axis, size in zip(axes if axes is not None else range(x.ndim), sizes.tolist()):
        out[axis] = size
    attributes = {"axes": axes} if axes is not None else {}
    b.output(b.node("CenterCropPad", ["x", shape], "y", name="crop_pad", **attributes), out, _TYPES[x.dtype.type])
    return b.save(path, check=True)


CROP_PAD = {
    # odd differences: the crop window starts half a pixel left, the extra padding goes after
    "crop odd, pad odd, keep": ((7, 4, 3), [4, 7, 3], None),
    "crop even, pad even": ((8, 2), [2, 6], None),
    "to one, from one": ((5, 1, 2), [1, 4], [0, 1]),
    "negative axes, reordered": ((3, 9, 6), [10, 1], [-1, 1]),
    "one axis of four": ((2, 3, 5, 4), [8], [2]),
}


@pytest.mark.parametrize("constant", [True, False], ids=["constant shape", "run-time shape"])
@pytest.mark.parametrize("case", CROP_PAD)
def test_center_crop_pad_matches_onnx_reference(case: str, constant: bool, tmp_path: Path):
    shape, sizes, axes = CROP_PAD[case]
    x = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape) * -1.5
    sizes = np.array(sizes, np.int64)
    model = _crop_pad(tmp_path / "crop_pad.onnx", x, sizes, axes, constant)
    feed = {"x": x} if constant else {"x": x, "shape": sizes}
    got, expected = _kiln(model, feed, tmp_path), ReferenceEvaluator(str(model)).run(None, feed)[0]
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_center_crop_pad_run_time_shape_of_int32_and_integer_data(tmp_path: Path):
    x = np.arange(-20, 15, dtype=np.int32).reshape(5, 7)
    sizes = np.array([8, 3], np.int32)
    model = _crop_pad(tmp_path / "crop_pad.onnx", x, sizes, None, False)
    feed = {"x": x, "shape": sizes}
    got = _kiln(model, feed, tmp_path)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ReferenceEvaluator(str(model)).run(None, feed)[0])


def test_center_crop_pad_of_an_empty_axis_pads_with_a_constant_shape_and_is_refused_with_a_run_time_one(
        tmp_path: Path):
    x = np.zeros((0, 3), np.float32)
    graph = load(_crop_pad(tmp_path / "constant.onnx", x, np.array([3, 3], np.int64), None, True))
    assert [n.op_type for n in center_crop_pad(graph).body.graph.node] == ["Pad"]
    model = _crop_pad(tmp_path / "run_time.onnx", x, np.array([3, 3], np.int64), None, False)
    with pytest.raises(UnsupportedOpError, match=r"CenterCropPad \(empty input axes \[0\]"):
        compile_to(model, tmp_path / "crop_pad.kiln", "host", shapes={"x": (0, 3), "shape": (2,)}, verify=False)


def test_center_crop_pad_of_a_constant_shape_is_one_slice_and_one_pad(tmp_path: Path):
    x = np.zeros((7, 4, 3), np.float32)
    graph = center_crop_pad(load(_crop_pad(tmp_path / "m.onnx", x, np.array([4, 7, 3], np.int64), None, True)))
    assert [n.op_type for n in graph.body.graph.node] == ["Slice", "Pad"]
    assert center_crop_pad(graph) is graph


# ---- Col2Im ------------------------------------------------------------------------------------------------

def _col2im(path: Path, x: np.ndarray, image: list[int], block: list[int], constant: bool, **attributes) -> Path:
    b = GraphBuilder("col2im", opset=18)
    b.input("x", x.shape, _TYPES[x.dtype.type])
    shapes = []
    for name, values in (("image_shape", image), ("block_shape", block)):
        shapes.append(b.const(np.array(values, np.int64), name) if constant
                      else b.input(name, [len(values)], TensorProto.INT64))
    channels = x.shape[1] // int(np.prod(block))
    b.output(b.node("Col2Im", ["x", *shapes], "y", name="col2im", **attributes), [x.shape[0], channels, *image],
             _TYPES[x.dtype.type])
    return b.save(path, check=True)


def _blocks(image, block, dilations, pads, strides) -> int:
    rank = len(image)
    return int(np.prod([(image[i] + pads[i] + pads[rank + i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1
                        for i in range(rank)]))


COL2IM = {
    "plain": ([5, 5], [1, 5], {}),
    "odd sizes, every attribute": ([7, 6], [3, 2], {"dilations": [2, 1], "pads": [1, 0, 2, 3], "strides": [2, 3]}),
    "overlapping blocks": ([4, 5], [3, 3], {}),
    "stride over the block (gaps)": ([9, 7], [2, 2], {"strides": [3, 4]}),
    "one dim": ([11], [4], {"dilations": [2], "pads": [1, 2], "strides": [2]}),
    "three dims": ([3, 4, 5], [2, 1, 3], {"pads": [0, 1, 1, 1, 0, 2], "strides": [1, 2, 2]}),
}


@pytest.mark.parametrize("constant", [True, False], ids=["constant shapes", "run-time shapes"])
@pytest.mark.parametrize("case", COL2IM)
def test_col2im_matches_onnx_reference(case: str, constant: bool, tmp_path: Path):
    image, block, attributes = COL2IM[case]
    rank = len(image)
    geometry = (image, block, attributes.get("dilations", [1] * rank), attributes.get("pads", [0] * 2 * rank),
                attributes.get("strides", [1] * rank))
    x = np.random.default_rng(len(case)).normal(size=(2, 3 * int(np.prod(block)), _blocks(*geometry)))
    x = x.astype(np.float32)
    model = _col2im(tmp_path / "col2im.onnx", x, image, block, constant, **attributes)
    feed = {"x": x} if constant else {"x": x, "image_shape": np.array(image, np.int64),
                                      "block_shape": np.array(block, np.int64)}
    got, expected = _kiln(model, feed, tmp_path), ReferenceEvaluator(str(model)).run(None, feed)[0]
    assert got.shape == expected.shape == (2, 3, *image)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("constant", [True, False], ids=["constant shapes", "run-time shapes"])
def test_col2im_keeps_an_infinity_where_it_lands(constant: bool, tmp_path: Path):
    """A 0/1 matrix product would spread 0 * inf = NaN over the whole image."""
    x = np.ones((1, 4, 9), np.float32)
    x[0, 1, 4] = np.inf
    model = _col2im(tmp_path / "col2im.onnx", x, [4, 4], [2, 2], constant)
    feed = {"x": x} if constant else {"x": x, "image_shape": np.array([4, 4], np.int64),
                                      "block_shape": np.array([2, 2], np.int64)}
    got, expected = _kiln(model, feed, tmp_path), ReferenceEvaluator(str(model)).run(None, feed)[0]
    assert np.isinf(got).sum() == 1 and not np.isnan(got).any()
    np.testing.assert_array_equal(got, expected)


def test_col2im_of_mismatched_or_huge_constant_shapes_is_refused_for_why(tmp_path: Path):
    wrong = _col2im(tmp_path / "wrong.onnx", np.ones((1, 4, 8), np.float32), [4, 4], [2, 2], True)
    with pytest.raises(UnsupportedOpError, match=r"Col2Im \(input of shape \[1, 4, 8\] does not hold"):
        compile_to(wrong, tmp_path / "wrong.kiln", "host", verify=False)
    side = 1 << 12  # 2^24 image elements, each the sum of 2 columns
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"])
    values = {"image": helper.make_tensor("image", TensorProto.INT64, [2], [side, side]),
              "block": helper.make_tensor("block", TensorProto.INT64, [2], [1, 2])}
    dims = {"x": [1, 2, side * (side - 1)], "image": [2], "block": [2]}
    assert col2im_refusal(node, values, dims) == f"index table of {2 * side * side} elements, over the {MAX_TABLE} " \
        "kiln builds"


def test_col2im_passes_leave_graphs_without_their_ops(tmp_path: Path):
    graph = load(_lp(tmp_path / "lp.onnx", np.ones((2, 3), np.float32), 22))
    assert col2im(graph) is graph and center_crop_pad(graph) is graph
    assert lp_normalization(graph) is not graph
