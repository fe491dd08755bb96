"""Ops TVM's importer refuses, ignores attributes of, or has no converter for, compiled exactly: BitCast by kiln's own
converter, the rest rewritten by kiln.compiler.passes.converter_gaps (EyeLike's dtype, IsInf's signs, bool
ReduceMax / ReduceMin, Split's empty parts, ai.onnx.ml's Binarizer and ArrayFeatureExtractor); compared with ONNX
Runtime, or ONNX's reference where ONNX Runtime has no kernel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.compat import tvm as tvm_compat
from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes.converter_gaps import converter_gaps
from kiln.errors import UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs


def _save(b: GraphBuilder, path: Path, ml: bool = False, default_domain: bool = True) -> Path:
    model = b.model()
    if ml:
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    if not default_domain:  # as ONNX's own ai.onnx.ml cases: no default-domain import at all
        model.opset_import.remove(next(o for o in model.opset_import if o.domain == ""))
        model.ir_version = 3
    onnx.save(onnx.shape_inference.infer_shapes(model), str(path))
    return path


def _one_op(path: Path, op: str, x: np.ndarray, outputs: int = 1, opset: int = 22, domain: str = "",
            extra: dict[str, np.ndarray] | None = None, default_domain: bool = True, **attributes) -> Path:
    """A model of one `op` node reading input x (and the `extra` constants), its outputs y0, y1, ..."""
    b = GraphBuilder(op.lower(), opset=opset)
    b.input("x", x.shape, helper.np_dtype_to_tensor_dtype(x.dtype))
    inputs = ["x", *(b.const(value, name) for name, value in (extra or {}).items())]
    names = [f"y{i}" for i in range(outputs)]
    b.nodes.append(helper.make_node(op, inputs, names, name=op.lower(), domain=domain, **attributes))
    for name in names:
        b.output(name)
    return _save(b, path, ml=domain == "ai.onnx.ml", default_domain=default_domain)


def _kiln(model: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> list[np.ndarray]:
    artifact = compile_to(model, tmp_path / "m.kiln", "host", shapes={k: v.shape for k, v in feed.items()},
                          verify=False)
    return list(kiln.load(artifact).run(feed).values())


def _assert_same(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for actual, reference in zip(got, expected):
        assert actual.dtype == reference.dtype and actual.shape == reference.shape
        np.testing.assert_array_equal(actual, reference)


# ---- BitCast -------------------------------------------------------------------------------------------------

_F32 = np.array([[1.0, -0.0, np.inf, -np.inf, np.nan], [1e-45, -3.4e38, 0.1, 2.0, -1.5],
                 [np.finfo(np.float32).tiny, 7.0, -0.0, 1e10, -np.nan]], np.float32)
_INTS = np.array([0, -1, 1, 2 ** 31 - 1, -2 ** 31, 0x7FC00001, -8388608], np.int32)  # 0x7FC00001: a NaN payload
BITCASTS = {
    "float32 -> int32": (_F32, np.int32),
    "int32 -> float32": (_INTS, np.float32),
    "float64 -> int64": (np.array([np.pi, -0.0, np.inf, 5e-324, -np.nan], np.float64), np.int64),
    "int64 -> float64": (np.array([0, -1, 2 ** 63 - 1, -2 ** 63, 0x7FF0000000000001], np.int64), np.float64),
    "uint32 -> int32": (np.array([0, 1, 2 ** 31, 2 ** 32 - 1, 12345], np.uint32), np.int32),
    "int8 -> uint8": (np.array([[0, -1, 127], [-128, 5, -6]], np.int8), np.uint8),
    "uint8 -> int8": (np.array([255, 128, 0, 127, 200], np.uint8), np.int8),
    "uint16 -> int16": (np.array([65535, 32768, 1, 0, 40000], np.uint16), np.int16),
    "float16 -> int16": (np.array([1, -0.0, np.inf, np.nan, 6e-8, -65504], np.float16), np.int16),
    "int16 -> float16": (np.array([-1024, 31744, 1, 15360, -32768], np.int16), np.float16),
    "bool -> uint8": (np.array([True, False, True, True, False]), np.uint8),
    "bool -> int8": (np.array([[True], [False], [True]]), np.int8),
    "scalar float32 -> uint32": (np.array(-2.5, np.float32), np.uint32),
    "float64 -> uint64": (np.array([-1.0, np.nan, 2.0 ** 1023], np.float64), np.uint64),
    "uint64 -> int64": (np.array([2 ** 64 - 1, 2 ** 63, 3], np.uint64), np.int64),
}


@pytest.mark.parametrize("case", BITCASTS)
def test_bitcast_keeps_the_bits(case: str, tmp_path: Path):
    x, target = BITCASTS[case]
    to = helper.np_dtype_to_tensor_dtype(np.dtype(target))
    model = _one_op(tmp_path / "b.onnx", "BitCast", x, opset=26, to=to)
    (got,) = _kiln(model, {"x": x}, tmp_path)
    expected = x.view(target)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    # compared as bits: NaNs with payloads are equal only so
    unsigned = np.dtype(f"u{expected.dtype.itemsize}")
    np.testing.assert_array_equal(got.view(unsigned), expected.view(unsigned))
    reference = ReferenceEvaluator(str(model)).run(None, {"x": x})[0]  # ONNX Runtime has no bool BitCast
    np.testing.assert_array_equal(reference.view(unsigned), expected.view(unsigned))


@pytest.mark.parametrize("x, to, reason", [
    (np.array([0, 1, 2], np.uint8), TensorProto.BOOL,
     "BitCast (to bool (a byte other than 0 or 1 is no bool TVM holds))"),
    (np.array([1, 2], np.int32), TensorProto.UINT64, "BitCast (types of different widths)")])
def test_bitcast_kiln_cannot_compute_is_refused_with_the_reason(x, to, reason, tmp_path: Path):
    b = GraphBuilder("bitcast", opset=26)
    b.input("x", x.shape, helper.np_dtype_to_tensor_dtype(x.dtype))
    b.output(b.node("BitCast", ["x"], "y", name="bitcast", to=to), x.shape, to)
    model = b.save(tmp_path / "b.onnx")
    with pytest.raises(UnsupportedOpError) as raised:
        compile_to(model, tmp_path / "b.kiln", "host", shapes={"x": x.shape}, verify=False)
    assert raised.value.unsupported == {reason: ["bitcast"]}


def test_converters_are_in_the_importer_table_only_inside_the_context():
    from tvm.relax.frontend.onnx import onnx_frontend

    with tvm_compat.onnx_converters_added({"KilnTestOp": lambda bb, inputs, attrs: inputs[0]}):
        assert "KilnTestOp" in onnx_frontend._get_convert_map()
        assert "Relu" in onnx_frontend._get_convert_map()
    assert "KilnTestOp" not in onnx_frontend._get_convert_map()


# ---- EyeLike, IsInf, bool reductions ------------------------------------------------------------------------

@pytest.mark.parametrize("shape, source, dtype, k", [
    ((3, 4), np.int32, TensorProto.DOUBLE, 0), ((4, 5), np.int32, TensorProto.FLOAT, 1),
    ((5, 2), np.float32, TensorProto.INT64, -1), ((3, 3), np.float32, TensorProto.BOOL, 2),
    ((4, 4), np.int64, TensorProto.UINT8, 7), ((1, 7), np.float64, TensorProto.INT32, -3)])
def test_eyelike_of_another_dtype_matches_onnx_reference(shape, source, dtype, k, tmp_path: Path):
    """(ONNX Runtime has no bool EyeLike.)"""
    x = np.arange(np.prod(shape)).reshape(shape).astype(source)
    model = _one_op(tmp_path / "e.onnx", "EyeLike", x, dtype=dtype, k=k)
    _assert_same(_kiln(model, {"x": x}, tmp_path), ReferenceEvaluator(str(model)).run(None, {"x": x}))




@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("positive, negative", [(1, 0), (0, 1), (0, 0)])
def test_isinf_of_one_sign_or_none_matches_onnx_runtime(dtype, positive, negative, tmp_path: Path):
    largest = np.finfo(dtype).max  # finite: no infinity
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, -1.0, largest, -largest, 1e-40, -np.inf, np.inf, -np.nan],
                 dtype)
    model = _one_op(tmp_path / "i.onnx", "IsInf", x, detect_positive=positive, detect_negative=negative)
    got = _kiln(model, {"x": x}, tmp_path)
    _assert_same(got, onnxruntime_outputs(model, {"x": x}))
    assert got[0].sum() == (2 * positive + 2 * negative)  # the data holds two infinities of each sign


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("axes, keepdims", [([1], 1), ([0, 2], 0), ([-1], 1), (None, 0), ([0, 1, 2], 1)])
def test_bool_reductions_match_onnx_runtime(op, axes, keepdims, tmp_path: Path):
    x = np.random.default_rng(7).random((3, 5, 2)) < 0.5
    x[0] = True  # a row of all-true and one of all-false, so both any and all see each answer
    x[1] = False
    extra = {} if axes is None else {"axes": np.array(axes, np.int64)}
    model = _one_op(tmp_path / "r.onnx", op, x, extra=extra, keepdims=keepdims)
    got = _kiln(model, {"x": x}, tmp_path)
    _assert_same(got, onnxruntime_outputs(model, {"x": x}))
    assert got[0].dtype == np.bool_


# ---- Split with empty parts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, axis, split", [
    ((2, 5), 1, [0, 3, 0, 2]), ((7,), 0, [0, 0, 7]), ((3, 4, 5), -1, [2, 0, 0, 3, 0]), ((3, 2), 0, [0, 3, 0]),
    ((4, 3), 0, [1, 0, 3])])
@pytest.mark.parametrize("opset", [11, 18])
def test_split_with_empty_parts_matches_onnx_runtime(shape, axis, split, opset, tmp_path: Path):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    sizes = np.array(split, np.int64)
    model = (_one_op(tmp_path / "s.onnx", "Split", x, len(split), opset, axis=axis, split=split) if opset < 13
             else _one_op(tmp_path / "s.onnx", "Split", x, len(split), opset, extra={"split": sizes}, axis=axis))
    _assert_same(_kiln(model, {"x": x}, tmp_path), onnxruntime_outputs(model, {"x": x}))


def test_split_of_an_empty_axis_by_sizes_given_at_run_time_compiles_as_exported(tmp_path: Path):
    b = GraphBuilder("split", opset=18)
    b.input("x", (3, 0), TensorProto.INT32)
    b.input("split", (3,), TensorProto.INT64)
    b.nodes.append(helper.make_node("Split", ["x", "split"], ["y0", "y1", "y2"], name="split", axis=1))
    for name in ("y0", "y1", "y2"):
        b.output(name, (3, 0), TensorProto.INT32)
    model = b.save(tmp_path / "s.onnx")
    feed = {"x": np.zeros((3, 0), np.int32), "split": np.zeros(3, np.int64)}
    _assert_same(_kiln(model, feed, tmp_path), onnxruntime_outputs(model, feed))


def test_split_sizes_given_at_run_time_of_a_nonempty_axis_stay_refused(tmp_path: Path):
    b = GraphBuilder("split", opset=18)
    b.input("x", (4,), TensorProto.FLOAT)
    b.input("split", (2,), TensorProto.INT64)
    b.nodes.append(helper.make_node("Split", ["x", "split"], ["y0", "y1"], name="split"))
    b.output("y0", ("a",))
    b.output("y1", ("b",))
    with pytest.raises(UnsupportedOpError) as raised:
        compile_to(b.save(tmp_path / "s.onnx"), tmp_path / "s.kiln", "host", shapes={"x": (4,), "split": (2,)},
                   verify=False)
    assert raised.value.unsupported == {"Split (split must be constant)": ["split"]}


# ---- ai.onnx.ml ---------------------------------------------------------------------------------------------

def test_binarizer_matches_onnx_runtime_on_floats(tmp_path: Path):
    x = np.array([[-np.inf, -1.0, 0.9999999, 1.0, 1.0000001], [np.inf, 3e38, -0.0, 0.5, 2.0]], np.float32)
    model = _one_op(tmp_path / "b.onnx", "Binarizer", x, domain="ai.onnx.ml", threshold=1.0)
    got = _kiln(model, {"x": x}, tmp_path)
    _assert_same(got, onnxruntime_outputs(model, {"x": x}))
    assert got[0].sum() == 4


@pytest.mark.parametrize("x, threshold", [
    (np.array([np.nan, -np.nan, 0.7, 0.6999999999999, -1, np.inf]), 0.7),  # ONNX Runtime raises on NaN
    (np.array([[-1, 0, 1], [2, -2, 7]], np.int32), -0.5),  # -0.5 as an integer would make 0 > 0 false
    (np.array([-3, 0, 2, 2 ** 40, -2 ** 40], np.int64), 1.5),
    (np.array([5, 6, 7], np.int32), 6.0)])
@pytest.mark.parametrize("default_domain", [True, False])
def test_binarizer_onnx_runtime_has_no_kernel_for_matches_onnx_reference(x, threshold, default_domain,
                                                                         tmp_path: Path):
    model = _one_op(tmp_path / "b.onnx", "Binarizer", x, domain="ai.onnx.ml", threshold=threshold,
                    default_domain=default_domain)
    _assert_same(_kiln(model, {"x": x}, tmp_path), ReferenceEvaluator(str(model)).run(None, {"x": x}))


@pytest.mark.parametrize("shape, indices", [
    ((3, 4), [2, 0, 3, 3]), ((5,), [4, 1]), ((2, 3, 4), [[3, 1]]), ((2, 3, 5), [[0, 4], [2, 2]]),
    ((3, 1), [0]), ((6,), 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_array_feature_extractor_matches_onnx_runtime(shape, indices, dtype, tmp_path: Path):
    x = (np.arange(np.prod(shape)) * 3 - 7).reshape(shape).astype(dtype)
    b = GraphBuilder("afe", opset=13)
    feed = {"x": x, "i": np.array(indices, np.int64)}
    b.input("x", shape, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    b.input("i", feed["i"].shape, TensorProto.INT64)
    b.nodes.append(helper.make_node("ArrayFeatureExtractor", ["x", "i"], ["y"], name="afe", domain="ai.onnx.ml"))
    b.output("y", (*(shape[:-1] or (1,)), feed["i"].size), helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    model = _save(b, tmp_path / "a.onnx", ml=True, default_domain=False)
    got = _kiln(model, feed, tmp_path)
    _assert_same(got, onnxruntime_outputs(model, feed))
    _assert_same(got, ReferenceEvaluator(str(model)).run(None, feed))


def test_nodes_the_converters_take_are_left_as_they_are(tmp_path: Path):
    x = np.zeros((3, 3), np.float32)
    for model in (_one_op(tmp_path / "e.onnx", "EyeLike", x, dtype=TensorProto.FLOAT),
                  _one_op(tmp_path / "i.onnx", "IsInf", x, detect_negative=1),
                  _one_op(tmp_path / "r.onnx", "ReduceMax", x, extra={"axes": np.array([1], np.int64)}),
                  _one_op(tmp_path / "s.onnx", "Split", x, 2, 18, extra={"split": np.array([1, 2], np.int64)})):
        graph = load(model)
        assert converter_gaps(graph) is graph
