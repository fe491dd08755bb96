"""Resizes TVM's converter computes otherwise than ONNX (scales whose sizes are not whole, antialias,
half_pixel_symmetric, a keep_aspect_ratio_policy whose scale gives sizes that are not whole, resized batch or channel
dims, ranks outside 3-5) compile, where kiln refused them, and compute as ONNX's reference (onnx.reference, whose
data the conformance suite holds) and, where it agrees with that, ONNX Runtime. ONNX Runtime maps align_corners and
tf_crop_and_resize outputs by the floored output size where the reference divides by scale * size, and lacks
exclude_outside in linear mode without antialias: those are checked against the reference only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes.resize_exact import resize_exact
from kiln.errors import UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

_TYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16, np.int32: TensorProto.INT32}
_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_crop_and_resize")


def _resize(path: Path, shape: tuple[int, ...], scales=None, sizes=None, roi=None, dtype=np.float32,
            **attributes) -> Path:
    b = GraphBuilder("resize", opset=19)
    x = b.input("x", shape, _TYPES[dtype])
    inputs = [x, "" if roi is None else b.const(np.array(roi, np.float32)),
              "" if scales is None else b.const(np.array(scales, np.float32))]
    inputs += [] if sizes is None else [b.const(np.array(sizes, np.int64))]
    b.output(b.node("Resize", inputs, "y", name="resize_0", **attributes), dtype=_TYPES[dtype])
    return b.save(path, infer_shapes=True)


def _kiln(model: Path, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    artifact = compile_to(model, tmp_path / "resize.kiln", "host", shapes={"x": x.shape}, verify=False)
    return kiln.load(artifact).run({"x": x})["y"]


def _reference(model: Path, x: np.ndarray) -> np.ndarray:
    return ReferenceEvaluator(str(model)).run(None, {"x": x})[0]


def _input(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _assert_matches(got: np.ndarray, expected: np.ndarray, tolerance: float = 1e-5):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("transform", _TRANSFORMS)
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_downsampling_by_scales_not_whole_matches_onnx_reference(mode: str, transform: str, tmp_path: Path):
    """NCHW, H and W resized: 5 * 0.7 = 3.5 and 7 * 0.45 = 3.15 outputs, floored to 3 and 3; ONNX maps coordinates by
    the scales, not by 3 / 5 and 3 / 7 as the converter would."""
    shape = (1, 2, 5, 7)
    roi = [0, 0, 0, 0, 1, 1, 1, 1] if transform == "tf_crop_and_resize" else None
    model = _resize(tmp_path / "resize.onnx", shape, scales=[1, 1, 0.7, 0.45], roi=roi, mode=mode,
                    coordinate_transformation_mode=transform)
    x = _input(shape)
    _assert_matches(_kiln(model, x, tmp_path), _reference(model, x))


@pytest.mark.parametrize("attributes", [
    {"mode": "nearest", "nearest_mode": "round_prefer_ceil", "coordinate_transformation_mode": "asymmetric"},
    {"mode": "nearest", "nearest_mode": "floor"},
    {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
    {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1},
    {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
], ids=["nearest-ceil-asymmetric", "nearest-floor", "linear-pytorch", "cubic-a-exclude", "linear-symmetric"])
def test_upsampling_by_scales_not_whole_matches_onnx_runtime(attributes: dict, tmp_path: Path):
    """3 * 1.7 = 5.1 and 5 * 2.3 = 11.5 outputs, floored to 5 and 11."""
    shape = (2, 1, 3, 5)
    model = _resize(tmp_path / "resize.onnx", shape, scales=[1, 1, 1.7, 2.3], **attributes)
    x = _input(shape)
    got = _kiln(model, x, tmp_path)
    _assert_matches(got, _reference(model, x))
    _assert_matches(got, onnxruntime_outputs(model, {"x": x})[0], 1e-4)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("sizes", [[1, 3, 4, 3], [1, 3, 13, 11], [1, 3, 5, 17]], ids=["down", "up", "down-up"])
def test_antialias_matches_onnx_runtime(mode: str, sizes: list[int], tmp_path: Path):
    """The converter ignores antialias; downsampling 9 x 8 to 4 x 3 widens the kernel to 3 and 3 times its taps."""
    shape = (1, 3, 9, 8)
    model = _resize(tmp_path / "resize.onnx", shape, sizes=sizes, mode=mode, antialias=1)
    x = _input(shape)
    got = _kiln(model, x, tmp_path)
    _assert_matches(got, _reference(model, x))
    _assert_matches(got, onnxruntime_outputs(model, {"x": x})[0], 1e-4)


def test_antialias_differs_from_plain_downsampling(tmp_path: Path):
    """The same sizes without antialias give other values: the rewrite does not drop the attribute."""
    shape, sizes = (1, 1, 9, 8), [1, 1, 4, 3]
    x = _input(shape)
    smooth = _kiln(_resize(tmp_path / "smooth.onnx", shape, sizes=sizes, mode="linear", antialias=1), x, tmp_path)
    plain = _reference(_resize(tmp_path / "plain.onnx", shape, sizes=sizes, mode="linear"), x)
    assert np.abs(smooth - plain).max() > 0.1


@pytest.mark.parametrize("shape, sizes, mode", [
    ((2, 3, 7), [2, 5, 4], "cubic"),  # 3-D: the channel dim and the last one
    ((3, 5, 4, 6), [2, 5, 7, 6], "linear"),  # 4-D: the batch dim and H
    ((4, 7), [3, 11], "nearest"),  # rank 2, outside the converter's 3-5
], ids=["3d-channels", "4d-batch", "2d"])
def test_dims_the_converter_does_not_resize_match_onnx_reference(shape, sizes, mode: str, tmp_path: Path):
    model = _resize(tmp_path / "resize.onnx", shape, sizes=sizes, mode=mode)
    x = _input(shape)
    _assert_matches(_kiln(model, x, tmp_path), _reference(model, x))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_crop_outside_the_input_is_extrapolation_value(mode: str, tmp_path: Path):
    """A roi reaching past both ends of W in a rank-2 tensor: the outputs mapped outside 0 .. 5 are exactly 7.5."""
    shape = (5, 6)
    model = _resize(tmp_path / "resize.onnx", shape, sizes=[4, 9], roi=[0.1, -0.3, 0.9, 1.4], mode=mode,
                    coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=7.5)
    x = _input(shape)
    got, expected = _kiln(model, x, tmp_path), _reference(model, x)
    _assert_matches(got, expected)
    assert (got[:, 0] == 7.5).all() and (got[:, -1] == 7.5).all() and not (got[:, 4] == 7.5).any()


def test_policy_whose_scale_gives_sizes_not_whole_matches_onnx_reference(tmp_path: Path):
    """not_smaller [3, 3] of [4, 6]: scale 0.75, 0.75 * 6 = 4.5 rounded to 5, coordinates mapped by 0.75."""
    shape = (1, 2, 4, 6)
    model = _resize(tmp_path / "resize.onnx", shape, sizes=[3, 3], axes=[2, 3], keep_aspect_ratio_policy="not_smaller",
                    mode="linear")
    x = _input(shape)
    got = _kiln(model, x, tmp_path)
    assert got.shape == (1, 2, 3, 5)
    _assert_matches(got, _reference(model, x))


def test_float16_is_interpolated_in_float32(tmp_path: Path):
    shape = (1, 1, 7, 9)
    model = _resize(tmp_path / "resize.onnx", shape, scales=[1, 1, 0.55, 1.3], dtype=np.float16, mode="cubic")
    x = _input(shape, np.float16)
    _assert_matches(_kiln(model, x, tmp_path), _reference(model, x), 1e-3)


def test_nearest_copies_edge_values(tmp_path: Path):
    """A Gather of the nearest input: infinities, NaN and the largest floats come through as ONNX Runtime gives them
    (onnx.reference saturates infinities to the largest float)."""
    shape = (1, 1, 5, 7)
    model = _resize(tmp_path / "resize.onnx", shape, scales=[1, 1, 0.7, 0.45], mode="nearest")
    x = _input(shape)
    x[0, 0, :, 1] = [np.inf, -np.inf, np.nan, np.finfo(np.float32).max, -0.0]
    got, expected = _kiln(model, x, tmp_path), onnxruntime_outputs(model, {"x": x})[0]
    np.testing.assert_array_equal(got, expected)
    assert np.isinf(got).any() and np.isnan(got).any()


def test_integer_nearest_matches_and_integer_linear_stays_refused(tmp_path: Path):
    """Nearest of int32 is a Gather, exact; ONNX does not say how a linear Resize of integers rounds."""
    shape = (1, 1, 5, 7)
    x = np.random.default_rng(1).integers(-1000, 1000, shape).astype(np.int32)
    nearest = _resize(tmp_path / "nearest.onnx", shape, scales=[1, 1, 0.7, 0.45], dtype=np.int32, mode="nearest")
    np.testing.assert_array_equal(_kiln(nearest, x, tmp_path), _reference(nearest, x))
    linear = _resize(tmp_path / "linear.onnx", shape, scales=[1, 1, 0.7, 0.45], dtype=np.int32, mode="linear")
    with pytest.raises(UnsupportedOpError) as raised:
        _kiln(linear, x, tmp_path)
    (label, nodes), = raised.value.unsupported.items()
    assert "not whole" in label and "linear mode of a non-float input" in label and nodes == ["resize_0"]


def test_pytorch_half_pixel_to_one_output_stays_refused(tmp_path: Path):
    """3 * 0.5 = 1.5 outputs, floored to 1: ONNX's text puts it at input 0, its reference at 0.5."""
    model = _resize(tmp_path / "resize.onnx", (1, 1, 3, 4), scales=[1, 1, 0.5, 1], mode="linear",
                    coordinate_transformation_mode="pytorch_half_pixel")
    with pytest.raises(UnsupportedOpError) as raised:
        _kiln(model, _input((1, 1, 3, 4)), tmp_path)
    (label, _), = raised.value.unsupported.items()
    assert "pytorch_half_pixel to one output" in label


def test_resizes_the_converter_computes_are_left_to_tvm(tmp_path: Path):
    """Scales 2 and 1.5 of 4 and 6 give whole sizes: the converter's own kernel stays."""
    graph = load(_resize(tmp_path / "resize.onnx", (1, 2, 4, 6), scales=[1, 1, 2, 1.5], mode="linear"))
    assert resize_exact(graph) is graph
