"""ArgMax / ArgMin of rows that hold nothing but the type's lowest (highest) value give the first index, or the
last with select_last_index, as ONNX Runtime computes them: TVM gave -1, or one past the end
(kiln.compiler.passes.arg_extremes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

import kiln
from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import compile_to, onnxruntime_outputs

_ROWS = {np.float32: np.array([[-np.inf] * 5, [np.inf] * 5, [1, 3, 3, 0, -2], [0, 0, 0, 0, 0]], np.float32),
         np.int32: np.array([[np.iinfo(np.int32).min] * 5, [np.iinfo(np.int32).max] * 5, [1, 3, 3, 0, -2],
                             [7, 7, 7, 7, 7]], np.int32)}


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
@pytest.mark.parametrize("select_last_index", [0, 1])
@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_rows_of_one_extreme_value_match_onnxruntime(op: str, select_last_index: int, dtype, tmp_path: Path):
    x = _ROWS[dtype]
    b = GraphBuilder("arg", opset=13)
    b.input("x", x.shape, TensorProto.FLOAT if dtype is np.float32 else TensorProto.INT32)
    b.output(b.node(op, ["x"], "y", axis=-1, keepdims=1, select_last_index=select_last_index), [4, 1],
             TensorProto.INT64)
    model = b.save(tmp_path / "arg.onnx", check=True)
    artifact = compile_to(model, tmp_path / "arg.kiln", "host", shapes={"x": x.shape}, verify=False)
    np.testing.assert_array_equal(kiln.load(artifact).run({"x": x})["y"], onnxruntime_outputs(model, {"x": x})[0])
