"""CumProd with a constant axis of static length compiles (unrolled into a running product) and computes as ONNX
Runtime, where kiln refused it: TVM's importer has no converter for it. Axes given at run time or too long to
unroll are refused with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

import kiln
from kiln.compiler.passes.cumprod import MAX_LENGTH
from kiln.errors import UnsupportedOpError
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

_TYPES = {np.int32: TensorProto.INT32, np.int64: TensorProto.INT64, np.float32: TensorProto.FLOAT,
          np.float64: TensorProto.DOUBLE}


def _cumprod(path: Path, x: np.ndarray, axis: int | None, **attributes) -> Path:
    """axis None: a graph input."""
    b = GraphBuilder("cumprod", opset=26)
    b.input("x", x.shape, _TYPES[x.dtype.type])
    axis_name = b.input("axis", [], TensorProto.INT64) if axis is None else b.const(np.array(axis, np.int64))
    b.output(b.node("CumProd", ["x", axis_name], "y", name="cumprod", **attributes), x.shape, _TYPES[x.dtype.type])
    return b.save(path, check=True)


@pytest.mark.parametrize("dtype, axis, exclusive, reverse", [
    (np.int32, 1, 1, 1), (np.int32, 1, 1, 0), (np.int64, 0, 0, 1), (np.float32, -1, 0, 0), (np.float64, 2, 1, 1),
    (np.float32, 0, 1, 0)])
def test_cumprod_matches_onnx_runtime(dtype, axis, exclusive, reverse, tmp_path: Path):
    """Zeros, negatives and int32 products that wrap included; axis 0 has length 1."""
    rng = np.random.default_rng(0)
    x = (rng.integers(5, 10, (1, 12, 3)) * rng.choice([-1, 1], (1, 12, 3))).astype(dtype)
    x[0, 2, 1] = 0
    feed = {"x": x}
    model = _cumprod(tmp_path / "c.onnx", x, axis, exclusive=exclusive, reverse=reverse)
    artifact = compile_to(model, tmp_path / "c.kiln", "host", shapes={"x": x.shape}, verify=False)
    got = kiln.load(artifact).run(feed)["y"]
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, onnxruntime_outputs(model, feed)[0])


@pytest.mark.parametrize("length, axis, reason", [
    (4, None, "CumProd (axis must be constant)"),
    (MAX_LENGTH + 1, 0, f"CumProd ({MAX_LENGTH + 1} elements along the axis, over the {MAX_LENGTH} kiln unrolls)")])
def test_cumprod_it_cannot_unroll_is_refused_with_the_reason(length, axis, reason, tmp_path: Path):
    model = _cumprod(tmp_path / "c.onnx", np.ones(length, np.float32), axis)
    shapes = {"x": (length,), **({"axis": ()} if axis is None else {})}
    with pytest.raises(UnsupportedOpError) as raised:
        compile_to(model, tmp_path / "c.kiln", "host", shapes=shapes, verify=False)
    assert raised.value.unsupported == {reason: ["cumprod"]}
