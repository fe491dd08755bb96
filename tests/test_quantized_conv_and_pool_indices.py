"""QLinearConv, ConvInteger, blocked QuantizeLinear / DequantizeLinear and MaxPool's Indices output compile and
compute exactly as ONNX Runtime or onnx.reference do, where TVM's importer refused them (kiln.compiler.passes:
integer_conv, blocked_quantize, maxpool_indices); where the passes decline, the support check still refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.compiler.backends.tvm.ops import unsupported_ops
from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes import run_passes
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

_TYPES = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
          np.dtype(np.uint16): TensorProto.UINT16, np.dtype(np.int16): TensorProto.INT16,
          np.dtype(np.int32): TensorProto.INT32, np.dtype(np.float32): TensorProto.FLOAT,
          np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.int64): TensorProto.INT64}
_RNG = np.random.default_rng(7)


def _model(path: Path, op: str, inputs: dict[str, np.ndarray], constants: dict[str, np.ndarray],
           outputs: dict[str, tuple[tuple[int, ...], int]], order: list[str], opset: int, **attributes) -> Path:
    """One `op` node reading `order` (graph inputs from `inputs`, initializers from `constants`, "" for none)."""
    b = GraphBuilder(op.lower(), opset=opset)
    for name, value in inputs.items():
        b.input(name, value.shape, _TYPES[value.dtype])
    for name, value in constants.items():
        b.const(value, name)
    b.nodes.append(helper.make_node(op, order, list(outputs), **attributes))
    for name, (shape, dtype) in outputs.items():
        b.output(name, shape, dtype)
    return b.save(path, check=True)


def _kiln(model: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> dict[str, np.ndarray]:
    artifact = compile_to(model, tmp_path / "model.kiln", "host", shapes={k: v.shape for k, v in feed.items()},
                          verify=False)
    return kiln.load(artifact).run(feed)


def _assert_exact(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


# ---- QLinearConv / ConvInteger -------------------------------------------------------------------

def _qlinear_case(dtype, w_dtype, shape, weight_shape, per_channel: bool, bias: bool, multiplier=None):
    low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
    x = _RNG.integers(low, high + 1, shape, dtype=dtype)
    x.flat[:4] = [low, high, low, high]  # the edges of the range
    wl, wh = np.iinfo(w_dtype).min, np.iinfo(w_dtype).max
    w = _RNG.integers(wl, wh + 1, weight_shape, dtype=w_dtype)
    channels = weight_shape[0]
    w_count = channels if per_channel else 1
    constants = {
        "x_scale": np.array(0.0173, np.float32), "x_zero_point": np.array((low + high + 1) // 2 + 3, dtype),
        "w_scale": _RNG.uniform(0.002, 0.03, w_count).astype(np.float32).reshape(-1 if per_channel else ()),
        "w_zero_point": (_RNG.integers(wl // 4, wh // 4, w_count, dtype=w_dtype) if w_dtype == np.uint8
                         else np.zeros(w_count, w_dtype)).reshape(-1 if per_channel else ()),
        "y_scale": np.array(0.29, np.float32), "y_zero_point": np.array(low + 100, dtype)}
    if multiplier is not None:  # x_scale * w_scale / y_scale exact: sums land on halves, rounded to even
        constants.update({"x_scale": np.array(1, np.float32), "w_scale": np.array(multiplier, np.float32),
                          "y_scale": np.array(1, np.float32)})
    if bias:
        constants["B"] = _RNG.integers(-5000, 5000, channels).astype(np.int32)
    return x, w, constants


QLINEAR = {
    # per-tensor uint8, padding and strides over odd sizes
    "uint8 strided": (np.uint8, np.uint8, (1, 3, 9, 7), (5, 3, 3, 3), False, False,
                      {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    # int8 with per-channel scales, a bias, groups and dilations
    "int8 per channel": (np.int8, np.int8, (2, 4, 8, 11), (6, 2, 3, 2), True, True,
                         {"group": 2, "dilations": [2, 1], "pads": [1, 1, 1, 1]}),
    # per-channel uint8 weight zero points over a 1-D conv
    "uint8 1-D per channel": (np.uint8, np.uint8, (1, 3, 13), (4, 3, 3), True, True, {"strides": [2]}),
    "same upper": (np.uint8, np.uint8, (1, 2, 6, 5), (2, 2, 3, 3), False, True,
                   {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
}


@pytest.mark.parametrize("case", QLINEAR)
def test_qlinearconv_matches_onnx_runtime(case: str, tmp_path: Path):
    dtype, w_dtype, shape, weight_shape, per_channel, bias, attributes = QLINEAR[case]
    attributes = dict(attributes)
    x, w, constants = _qlinear_case(dtype, w_dtype, shape, weight_shape, per_channel, bias,
                                    attributes.pop("multiplier", None))
    order = ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point"]
    feed = {"x": x, "w": w}
    model = _model(tmp_path / "q.onnx", "QLinearConv", feed, constants,
                   {"y": (_output_shape(shape, weight_shape, attributes), _TYPES[np.dtype(dtype)])},
                   order + (["B"] if bias else []), 10, **attributes)
    expected = onnxruntime_outputs(model, feed)[0]
    if len(shape) == 4:  # onnx.reference broadcasts a per-channel w_scale as over 2-D convs alone
        np.testing.assert_array_equal(expected, ReferenceEvaluator(str(model)).run(None, feed)[0])
    assert len(np.unique(expected)) > 3  # the requantization spreads the values, not all saturated
    _assert_exact(_kiln(model, feed, tmp_path)["y"], expected)


def _output_shape(shape, weight_shape, attributes) -> tuple[int, ...]:
    rank = len(shape) - 2
    strides = attributes.get("strides", [1] * rank)
    if attributes.get("auto_pad") == "SAME_UPPER":
        return (shape[0], weight_shape[0], *(-(-s // t) for s, t in zip(shape[2:], strides)))
    pads = attributes.get("pads", [0] * 2 * rank)
    dilations = attributes.get("dilations", [1] * rank)
    return (shape[0], weight_shape[0], *((s + pads[i] + pads[i + rank] - (k - 1) * dilations[i] - 1) // strides[i]
                                         + 1 for i, (s, k) in enumerate(zip(shape[2:], weight_shape[2:]))))


CONV_INTEGER = {
    # sums of 864 products of up to 255 x 255: past float32's exact integers, exact in int32
    "wide sums": (np.full((1, 96, 5, 4), 255, np.uint8), np.full((2, 96, 3, 3), 255, np.uint8), None, None, {}),
    "zero points per channel": (_RNG.integers(0, 256, (2, 3, 7, 6), dtype=np.uint8),
                                _RNG.integers(0, 256, (4, 3, 2, 3), dtype=np.uint8), np.array(131, np.uint8),
                                np.array([0, 255, 7, 128], np.uint8), {"pads": [0, 1, 2, 1], "strides": [1, 2]}),
    "int8 x": (_RNG.integers(-128, 128, (1, 2, 6, 6), dtype=np.int8),
               _RNG.integers(0, 256, (2, 2, 3, 3), dtype=np.uint8), np.array(-5, np.int8), np.array(3, np.uint8),
               {"dilations": [2, 2]}),
}


@pytest.mark.parametrize("case", CONV_INTEGER)
def test_convinteger_matches_the_reference(case: str, tmp_path: Path):
    x, w, x_zero, w_zero, attributes = CONV_INTEGER[case]
    feed = {"x": x, "w": w}
    constants = {name: value for name, value in (("x_zero_point", x_zero), ("w_zero_point", w_zero))
                 if value is not None}
    order = ["x", "w"] + list(constants)
    model = _model(tmp_path / "c.onnx", "ConvInteger", feed, constants,
                   {"y": (_output_shape(x.shape, w.shape, attributes), TensorProto.INT32)}, order, 10, **attributes)
    expected = ReferenceEvaluator(str(model)).run(None, feed)[0]  # ONNX Runtime's has no per-channel zero points
    _assert_exact(_kiln(model, feed, tmp_path)["y"], expected)
    if case == "wide sums":
        assert expected.max() > 2 ** 24


def test_qlinearconv_rounds_halves_to_even(tmp_path: Path):
    """A multiplier of 1/2 puts every odd sum on a half, which rounds to the even integer before the zero point is
    added (as QuantizeLinear and ONNX Runtime add it; onnx.reference adds it first)."""
    x = np.arange(-7, 8, dtype=np.int8).reshape(1, 1, 3, 5)
    w = np.array([1, -3], np.int8).reshape(2, 1, 1, 1)
    constants = {"x_scale": np.array(1, np.float32), "x_zero_point": np.array(0, np.int8),
                 "w_scale": np.array([0.5, 0.5], np.float32), "w_zero_point": np.array([0, 0], np.int8),
                 "y_scale": np.array(1, np.float32), "y_zero_point": np.array(1, np.int8)}
    order = ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point"]
    model = _model(tmp_path / "q.onnx", "QLinearConv", {"x": x, "w": w}, constants,
                   {"y": ((1, 2, 3, 5), TensorProto.INT8)}, order, 10)
    got = _kiln(model, {"x": x, "w": w}, tmp_path)["y"]
    _assert_exact(got, onnxruntime_outputs(model, {"x": x, "w": w})[0])
    # -7 .. -3 halved: -3.5, -3, -2.5, -2, -1.5, rounded to -4, -3, -2, -2, -2, plus the zero point 1
    _assert_exact(got[0, 0, 0], np.array([-3, -2, -1, -1, -1], np.int8))


# ---- blocked QuantizeLinear / DequantizeLinear --------------------------------------------------

BLOCKED_DEQUANTIZE = {
    # 7 along the axis in blocks of 3: a short last block
    "uint8 short block": (_RNG.integers(0, 256, (2, 7, 3), dtype=np.uint8), 1, 3, True, np.float32),
    "int8 last axis": (_RNG.integers(-128, 128, (3, 8), dtype=np.int8), -1, 4, True, np.float32),
    "int16 no zero point": (_RNG.integers(-32768, 32768, (5, 4), dtype=np.int16), 0, 2, False, np.float32),
    "int32 float16 scale": (_RNG.integers(-2 ** 20, 2 ** 20, (4, 6), dtype=np.int32), 1, 5, False, np.float16),
}


@pytest.mark.parametrize("case", BLOCKED_DEQUANTIZE)
def test_blocked_dequantize_matches_the_reference(case: str, tmp_path: Path):
    x, axis, block, with_zero, scale_type = BLOCKED_DEQUANTIZE[case]
    blocked = list(x.shape)
    blocked[axis] = -(-blocked[axis] // block)
    inputs = {"x": x, "x_scale": _RNG.uniform(0.01, 4, blocked).astype(scale_type)}
    if with_zero:
        inputs["x_zero_point"] = _RNG.integers(np.iinfo(x.dtype).min, np.iinfo(x.dtype).max, blocked,
                                               dtype=x.dtype)
    model = _model(tmp_path / "dq.onnx", "DequantizeLinear", inputs, {},
                   {"y": (x.shape, _TYPES[np.dtype(scale_type)])}, list(inputs), 21, axis=axis, block_size=block)
    expected = ReferenceEvaluator(str(model)).run(None, inputs)[0]
    _assert_exact(_kiln(model, inputs, tmp_path)["y"], expected)


BLOCKED_QUANTIZE = {
    "uint8": (TensorProto.UINT8, (3, 10), 1, 4),
    "int8 first axis": (TensorProto.INT8, (6, 2, 3), 0, 4),
    "int16": (TensorProto.INT16, (2, 9), -1, 3),
    "uint16 no zero point": (TensorProto.UINT16, (4, 5), 1, 2),
}


@pytest.mark.parametrize("case", BLOCKED_QUANTIZE)
def test_blocked_quantize_matches_the_reference(case: str, tmp_path: Path):
    target, shape, axis, block = BLOCKED_QUANTIZE[case]
    dtype = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8, TensorProto.INT16: np.int16,
             TensorProto.UINT16: np.uint16}[target]
    low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
    blocked = list(shape)
    blocked[axis] = -(-blocked[axis] // block)
    scale = _RNG.choice(np.array([0.5, 1.0, 2.0, 0.37, 3.1], np.float32), blocked)
    x = (_RNG.integers(-2 * abs(low) - 3, 2 * high + 3, shape) * 0.25).astype(np.float32)
    # halves round to even; far beyond the range saturates; NaN is the lowest (the reference's int32 NaN, clamped)
    x.flat[:8] = [0.5, 1.5, 2.5, -0.5, -2.5, 1e6, -1e6, np.nan if low == 0 else -1e6]
    inputs = {"x": x, "y_scale": scale}
    attributes = {"axis": axis, "block_size": block}
    if case.endswith("no zero point"):
        attributes["output_dtype"] = target
    else:
        inputs["y_zero_point"] = _RNG.integers(low, high, blocked, dtype=dtype)
    model = _model(tmp_path / "q.onnx", "QuantizeLinear", inputs, {}, {"y": (shape, target)}, list(inputs), 21,
                   **attributes)
    expected = ReferenceEvaluator(str(model)).run(None, inputs)[0]
    assert {low, high} <= set(expected.ravel().tolist())  # both ends saturate somewhere
    _assert_exact(_kiln(model, inputs, tmp_path)["y"], expected)


# ---- MaxPool's Indices --------------------------------------------------------------------------

MAXPOOL = {
    "2-D padded, batch and channels": ((2, 3, 7, 6), {"kernel_shape": [3, 2], "pads": [1, 1, 1, 0],
                                                       "strides": [2, 1]}),
    "column-major, ceil mode": ((1, 2, 6, 7), {"kernel_shape": [2, 3], "strides": [2, 2], "ceil_mode": 1,
                                               "storage_order": 1}),
    "dilated": ((1, 2, 8, 9), {"kernel_shape": [2, 3], "dilations": [2, 2], "pads": [1, 2, 0, 1]}),
    "same lower": ((2, 1, 5, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "1-D": ((2, 3, 11), {"kernel_shape": [4], "strides": [3], "pads": [2, 1]}),
    "3-D column-major": ((1, 2, 4, 5, 3), {"kernel_shape": [2, 2, 2], "strides": [1, 2, 1], "storage_order": 1}),
}


@pytest.mark.parametrize("case", MAXPOOL)
def test_maxpool_indices_match_onnx_runtime(case: str, tmp_path: Path):
    shape, attributes = MAXPOOL[case]
    # few distinct values: many ties, which the first maximum wins
    x = _RNG.integers(-3, 3, shape).astype(np.float32)
    feed = {"x": x}
    model = _maxpool(tmp_path / "pool.onnx", shape, attributes)
    y, indices = onnxruntime_outputs(model, feed)
    got = _kiln(model, feed, tmp_path)
    _assert_exact(got["y"], y)
    _assert_exact(got["indices"], indices)
    assert indices.max() >= np.prod(shape[2:])  # indices count past the first channel


def test_maxpool_never_picks_padding_even_among_infinities(tmp_path: Path):
    """A window of -inf and padding: the first real position, as onnx.reference's strided MaxPool gives it."""
    x = np.full((1, 2, 5, 5), -np.inf, np.float32)
    x[0, 1, 3, 4] = np.float32(-1e38)
    model = _maxpool(tmp_path / "pool.onnx", x.shape, {"kernel_shape": [3, 3], "pads": [2, 2, 2, 2],
                                                       "strides": [2, 2]})
    y, indices = ReferenceEvaluator(str(model)).run(None, {"x": x})
    got = _kiln(model, {"x": x}, tmp_path)
    _assert_exact(got["y"], y)
    _assert_exact(got["indices"], indices)
    assert indices[0, 0, 0, 0] == 0 and indices[0, 1, 2, 2] == 25 + 3 * 5 + 4


