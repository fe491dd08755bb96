"""Compiled single-op graphs match ONNX Runtime, at batch 1 and 8."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest

from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.reference import check_correctness

RNG = np.random.default_rng(7)


@dataclass(frozen=True)
class Case:
    """One ONNX node (or a short chain) applied to input `x` of shape (batch, *x_shape)."""

    op: str
    x_shape: tuple[int, ...]
    attrs: dict = field(default_factory=dict)
    weights: tuple[tuple[int, ...], ...] = ()  # constant inputs after x, random normal
    constants: tuple[np.ndarray, ...] = ()  # constant inputs after the weights, given exactly
    second_input: bool = False  # a second graph input `y` with the same shape as x

    def model(self) -> onnx.ModelProto:
        b = GraphBuilder(self.op)
        names = [b.input("x", ["batch", *self.x_shape])]
        if self.second_input:
            names.append(b.input("y", ["batch", *self.x_shape]))
        for index, shape in enumerate(self.weights):
            names.append(b.const(RNG.standard_normal(shape).astype(np.float32), f"w{index}"))
        for index, value in enumerate(self.constants):
            name = b.const(value, f"c{index}")
            names.append(name if value.size else "")
        b.output(b.node(self.op, names, "out", name=f"{self.op.lower()}_0", **self.attrs))  # typed by shape inference
        return b.model(infer_shapes=True)


CASES = {
    "conv": Case("Conv", (3, 10, 10), {"pads": [1, 1, 1, 1]}, ((8, 3, 3, 3), (8,))),
    "conv_groups": Case("Conv", (4, 9, 9), {"group": 2}, ((6, 2, 3, 3),)),
    "conv_depthwise": Case("Conv", (8, 9, 9), {"group": 8, "pads": [1, 1, 1, 1]}, ((8, 1, 3, 3), (8,))),
    "conv_dilation": Case("Conv", (3, 12, 12), {"dilations": [2, 2]}, ((4, 3, 3, 3),)),
    "conv_strides": Case("Conv", (3, 11, 11), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, ((4, 3, 3, 3),)),
    "conv_same_upper": Case("Conv", (3, 10, 10), {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
                            ((4, 3, 3, 3),)),
    "conv_valid": Case("Conv", (3, 10, 10), {"auto_pad": "VALID"}, ((4, 3, 5, 5),)),
    "conv_transpose": Case("ConvTranspose", (4, 6, 6), {"strides": [2, 2], "pads": [1, 1, 1, 1]},
                           ((4, 3, 3, 3), (3,))),
    "gemm": Case("Gemm", (16,), {"transB": 1, "alpha": 0.5, "beta": 2.0}, ((10, 16), (10,))),
    "matmul": Case("MatMul", (5, 16), {}, ((16, 7),)),
    "batchnorm": Case("BatchNormalization", (4, 5, 5), {"epsilon": 1e-3}, (),
                      (RNG.standard_normal(4).astype(np.float32), RNG.standard_normal(4).astype(np.float32),
                       RNG.standard_normal(4).astype(np.float32), RNG.uniform(0.5, 2, 4).astype(np.float32))),
    "relu": Case("Relu", (3, 7)),
    "clip": Case("Clip", (3, 7), {}, (), (np.array(-0.5, np.float32), np.array(0.7, np.float32))),
    "sigmoid": Case("Sigmoid", (3, 7)),
    "tanh": Case("Tanh", (3, 7)),
    "leaky_relu": Case("LeakyRelu", (3, 7), {"alpha": 0.1}),
    "hard_swish": Case("HardSwish", (3, 7)),
    "softmax": Case("Softmax", (3, 7), {"axis": -1}),
    "max_pool": Case("MaxPool", (3, 9, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "average_pool": Case("AveragePool", (3, 8, 8), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "average_pool_pads": Case("AveragePool", (3, 7, 7), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                        "count_include_pad": 1}),
    "global_average_pool": Case("GlobalAveragePool", (5, 6, 6)),
    "add": Case("Add", (3, 4, 4), second_input=True),
    "add_broadcast": Case("Add", (3, 4, 4), {}, ((3, 1, 1),)),
    "mul": Case("Mul", (3, 4, 4), second_input=True),
    "concat": Case("Concat", (3, 4), {"axis": 1}, second_input=True),
    "reshape": Case("Reshape", (2, 3, 4), {}, (), (np.array([0, 6, -1], np.int64),)),
    "flatten": Case("Flatten", (2, 3, 4), {"axis": 1}),
    "transpose": Case("Transpose", (2, 3, 4), {"perm": [0, 3, 1, 2]}),
    "resize_nearest": Case("Resize", (2, 4, 4), {"mode": "nearest"}, (),
                           (np.array([], np.float32), np.array([1, 1, 2, 2], np.float32))),
    "resize_linear": Case("Resize", (2, 4, 4), {"mode": "linear"}, (),
                          (np.array([], np.float32), np.array([1, 1, 2, 2], np.float32))),
}


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnxruntime(name: str, batch: int, tmp_path: Path):
    case = CASES[name]
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(case.model(), str(path))
    feed = {"x": RNG.standard_normal((batch, *case.x_shape)).astype(np.float32)}
    if case.second_input:
        feed["y"] = RNG.standard_normal((batch, *case.x_shape)).astype(np.float32)
    check_correctness(path, feed, tmp_path)
