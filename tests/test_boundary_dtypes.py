"""Data types at the boundary (issue #19 item 5): bfloat16 inputs and outputs, as ml_dtypes arrays, through
`kiln.load` and `kiln run` (files hold them as numpy writes them: void of their width); float8 and sub-byte types,
which TVM 0.27 converts wrongly or packs, are refused at compile time with exit 4 and the reason."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto

from kiln.cli import cli
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to

BF16 = ml_dtypes.bfloat16


def _bf16_model(path: Path) -> Path:
    """A bfloat16 Add and MatMul (y), a bfloat16 input cast to float (z), a float input cast to bfloat16 (c), a
    bfloat16 ReduceMax (r: kiln's NaN-propagating max, whose isnan TVM does not take in bfloat16)."""
    b = GraphBuilder("bf16", opset=21)
    a, b_in, x = b.input("a", [4, 8], TensorProto.BFLOAT16), b.input("b", [4, 8], TensorProto.BFLOAT16), b.input(
        "x", [2, 6])
    w = b.const(np.linspace(-1, 1, 40, dtype=np.float32).reshape(8, 5).astype(BF16), "w")
    b.output(b.node("MatMul", [b.node("Add", [a, b_in]), w], "y"), [4, 5], TensorProto.BFLOAT16)
    b.output(b.node("Cast", [a], "z", to=TensorProto.FLOAT), [4, 8])
    b.output(b.node("Cast", [x], "c", to=TensorProto.BFLOAT16), [2, 6], TensorProto.BFLOAT16)
    b.output(b.node("ReduceMax", [a, b.const(np.array([1], np.int64))], "r", keepdims=0), [4], TensorProto.BFLOAT16)
    return b.save(path, check=True)


def _feed() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 8)).astype(BF16)
    a[0, :3] = [np.nan, np.inf, -0.0]
    # Cast rounds to nearest even: 1 + 2^-8 is halfway (to 1), 1 + 3 * 2^-8 too (to 1 + 2^-6); 3.4e38 overflows
    x = np.array([[1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5e-3, 3.4e38, np.nan, -np.inf],
                  rng.standard_normal(6)], np.float32)
    return {"a": a, "b": rng.standard_normal((4, 8)).astype(BF16), "x": x}


def _reference(model: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from onnx.reference import ReferenceEvaluator  # ONNX Runtime's Python API takes no bfloat16 arrays

    return dict(zip(("y", "z", "c", "r"), ReferenceEvaluator(str(model)).run(None, feed)))


def _assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got.astype(np.float32), expected.astype(np.float32))  # NaN matches NaN


@pytest.fixture(scope="module")
def bf16_artifact(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bf16")
    model = _bf16_model(folder / "bf16.onnx")
    return model, compile_to(model, folder / "bf16.kiln", shapes={"a": (4, 8), "b": (4, 8), "x": (2, 6)})


def test_bfloat16_inputs_and_outputs_match_onnx_reference(bf16_artifact):
    import kiln

    model, artifact = bf16_artifact
    feed = _feed()
    got = kiln.load(artifact).run(feed)
    assert {name: array.dtype.name for name, array in got.items()} == {"y": "bfloat16", "z": "float32",
                                                                        "c": "bfloat16", "r": "bfloat16"}
    for name, expected in _reference(model, feed).items():
        _assert_same(got[name], expected)  # the MatMul sums in float32 and rounds once, as the reference does
    assert float(got["c"][0, 0]) == 1.0 and float(got["c"][0, 1]) == 1 + 2 ** -6
    assert np.isnan(float(got["r"][0])) and np.isfinite(got["r"][1:].astype(np.float32)).all()


def test_bfloat16_arrays_as_files_hold_them_are_taken_and_others_refused(bf16_artifact):
    import kiln
    from kiln.errors import InputError

    predictor = kiln.load(bf16_artifact[1])
    feed = _feed()
    as_read = {**feed, "a": feed["a"].view("V2")}  # numpy.save writes ml_dtypes arrays as void
    _assert_same(predictor.run(as_read)["y"], predictor.run(feed)["y"])
    with pytest.raises(InputError, match=r"astype\(ml_dtypes.bfloat16\)"):
        predictor.run({**feed, "a": feed["a"].astype(np.float32)})
    with pytest.raises(InputError, match="dtype uint16"):  # raw bits are not taken as bfloat16 silently
        predictor.run({**feed, "a": feed["a"].view(np.uint16)})


def test_kiln_run_reads_and_writes_bfloat16_npz(cli_runner, bf16_artifact, tmp_path: Path):
    model, artifact = bf16_artifact
    feed = _feed()
    inputs, outputs = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inputs, **feed)
    result = cli_runner.invoke(cli, ["run", str(artifact), "--input", str(inputs), "--output", str(outputs)])
    assert result.exit_code == 0, result.output
    assert "y: bfloat16[4x5]" in result.stdout
    with np.load(outputs) as written:
        got = {"y": written["y"].view(BF16), "z": written["z"], "c": written["c"].view(BF16),
               "r": written["r"].view(BF16)}
    for name, expected in _reference(model, feed).items():
        _assert_same(got[name], expected)


def test_bfloat16_calibration_and_verification_files_are_reinterpreted():
    from kiln.calibration.datasets import check_arrays
    from kiln.compiler.graph import TensorSpec
    from kiln.verification import given_feed

    spec = TensorSpec("a", ("N", 3), "bfloat16")
    stored = np.arange(6, dtype=np.float32).reshape(2, 3).astype(BF16).view("V2")
    assert check_arrays(Path("c.npz"), {"a": stored}, (spec,))["a"].dtype == BF16
    feed, _ = given_feed({"a": stored}, (spec,), "v.npz")
    assert feed["a"].dtype == BF16 and float(feed["a"][1, 2]) == 5.0