def _maxpool(path: Path, shape, attributes) -> Path:
    b = GraphBuilder("pool", opset=12)
    b.input("x", shape, TensorProto.FLOAT)
    b.nodes.append(helper.make_node("MaxPool", ["x"], ["y", "indices"], **attributes))
    b.output("y", None)
    b.output("indices", None)
    model = b.model(infer_shapes=True)
    onnx.save(model, str(path))
    return path


# ---- where the passes decline --------------------------------------------------------------------

def test_declined_nodes_stay_refused_with_their_reasons(tmp_path: Path):
    b = GraphBuilder("declined", opset=21)
    b.input("x", ("n", 1, 4, 4), TensorProto.FLOAT)  # MaxPool over a symbolic batch: no index tables
    b.nodes.append(helper.make_node("MaxPool", ["x"], ["y", "indices"], kernel_shape=[2, 2], name="pool"))
    b.input("q", (4, "k"), TensorProto.UINT8)  # a blocked axis of unknown length
    b.input("scale", (4, 2), TensorProto.FLOAT)
    b.nodes.append(helper.make_node("DequantizeLinear", ["q", "scale"], ["d"], axis=1, block_size=2, name="dq"))
    b.input("xi", (1, 1, 4, 4), TensorProto.UINT8)
    b.input("w_flat", (4,), TensorProto.UINT8)
    b.input("w_shape", ("r",), TensorProto.INT64)
    b.node("Reshape", ["w_flat", "w_shape"], "wi")  # a weight of unknown rank
    b.nodes.append(helper.make_node("ConvInteger", ["xi", "wi"], ["c"], name="conv"))
    for name, shape, dtype in (("y", ("n", 1, 3, 3), TensorProto.FLOAT),
                               ("indices", ("n", 1, 3, 3), TensorProto.INT64), ("d", (4, "k"), TensorProto.FLOAT),
                               ("c", (1, "m", "h", "w"), TensorProto.INT32)):
        b.output(name, shape, dtype)
    graph = run_passes(load(b.save(tmp_path / "declined.onnx")))
    refused = unsupported_ops(graph.body)
    assert refused.items() >= {"MaxPool (Indices output)": ["pool"],
                               "DequantizeLinear (block_size 2 (the converter rejects it))": ["dq"],
                               "ConvInteger (the weight's rank is not known)": ["conv"]}.items()
