"""DFT, STFT and MelWeightMatrix compile to MatMuls with constant matrices and compute numpy.fft's transforms (as
onnx.reference does: ONNX Runtime rounds some of them otherwise); run-time parameters the shapes narrow down are
selected at run time, others refused with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

import kiln
from kiln.compiler.frontends.onnx import load
from kiln.compiler.passes.spectral import Dft, dft_matrix, spectral
from kiln.errors import UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to

_TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.int64: TensorProto.INT64}


def _dft_model(path: Path, x: np.ndarray, *, opset: int = 17, axis: int | None = None, length: int | None = None,
               output: tuple | None = None, **attributes) -> Path:
    """A DFT of x; opset 17 takes `axis` as an attribute, opset 20 as a constant input (None: a graph input)."""
    b = GraphBuilder("dft", opset=opset)
    b.input("x", x.shape, _TYPES[x.dtype.type])
    inputs = ["x", b.const(np.array(length, np.int64)) if length is not None else ""]
    if opset >= 20:
        inputs.append(b.input("axis", [], TensorProto.INT64) if axis is None else b.const(np.array(axis, np.int64)))
    elif axis is not None:
        attributes["axis"] = axis
    b.node("DFT", inputs, "y", name="dft", **attributes)
    b.output("y", output, _TYPES[x.dtype.type])
    return b.save(path, check=output is not None, infer_shapes=output is None)


def _run(model: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> np.ndarray:
    artifact = compile_to(model, tmp_path / "s.kiln", "host", shapes={k: v.shape for k, v in feed.items()},
                          verify=False)
    return kiln.load(artifact).run(feed)["y"]


def _reference(model: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return ReferenceEvaluator(str(model)).run(None, feed)[0]


def _signal(shape: tuple[int, ...], dtype=np.float64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-3, 3, shape).astype(dtype)


def _complex(y: np.ndarray) -> np.ndarray:
    return y[..., 0] + 1j * y[..., 1]


DFT_CASES = {
    # (input shape, opset, axis, dft_length, attributes, numpy's transform of the complex input along the axis)
    "real, odd length": ((2, 7, 1), 17, 1, None, {}, lambda z: np.fft.fft(z, axis=1)),
    "complex, batch dims, middle axis": ((2, 5, 3, 2), 17, 1, None, {}, lambda z: np.fft.fft(z, axis=1)),
    "negative axis attribute": ((2, 5, 3, 2), 17, -2, None, {}, lambda z: np.fft.fft(z, axis=2)),
    "axis input, first axis": ((9, 4, 1), 20, 0, None, {}, lambda z: np.fft.fft(z, axis=0)),
    "inverse, odd length": ((3, 9, 2), 20, -2, None, {"inverse": 1}, lambda z: np.fft.ifft(z, axis=1)),
    "onesided, odd length": ((2, 9, 1), 20, 1, None, {"onesided": 1}, lambda z: np.fft.rfft(z, axis=1)),
    "onesided of complex": ((2, 8, 2), 17, 1, None, {"onesided": 1}, lambda z: np.fft.fft(z, axis=1)[:, :5]),
    "padded": ((2, 5, 2), 17, 1, 8, {}, lambda z: np.fft.fft(z, n=8, axis=1)),
    "truncated": ((2, 11, 1), 20, 1, 6, {}, lambda z: np.fft.fft(z, n=6, axis=1)),
    "inverse padded, odd": ((2, 4, 2), 17, 1, 7, {"inverse": 1}, lambda z: np.fft.ifft(z, n=7, axis=1)),
}


@pytest.mark.parametrize("case", DFT_CASES)
def test_dft_matches_numpy_fft(case: str, tmp_path: Path):
    shape, opset, axis, length, attributes, transform = DFT_CASES[case]
    x = _signal(shape)
    expected = transform(_complex(x) if shape[-1] == 2 else x[..., 0])
    model = _dft_model(tmp_path / "d.onnx", x, opset=opset, axis=axis, length=length, output=expected.shape + (2,),
                       **attributes)
    got = _run(model, {"x": x}, tmp_path)
    assert got.shape == expected.shape + (2,) and got.dtype == np.float64
    np.testing.assert_allclose(_complex(got), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows, dft_length", [(6, None), (5, 9), (7, 9), (3, 8), (4, None)])
def test_inverse_onesided_is_numpy_irfft(rows: int, dft_length: int | None, tmp_path: Path):
    """numpy's irfft: the first length // 2 + 1 bins mirrored (more ignored, fewer padded), the imaginary parts of
    the zero and Nyquist bins ignored; real output."""
    x = _signal((2, rows, 3, 2))
    n = dft_length or 2 * (rows - 1)
    model = _dft_model(tmp_path / "d.onnx", x, opset=20, axis=1, length=dft_length, output=(2, n, 3, 1), inverse=1,
                       onesided=1)
    got = _run(model, {"x": x}, tmp_path)
    np.testing.assert_allclose(got[..., 0], np.fft.irfft(_complex(x), n=n, axis=1), rtol=1e-12, atol=1e-12)
    assert got.shape == (2, n, 3, 1)


def test_float32_meets_the_suite_tolerance_and_exact_zeros_stay_zero(tmp_path: Path):
    """rtol 1e-3, atol 1e-7: the matrices are float64 cast to float32; the imaginary parts of a real signal's zero
    and Nyquist bins are exactly 0."""
    x = _signal((3, 16, 1), np.float32)
    model = _dft_model(tmp_path / "d.onnx", x, opset=20, axis=1, output=(3, 9, 2), onesided=1)
    got = _run(model, {"x": x}, tmp_path)
    np.testing.assert_allclose(got, _reference(model, {"x": x}), rtol=1e-3, atol=1e-7)
    assert got.dtype == np.float32 and not got[:, 0, 1].any() and not got[:, 8, 1].any()


def test_axis_given_at_run_time_is_selected_and_an_invalid_one_gives_nan(tmp_path: Path):
    x = _signal((3, 5, 7, 2))
    model = _dft_model(tmp_path / "d.onnx", x, opset=20, output=(3, 5, 7, 2))
    artifact = compile_to(model, tmp_path / "s.kiln", "host", shapes={"x": x.shape, "axis": ()}, verify=False)
    run = kiln.load(artifact).run
    for axis in (0, 1, 2, -2, -4):
        feed = {"x": x, "axis": np.array(axis, np.int64)}
        np.testing.assert_allclose(run(feed)["y"], _reference(model, feed), rtol=1e-12, atol=1e-12)
    for axis in (3, -1, 7):  # the last dim is the complex one
        assert np.isnan(run({"x": x, "axis": np.array(axis, np.int64)})["y"]).all()


def test_run_time_axis_of_a_onesided_dft_is_the_one_the_declared_shape_allows(tmp_path: Path):
    x = _signal((4, 10, 1))
    model = _dft_model(tmp_path / "d.onnx", x, opset=20, output=(4, 6, 2), onesided=1)
    artifact = compile_to(model, tmp_path / "s.kiln", "host", shapes={"x": x.shape, "axis": ()}, verify=False)
    run = kiln.load(artifact).run
    feed = {"x": x, "axis": np.array(-2, np.int64)}
    np.testing.assert_allclose(run(feed)["y"], _reference(model, feed), rtol=1e-12, atol=1e-12)
    assert np.isnan(run({"x": x, "axis": np.array(0, np.int64)})["y"]).all()  # would give 3 x 10 x 2


def test_dft_length_given_at_run_time_is_refused_with_the_reason(tmp_path: Path):
    b = GraphBuilder("dft", opset=20)
    b.input("x", (2, 8, 1))
    b.input("n", [], TensorProto.INT64)
    b.node("DFT", ["x", "n"], "y", name="dft")
    b.output("y", (2, 8, 2))
    model = b.save(tmp_path / "d.onnx", check=True)
    with pytest.raises(UnsupportedOpError) as raised:
        compile_to(model, tmp_path / "s.kiln", "host", shapes={"x": (2, 8, 1), "n": ()}, verify=False)
    assert raised.value.unsupported == {"DFT (dft_length must be constant)": ["dft"]}
    assert raised.value.freezable == ("n",)


def _stft_model(path: Path, signal: np.ndarray, step: int | None, length: int | None, window: np.ndarray | None,
                output: tuple, onesided: int = 1) -> Path:
    """An STFT; step None: a graph input; window: an initializer."""
    b = GraphBuilder("stft", opset=17)
    b.input("x", signal.shape, _TYPES[signal.dtype.type])
    inputs = ["x", b.input("step", [], TensorProto.INT64) if step is None else b.const(np.array(step, np.int64)),
              "" if window is None else b.const(window),
              "" if length is None else b.const(np.array(length, np.int64))]
    b.node("STFT", inputs, "y", name="stft", onesided=onesided)
    b.output("y", output, _TYPES[signal.dtype.type])
    return b.save(path, check=True)


STFT_CASES = {
    # (signal shape, frame_step, frame_length, window length, onesided, output shape)
    "odd frame length, onesided": ((2, 40, 1), 6, 9, None, 1, (2, 6, 5, 2)),
    "window, step past the last whole frame": ((1, 33, 1), 5, None, 8, 1, (1, 6, 5, 2)),
    "complex signal, both sides": ((3, 20, 2), 4, 7, 7, 0, (3, 4, 7, 2)),
    "one frame": ((1, 12, 1), 20, 12, None, 1, (1, 1, 7, 2)),
}


@pytest.mark.parametrize("case", STFT_CASES)
def test_stft_matches_onnx_reference(case: str, tmp_path: Path):
    shape, step, length, window_length, onesided, output = STFT_CASES[case]
    x = _signal(shape)
    window = np.hanning(window_length) if window_length else None
    model = _stft_model(tmp_path / "s.onnx", x, step, length, window, output, onesided)
    got = _run(model, {"x": x}, tmp_path)
    assert got.shape == output
    np.testing.assert_allclose(got, _reference(model, {"x": x}), rtol=1e-12, atol=1e-12)


def test_stft_frame_step_at_run_time_gathers_at_run_time_offsets(tmp_path: Path):
    """15 frames of 16 in 128 samples: only step 8 gives them; others (0 included) give NaN, not a crash."""
    x = _signal((1, 128, 1), np.float32)
    model = _stft_model(tmp_path / "s.onnx", x, None, 16, None, (1, 15, 9, 2))
    artifact = compile_to(model, tmp_path / "s.kiln", "host", shapes={"x": x.shape, "step": ()}, verify=False)
    run = kiln.load(artifact).run
    feed = {"x": x, "step": np.array(8, np.int64)}
    np.testing.assert_allclose(run(feed)["y"], _reference(model, feed), rtol=1e-3, atol=1e-6)
    for step in (7, 9, 0, -8):
        assert np.isnan(run({"x": x, "step": np.array(step, np.int64)})["y"]).all()


def _mel_model(path: Path, values: tuple, constant: bool) -> Path:
    b = GraphBuilder("mel", opset=17)
    names = ("bins", "dft", "rate", "low", "high")
    inputs = [b.const(np.array(v)) if constant else b.input(n, [], TensorProto.INT64 if isinstance(v, int)
                                                            else TensorProto.FLOAT)
              for n, v in zip(names, values)]
    b.node("MelWeightMatrix", inputs, "y", name="mel")
    b.output("y", (values[1] // 2 + 1, values[0]))
    return b.save(path, check=True)


@pytest.mark.parametrize("values", [(8, 16, 8192, np.float32(0), np.float32(4096)),
                                    (5, 31, 16000, np.float32(125.5), np.float32(3800))])
def test_constant_mel_weight_matrix_is_onnx_reference_s(values: tuple, tmp_path: Path):
    model = _mel_model(tmp_path / "m.onnx", values, constant=True)
    artifact = compile_to(model, tmp_path / "s.kiln", "host", shapes={}, verify=False)
    np.testing.assert_array_equal(kiln.load(artifact).run({})["y"], _reference(model, {}))


def test_mel_weight_matrix_of_inputs_is_refused_with_the_reason(tmp_path: Path):
    model = _mel_model(tmp_path / "m.onnx", (8, 16, 8192, np.float32(0), np.float32(4096)), constant=False)
    with pytest.raises(UnsupportedOpError) as raised:
        compile_to(model, tmp_path / "s.kiln", "host", shapes={n: () for n in ("bins", "dft", "rate", "low", "high")},
                   verify=False)
    assert list(raised.value.unsupported) == ["MelWeightMatrix (bins, dft, rate, low, high must be constants)"]


def test_dft_matrix_is_exact_at_quarter_turns():
    matrix = dft_matrix(Dft((8, 1), 0, 8, False, False)).reshape(8, 8, 2)
    assert set(np.unique(matrix[:, ::2])) <= {-1.0, 0.0, 1.0}  # bins 0, 2, 4, 6: multiples of a quarter turn
    np.testing.assert_array_equal(matrix[:, 4, 1], 0)


def test_graphs_without_spectral_ops_are_left_alone(tmp_path: Path):
    b = GraphBuilder("relu", opset=17)
    b.input("x", (2, 3))
    b.output(b.node("Relu", ["x"], "y"), (2, 3))
    graph = load(b.save(tmp_path / "r.onnx"))
    assert spectral(graph) is graph
