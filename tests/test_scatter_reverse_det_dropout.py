"""TensorScatter, ReverseSequence, Det, Dropout's mask and ConvTranspose's output_shape compile and compute as ONNX
Runtime (or ONNX's reference where ONNX Runtime has no kernel), where kiln refused them: TVM's importer has no
converter for the first three, computes Dropout's first output only and ignores output_shape. What the passes
cannot rewrite (random Dropouts, matrices too large, output_shapes ONNX's implementations disagree on) is refused
with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.compiler.passes.det import MAX_SIZE
from kiln.errors import UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

_TYPES = {np.int32: TensorProto.INT32, np.int64: TensorProto.INT64, np.float32: TensorProto.FLOAT,
          np.float64: TensorProto.DOUBLE}


def _run(model: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> dict[str, np.ndarray]:
    artifact = compile_to(model, tmp_path / "m.kiln", "host", shapes={k: v.shape for k, v in feed.items()},
                          verify=False)
    return kiln.load(artifact).run(feed)


def _refusals(model: Path, shapes: dict[str, tuple[int, ...]], tmp_path: Path) -> dict[str, list[str]]:
    with pytest.raises(UnsupportedOpError) as raised:
        compile_to(model, tmp_path / "m.kiln", "host", shapes=shapes, verify=False)
    return raised.value.unsupported


def _tensor_scatter(path: Path, cache: np.ndarray, update: np.ndarray, indices: bool, **attributes) -> Path:
    b = GraphBuilder("tensor_scatter", opset=24)
    inputs = [b.input("cache", cache.shape, _TYPES[cache.dtype.type]),
              b.input("update", update.shape, _TYPES[update.dtype.type])]
    if indices:
        inputs.append(b.input("indices", [cache.shape[0]], TensorProto.INT64))
    b.output(b.node("TensorScatter", inputs, "y", name="scatter", **attributes), cache.shape,
             _TYPES[cache.dtype.type])
    return b.save(path, check=True)


@pytest.mark.parametrize("cache_shape, rows, mode, axis, indices", [
    ((3, 2, 7, 5), 3, "linear", -2, [0, 4, 2]),  # batch row 1 writes up to the cache's end
    ((3, 2, 7, 5), 3, "circular", -2, [6, 5, 0]),  # wrapping around the end
    ((2, 7, 3), 2, "circular", 1, [5, 6]),
    ((2, 5, 3, 2), 5, "linear", 1, [0, 0]),  # the whole cache replaced
    ((4, 6, 1), 1, "linear", -2, None),  # no write_indices: zeros
])
def test_tensor_scatter_matches_onnx_runtime(cache_shape, rows, mode, axis, indices, tmp_path: Path):
    rng = np.random.default_rng(1)
    cache = rng.standard_normal(cache_shape).astype(np.float32)
    update_shape = list(cache_shape)
    update_shape[axis] = rows
    update = rng.standard_normal(update_shape).astype(np.float32) + 10
    feed = {"cache": cache, "update": update, **({"indices": np.array(indices, np.int64)} if indices else {})}
    model = _tensor_scatter(tmp_path / "t.onnx", cache, update, indices is not None, mode=mode, axis=axis)
    got = _run(model, feed, tmp_path)["y"]
    np.testing.assert_array_equal(got, onnxruntime_outputs(model, feed)[0])
    assert not np.array_equal(got, cache)


def test_tensor_scatter_indices_past_the_length_or_negative_wrap_as_onnx_reference(tmp_path: Path):
    """ONNX Runtime rejects them; ONNX's reference takes them modulo the length, as the spec's pseudocode."""
    cache, update = np.zeros((3, 7, 2), np.float32), np.arange(1, 19, dtype=np.float32).reshape(3, 3, 2)
    feed = {"cache": cache, "update": update, "indices": np.array([13, -3, -9], np.int64)}
    model = _tensor_scatter(tmp_path / "t.onnx", cache, update, True, mode="circular", axis=1)
    np.testing.assert_array_equal(_run(model, feed, tmp_path)["y"], ReferenceEvaluator(str(model)).run(None, feed)[0])


def test_tensor_scatter_of_integers_matches_onnx_runtime(tmp_path: Path):
    cache, update = np.arange(24, dtype=np.int32).reshape(2, 4, 3), -np.arange(12, dtype=np.int32).reshape(2, 2, 3)
    feed = {"cache": cache, "update": update, "indices": np.array([3, 1], np.int64)}
    model = _tensor_scatter(tmp_path / "t.onnx", cache, update, True, mode="circular", axis=1)
    np.testing.assert_array_equal(_run(model, feed, tmp_path)["y"], onnxruntime_outputs(model, feed)[0])


def _reverse_sequence(path: Path, x: np.ndarray, batch_axis: int, time_axis: int) -> Path:
    b = GraphBuilder("reverse_sequence", opset=10)
    b.input("x", x.shape, _TYPES[x.dtype.type])
    b.input("lengths", [x.shape[batch_axis]], TensorProto.INT64)
    b.output(b.node("ReverseSequence", ["x", "lengths"], "y", name="reverse", batch_axis=batch_axis,
                    time_axis=time_axis), x.shape, _TYPES[x.dtype.type])
    return b.save(path, check=True)


@pytest.mark.parametrize("shape, batch_axis, time_axis, lengths, dtype", [
    ((5, 7), 0, 1, [0, 1, 7, 3, 6], np.float32),
    ((7, 5), 1, 0, [7, 2, 0, 5, 1], np.float32),
    ((3, 5, 2, 3), 0, 1, [5, 4, 2], np.int64),
    ((5, 3, 4), 1, 0, [1, 5, 3], np.float64),
])
def test_reverse_sequence_matches_onnx_runtime(shape, batch_axis, time_axis, lengths, dtype, tmp_path: Path):
    x = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    feed = {"x": x, "lengths": np.array(lengths, np.int64)}
    model = _reverse_sequence(tmp_path / "r.onnx", x, batch_axis, time_axis)
    got = _run(model, feed, tmp_path)["y"]
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, onnxruntime_outputs(model, feed)[0])


def test_reverse_sequence_lengths_past_the_steps_reverse_them_all_as_onnx_reference(tmp_path: Path):
    """ONNX Runtime rejects them; ONNX's reference slices them to the steps there are."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    feed = {"x": x, "lengths": np.array([9, 4, 2], np.int64)}
    model = _reverse_sequence(tmp_path / "r.onnx", x, 0, 1)
    np.testing.assert_array_equal(_run(model, feed, tmp_path)["y"],
                                  ReferenceEvaluator(str(model)).run(None, feed)[0])


