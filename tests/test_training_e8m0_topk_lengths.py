"""Training-mode BatchNormalization, Cast to and from float8e8m0, TopK of uint64 and LSTM with sequence_lens given
at run time compile and compute as onnx.reference (ONNX Runtime for the LSTM, whose reference ignores
sequence_lens), where kiln refused them."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.compiler.frontends.onnx import load
from kiln.errors import UnsupportedOpError
from kiln.compiler.passes.batchnorm_training import batchnorm_training
from kiln.compiler.passes.topk_unsigned import topk_unsigned
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs


def _run(model: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> list[np.ndarray]:
    artifact = compile_to(model, tmp_path / "out.kiln", "host", shapes={k: v.shape for k, v in feed.items()},
                          verify=False)
    return list(kiln.load(artifact).run(feed).values())


def _batchnorm(path: Path, shape: tuple[int, ...], outputs: int, opset: int, **attributes) -> Path:
    b = GraphBuilder("bn", opset=opset)
    channels = (shape[1],)
    names = [b.input("x", shape), *(b.input(n, channels) for n in ("scale", "bias", "mean", "var"))]
    produced = ["y", "running_mean", "running_var"][:outputs]
    b.nodes.append(helper.make_node("BatchNormalization", names, produced, training_mode=1, **attributes))
    for name in produced:
        b.output(name, shape if name == "y" else channels)
    return b.save(path, check=True)


@pytest.mark.parametrize("shape, outputs, opset, attributes", [
    ((2, 3, 5, 7), 3, 15, {"epsilon": 1e-2, "momentum": 0.7}),
    ((7, 5), 3, 14, {}),  # [N, C]: the statistics broadcast without reshaping
    ((3, 4, 9), 1, 18, {"momentum": 0.3}),  # Y alone still takes the batch's statistics; ReduceMean's axes an input
])
def test_training_batchnorm_matches_onnx_reference(tmp_path: Path, shape, outputs, opset, attributes):
    rng = np.random.default_rng(len(shape))
    channels = shape[1]
    feed = {"x": rng.normal(3.0, 2.0, shape).astype(np.float32),
            "scale": rng.normal(size=channels).astype(np.float32), "bias": rng.normal(size=channels).astype(np.float32),
            "mean": rng.normal(size=channels).astype(np.float32),
            "var": rng.uniform(0.5, 2.0, channels).astype(np.float32)}
    model = _batchnorm(tmp_path / "bn.onnx", shape, outputs, opset, **attributes)
    expected = ReferenceEvaluator(str(model)).run(None, feed)
    got = _run(model, feed, tmp_path)
    assert len(got) == outputs
    for actual, wanted in zip(got, expected, strict=True):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-5)
    # normalized by the batch's own mean, not the given one: each channel's mean is its bias
    np.testing.assert_allclose(got[0].mean(axis=(0, *range(2, len(shape)))), feed["bias"], atol=1e-5)


def test_training_batchnorm_of_float16_with_float32_parameters(tmp_path: Path):
    """Opset 15 lets scale and B, and the statistics, have other float types than X: Y in X's type, the running
    statistics in theirs."""
    rng = np.random.default_rng(5)
    feed = {"x": rng.normal(1.0, 3.0, (4, 3, 5)).astype(np.float16),
            **{name: rng.uniform(0.5, 2.0, 3).astype(np.float32) for name in ("scale", "bias", "mean", "var")}}
    b = GraphBuilder("bn", opset=15)
    names = [b.input("x", (4, 3, 5), TensorProto.FLOAT16), *(b.input(n, (3,)) for n in list(feed)[1:])]
    b.nodes.append(helper.make_node("BatchNormalization", names, ["y", "rm", "rv"], training_mode=1))
    b.output("y", (4, 3, 5), TensorProto.FLOAT16)
    b.output("rm", (3,))
    b.output("rv", (3,))
    model = b.save(tmp_path / "bn.onnx", check=True)
    expected = ReferenceEvaluator(str(model)).run(None, feed)
    got = _run(model, feed, tmp_path)
    assert [a.dtype for a in got] == [np.float16, np.float32, np.float32]
    for actual, wanted in zip(got, expected, strict=True):
        np.testing.assert_allclose(actual.astype(np.float32), wanted.astype(np.float32), rtol=5e-3, atol=5e-3)


def test_inference_batchnorm_is_left_to_tvm(tmp_path: Path):
    b = GraphBuilder("bn", opset=15)
    names = [b.input("x", (2, 3, 4)), *(b.input(n, (3,)) for n in ("scale", "bias", "mean", "var"))]
    b.output(b.node("BatchNormalization", names, "y"), (2, 3, 4))
    graph = load(b.save(tmp_path / "bn.onnx", check=True))
    assert batchnorm_training(graph) is graph


# Edge values of the float32 -> float8e8m0 conversion: 0 and -0, subnormals below / at / above 2^-127, the smallest
# normal, values just under and at 1.5 (nearest's tie rounds up), powers of two, the largest values, infinities,
# NaN and negative values (their magnitude, as onnx.numpy_helper converts them).
_EDGES = np.array([0.0, -0.0, 1e-45, 2.0 ** -128, 2.0 ** -127, 2.0 ** -127 + 2.0 ** -149, 2.0 ** -126,
                   1.5 * 2.0 ** -126, 0.124, 1.0, 1.1, 1.4999999, 1.5, 1.75, 2.0, 3.0, 1000.0, 2.0 ** 126,
                   2.0 ** 127, 1.25 * 2.0 ** 127, 1.5 * 2.0 ** 127, np.finfo(np.float32).max, np.inf, -np.inf,
                   np.nan, -0.3, -1.5, -7.0, 6e-39, 1e-38], np.float32)
_MODES = [(mode, saturate) for mode in ("up", "nearest", "down") for saturate in (1, 0)]


def _bits(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)


@pytest.mark.parametrize("source", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE])
def test_casts_to_float8e8m0_match_onnx_reference_in_every_round_mode(tmp_path: Path, source: int):
    values = _EDGES.astype(helper.tensor_dtype_to_np_dtype(source))
    b = GraphBuilder("e8m0", opset=24)
    b.input("x", values.shape, source)
    for mode, saturate in _MODES:
        b.output(b.node("Cast", ["x"], f"{mode}_{saturate}", to=TensorProto.FLOAT8E8M0, round_mode=mode,
                        saturate=saturate), values.shape, TensorProto.FLOAT8E8M0)
    model = b.save(tmp_path / "e8m0.onnx", check=True)
    feed = {"x": values}
    expected = ReferenceEvaluator(str(model)).run(None, feed)
    got = _run(model, feed, tmp_path)
    for (mode, saturate), actual, wanted in zip(_MODES, got, expected, strict=True):
        assert actual.dtype == ml_dtypes.float8_e8m0fnu
        np.testing.assert_array_equal(actual.view(np.uint8), wanted.view(np.uint8), err_msg=f"{mode} {saturate}")


def test_casts_from_float8e8m0_match_onnx_reference(tmp_path: Path):
    values = np.array([0, 1, 2, 100, 126, 127, 128, 140, 142, 143, 200, 253, 254, 255], np.uint8).view(
        ml_dtypes.float8_e8m0fnu)
    targets = {"f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "f64": TensorProto.DOUBLE,
               "e4m3": TensorProto.FLOAT8E4M3FN, "e8m0": TensorProto.FLOAT8E8M0}
    b = GraphBuilder("from_e8m0", opset=24)
    b.input("x", values.shape, TensorProto.FLOAT8E8M0)
    for name, to in targets.items():
        b.output(b.node("Cast", ["x"], name, to=to), values.shape, to)
    model = b.save(tmp_path / "from.onnx", check=True)
    expected = ReferenceEvaluator(str(model)).run(None, {"x": values})
    got = _run(model, {"x": values}, tmp_path)
    for name, actual, wanted in zip(targets, got, expected, strict=True):
        assert actual.dtype == wanted.dtype, name
        np.testing.assert_array_equal(actual.view(np.uint8), wanted.view(np.uint8), err_msg=name)
    assert _bits(got[0]).tolist() == values.view(np.uint8).tolist()


def _topk(path: Path, shape: tuple[int, ...], k: int, **attributes) -> Path:
    b = GraphBuilder("topk", opset=24)
    b.input("x", shape, TensorProto.UINT64)
    axis = attributes.get("axis", -1)
    out_shape = list(shape)
    out_shape[axis] = k
    b.nodes.append(helper.make_node("TopK", ["x", b.const(np.array([k], np.int64), "k")], ["values", "indices"],
                                    **attributes))
    b.output("values", out_shape, TensorProto.UINT64)
    b.output("indices", out_shape, TensorProto.INT64)
    return b.save(path, check=True)


@pytest.mark.parametrize("shape, k, attributes", [
    ((3, 7), 3, {}), ((5, 3), 5, {"axis": 0, "largest": 0}), ((2, 9, 1), 4, {"axis": 1}),
])
def test_uint64_topk_matches_onnx_reference(tmp_path: Path, shape, k, attributes):
    """Values on both sides of 2^63 (where int64 would wrap), the extremes, and ties (the lower index first)."""
    pool = np.array([0, 1, 5, 5, 2 ** 63 - 1, 2 ** 63, 2 ** 63 + 1, 2 ** 64 - 1, 2 ** 64 - 1, 12345678901234567890],
                    np.uint64)
    x = np.random.default_rng(k).choice(pool, size=shape).astype(np.uint64)
    model = _topk(tmp_path / "topk.onnx", shape, k, **attributes)
    expected = ReferenceEvaluator(str(model)).run(None, {"x": x})
    got = _run(model, {"x": x}, tmp_path)
    assert got[0].dtype == np.uint64
    for actual, wanted in zip(got, expected, strict=True):
        np.testing.assert_array_equal(actual, wanted)


def test_topk_of_other_types_is_left_to_tvm(tmp_path: Path):
    b = GraphBuilder("topk", opset=24)
    b.input("x", (4,), TensorProto.INT64)
    b.nodes.append(helper.make_node("TopK", ["x", b.const(np.array([2], np.int64), "k")], ["v", "i"]))
    b.output("v", (2,), TensorProto.INT64)
    b.output("i", (2,), TensorProto.INT64)
    graph = load(b.save(tmp_path / "topk.onnx", check=True))
    assert topk_unsigned(graph) is graph


STEPS, BATCH, INPUT, HIDDEN = 4, 3, 2, 5


def _lstm(path: Path, feed: dict[str, np.ndarray], direction: str, layout: int) -> Path:
    directions = 2 if direction == "bidirectional" else 1
    state_shape = (directions, BATCH, HIDDEN) if layout == 0 else (BATCH, directions, HIDDEN)
    b = GraphBuilder("lstm", opset=22)
    for name, value in feed.items():
        b.input(name, value.shape, TensorProto.INT32 if value.dtype == np.int32 else TensorProto.FLOAT)
    b.nodes.append(helper.make_node("LSTM", list(feed), ["y", "y_h", "y_c"], hidden_size=HIDDEN, direction=direction,
                                    layout=layout))
    b.output("y", (STEPS, directions, BATCH, HIDDEN) if layout == 0 else (BATCH, STEPS, directions, HIDDEN))
    b.output("y_h", state_shape)
    b.output("y_c", state_shape)
    return b.save(path, check=True)


@pytest.mark.parametrize("direction, layout", [("forward", 0), ("reverse", 0), ("bidirectional", 0),
                                               ("bidirectional", 1)])
def test_lstm_with_lengths_at_run_time_matches_onnx_runtime(tmp_path: Path, direction: str, layout: int):
    """Rows shorter than the sequence (one of length 1, one of the whole length, one between) keep their state
    through the padding and output 0 there; Y_h and Y_c are each row's state after its own last step. ONNX Runtime
    runs layout 0 only: layout 1 is compared with the same LSTM in layout 0, its inputs and outputs transposed."""
    directions = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(directions + layout)
    feed = {"x": rng.normal(size=(STEPS, BATCH, INPUT)).astype(np.float32),
            "w": rng.normal(0, 0.5, (directions, 4 * HIDDEN, INPUT)).astype(np.float32),
            "r": rng.normal(0, 0.5, (directions, 4 * HIDDEN, HIDDEN)).astype(np.float32),
            "bias": rng.normal(0, 0.5, (directions, 8 * HIDDEN)).astype(np.float32),
            "lengths": np.array([2, STEPS, 1], np.int32),
            "h0": rng.normal(size=(directions, BATCH, HIDDEN)).astype(np.float32),
            "c0": rng.normal(size=(directions, BATCH, HIDDEN)).astype(np.float32),
            "p": rng.normal(0, 0.5, (directions, 3 * HIDDEN)).astype(np.float32)}
    expected = onnxruntime_outputs(_lstm(tmp_path / "reference.onnx", feed, direction, 0), feed)
    if layout:
        feed = {**feed, **{name: feed[name].transpose(1, 0, 2) for name in ("x", "h0", "c0")}}
        expected = [expected[0].transpose(2, 0, 1, 3), *(state.transpose(1, 0, 2) for state in expected[1:])]
    got = _run(_lstm(tmp_path / "lstm.onnx", feed, direction, layout), feed, tmp_path)
    for actual, wanted in zip(got, expected, strict=True):
        np.testing.assert_allclose(actual, wanted, rtol=1e-4, atol=1e-5)
    padded = got[0][3, :, 0] if layout == 0 else got[0][0, 3]  # row 0 (length 2) at step 3
    assert padded.shape == (directions, HIDDEN) and not padded.any()


def _roi_align(path: Path, x_shape: tuple[int, ...], count: int, **attributes) -> Path:
    b = GraphBuilder("roi", opset=22)
    b.input("x", x_shape)
    b.input("rois", (count, 4))
    b.input("batch", (count,), TensorProto.INT64)
    out = (count, x_shape[1], attributes.get("output_height", 1), attributes.get("output_width", 1))
    b.output(b.node("RoiAlign", ["x", "rois", "batch"], "y", mode="max", **attributes), out)
    return b.save(path, check=True)


@pytest.mark.parametrize("attributes", [
    {"output_height": 3, "output_width": 4, "sampling_ratio": 2, "spatial_scale": 0.5},
    {"output_height": 5, "output_width": 2, "sampling_ratio": 3, "coordinate_transformation_mode": "output_half_pixel"},
    {"output_height": 1, "output_width": 1, "sampling_ratio": 1, "spatial_scale": 2.0},
])
def test_max_roi_align_matches_onnx_reference(tmp_path: Path, attributes: dict):
    """ROIs inside the map, across its edges (points beyond [-1, size] give 0, points in the last row / column read
    it twice), smaller than a pixel and degenerate; values of both signs, so that a corner's weight of 0 wins."""
    rng = np.random.default_rng(attributes["sampling_ratio"])
    x = rng.normal(size=(2, 3, 7, 9)).astype(np.float32)
    rois = np.array([[0, 0, 8, 6], [1.5, 2.25, 4.75, 3.5], [-4, -3, 5, 4], [6, 4, 14, 11], [3, 3, 3.2, 3.1],
                     [2, 2, 2, 2], [-9, -9, -5, -5]], np.float32)
    feed = {"x": x, "rois": rois, "batch": np.array([0, 1, 1, 0, 1, 0, 1], np.int64)}
    model = _roi_align(tmp_path / "roi.onnx", x.shape, len(rois), **attributes)
    expected = ReferenceEvaluator(str(model)).run(None, feed)[0]
    got = _run(model, feed, tmp_path)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_max_roi_align_on_an_adaptive_grid_stays_refused(tmp_path: Path):
    model = _roi_align(tmp_path / "roi.onnx", (1, 2, 5, 5), 2, output_height=2, output_width=2, sampling_ratio=0)
    with pytest.raises(UnsupportedOpError, match="RoiAlign \\(mode b'max'"):
        compile_to(model, tmp_path / "out.kiln", "host", verify=False)