def _det(path: Path, shape: tuple[int, ...], dtype=np.float32) -> Path:
    b = GraphBuilder("det", opset=22)
    b.input("x", shape, _TYPES[dtype])
    b.output(b.node("Det", ["x"], "y", name="det"), shape[:-2], _TYPES[dtype])
    return b.save(path, check=True)


@pytest.mark.parametrize("shape, dtype", [((1, 1), np.float32), ((3, 3), np.float64), ((2, 3, 4, 4), np.float32),
                                          ((5, 2, 2), np.float64), ((3, 3, 3), np.float32)])
def test_det_matches_onnx_runtime(shape, dtype, tmp_path: Path):
    x = np.random.default_rng(2).uniform(-3, 3, shape).astype(dtype)
    if len(shape) > 2:
        x[0] = 0.5
        x[0][..., 0, 0] = 1.5  # rank 2: det 0.5 for 2 x 2, 0 from 3 x 3 on, where the terms cancel
    model = _det(tmp_path / "d.onnx", shape, dtype)
    got = _run(model, {"x": x}, tmp_path)["y"]
    # ONNX Runtime has no double kernel
    expected = (onnxruntime_outputs(model, {"x": x}) if dtype == np.float32
                else ReferenceEvaluator(str(model)).run(None, {"x": x}))[0]
    assert got.dtype == dtype and got.shape == shape[:-2]
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_det_of_singular_matrices_is_zero(tmp_path: Path):
    x = np.array([[[1, 2, 3], [2, 4, 6], [7, 8, 9]], [[1, 2, 3], [4, 5, 6], [0, 0, 0]]], np.float32)
    np.testing.assert_array_equal(_run(_det(tmp_path / "d.onnx", x.shape), {"x": x}, tmp_path)["y"], [0, 0])


def test_det_of_matrices_too_large_is_refused_with_the_reason(tmp_path: Path):
    size = MAX_SIZE + 1
    model = _det(tmp_path / "d.onnx", (2, size, size))
    assert _refusals(model, {"x": (2, size, size)}, tmp_path) == {
        f"Det ({size} x {size} matrices; kiln expands 1 x 1 to {MAX_SIZE} x {MAX_SIZE})": ["det"]}


def _dropout(path: Path, opset: int, ratio: str | float | None, training: str | bool | None, mask: bool = True,
             attributes: dict | None = None) -> Path:
    """ratio and training_mode: a constant, a graph input (its name) or absent (None); `attributes`: the node's."""
    b = GraphBuilder("dropout", opset=opset)
    names = [b.input("x", [3, 5, 2])]
    for value, dtype in ((ratio, TensorProto.FLOAT), (training, TensorProto.BOOL)):
        if isinstance(value, str):
            names.append(b.input(value, [], dtype))
        else:
            names.append("" if value is None else b.const(np.array(value, helper.tensor_dtype_to_np_dtype(dtype))))
    while names[-1] == "":
        names.pop()
    outputs = ["y", "mask"] if mask else ["y"]
    b.nodes.append(helper.make_node("Dropout", names, outputs, name="dropout", **(attributes or {})))
    b.output("y", [3, 5, 2])
    if mask:
        b.output("mask", [3, 5, 2], TensorProto.BOOL)
    return b.save(path, check=True)


@pytest.mark.parametrize("opset, ratio, training, attributes", [
    (22, None, None, {}),  # inference mode: ratio 0.5 drops nothing
    (22, 0.7, False, {"seed": 3}),
    (13, 0.0, True, {}),  # training mode, but ratio 0: the identity, scale 1
    (22, 0.0, "t", {}),  # so whatever training_mode is at run time
    (22, "r", None, {}),  # a ratio given at run time is read in training mode only
    (11, None, None, {"ratio": 0.3}),  # ONNX Runtime's opset-10 kernel gives a mask all false here
])
def test_dropout_that_drops_nothing_gives_its_data_and_a_mask_of_ones(opset, ratio, training, attributes,
                                                                       tmp_path: Path):
    x = np.random.default_rng(3).standard_normal((3, 5, 2)).astype(np.float32)
    feed = {"x": x, **({"r": np.array(0.9, np.float32)} if isinstance(ratio, str) else {}),
            **({"t": np.array(True)} if isinstance(training, str) else {})}
    model = _dropout(tmp_path / "d.onnx", opset, ratio, training, attributes=attributes)
    got = _run(model, feed, tmp_path)
    np.testing.assert_array_equal(got["y"], onnxruntime_outputs(model, feed)[0])
    np.testing.assert_array_equal(got["mask"], ReferenceEvaluator(str(model)).run(None, feed)[1])
    assert got["mask"].dtype == np.bool_ and got["mask"].all()


@pytest.mark.parametrize("ratio, training, reason", [
    (None, True, "training_mode true (TVM computes inference mode only)"),  # ratio 0.5: random
    (0.25, True, "training_mode true (TVM computes inference mode only)"),
    ("r", True, "training_mode true (TVM computes inference mode only)"),
    ("r", "t", "training_mode computed at run time (TVM computes inference mode only)"),
    (0.5, "t", "training_mode computed at run time (TVM computes inference mode only)"),
])
def test_random_dropout_is_refused_with_the_reason(ratio, training, reason, tmp_path: Path):
    model = _dropout(tmp_path / "d.onnx", 22, ratio, training, mask=False)
    shapes = {"x": (3, 5, 2), **({"r": ()} if ratio == "r" else {}), **({"t": ()} if training == "t" else {})}
    assert _refusals(model, shapes, tmp_path) == {f"Dropout ({reason})": ["dropout"]}


def _conv_transpose(path: Path, x_shape: tuple, weight: np.ndarray | None, weight_shape: tuple,
                    **attributes) -> Path:
    """weight None: a graph input of weight_shape."""
    b = GraphBuilder("conv_transpose", opset=22)
    inputs = [b.input("x", x_shape), b.input("w", weight_shape) if weight is None else b.const(weight, "w")]
    b.output(b.node("ConvTranspose", inputs, "y", name="deconv", **attributes),
             [x_shape[0], weight_shape[1], *attributes["output_shape"]])
    return b.save(path, check=True)


@pytest.mark.parametrize("x_shape, weight_shape, attributes", [
    ((1, 1, 3, 3), (1, 2, 3, 3), {"strides": [3, 2], "output_shape": [10, 8]}),  # grown by 1 at the end
    ((2, 3, 4, 5), (3, 2, 3, 2), {"strides": [2, 2], "output_shape": [6, 7]}),  # cropped 3 (2 at the start), 3
    ((1, 2, 5, 4), (2, 3, 4, 3), {"strides": [2, 3], "output_shape": [10, 9], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 5, 4), (2, 3, 4, 3), {"strides": [2, 3], "output_shape": [9, 11], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 4, 4), (2, 1, 3, 3), {"strides": [2, 2], "output_shape": [8, 8], "output_padding": [1, 0],
                                  "pads": [5, 5, 5, 5], "dilations": [1, 2]}),  # pads ignored
])
@pytest.mark.parametrize("constant_weight", [True, False])
def test_conv_transpose_output_shape_matches_onnx_runtime(x_shape, weight_shape, attributes, constant_weight,
                                                          tmp_path: Path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(weight_shape).astype(np.float32)
    model = _conv_transpose(tmp_path / "c.onnx", x_shape, w if constant_weight else None, weight_shape,
                            **attributes)
    feed = {"x": x, **({} if constant_weight else {"w": w})}
    got, expected = _run(model, feed, tmp_path)["y"], onnxruntime_outputs(model, feed)[0]
    assert got.shape == (x_shape[0], weight_shape[1], *attributes["output_shape"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attributes, why", [
    ({"output_shape": [8], "auto_pad": "SAME_UPPER"},
     "a SAME_UPPER output grown (ONNX's reference and ONNX Runtime grow it apart)"),
    ({"output_shape": [9]}, "grown past what output_padding reaches (ONNX Runtime rejects it too)"),
    ({"output_shape": [7], "auto_pad": "VALID"}, None),
])
def test_conv_transpose_output_shape_it_cannot_write_is_refused_with_the_reason(attributes, why, tmp_path: Path):
    model = _conv_transpose(tmp_path / "c.onnx", (1, 1, 3), None, (1, 1, 3), strides=[2], **attributes)
    reason = f"output_shape {attributes['output_shape']} (the converter ignores it)"
    reason += f": {why}" if why else f" with auto_pad {attributes['auto_pad']}"
    assert _refusals(model, {"x": (1, 1, 3), "w": (1, 1, 3)}, tmp_path) == {f"ConvTranspose ({reason})": ["deconv"]}
