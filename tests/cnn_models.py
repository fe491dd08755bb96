"""ResNet-18 and MobileNetV2 as ONNX with random weights (BN folded into conv bias), for schedule tests
and benchmarks/cpu.py. `size` shrinks the input image for fast tests; the layers are the real ones."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    def __init__(self, seed: int):
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0
        self.rng = np.random.default_rng(seed)

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], prefix: str, **attrs) -> str:
        output = self.name(prefix)
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, act: str | None = "relu",
             pad: int | None = None) -> str:
        pad = k // 2 if pad is None else pad
        weight = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))
        y = self.node("Conv", [x, self.const(weight), self.const(self.rng.standard_normal(cout) * 0.01, "b")], "conv",
                      kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4, group=group)
        return self.act(y, act)

    def act(self, x: str, act: str | None) -> str:
        if act == "relu":
            return self.node("Relu", [x], "relu")
        if act == "relu6":
            return self.node("Clip", [x, self.const(np.array(0.0), "lo"), self.const(np.array(6.0), "hi")], "relu6")
        return x

    def head(self, x: str, channels: int, classes: int = 1000) -> str:
        flat = self.node("Flatten", [self.node("GlobalAveragePool", [x], "gap")], "flat", axis=1)
        weight = self.const(self.rng.standard_normal((classes, channels)) * 0.05)
        self.nodes.append(helper.make_node("Gemm", [flat, weight, self.const(np.zeros(classes), "b")], ["logits"],
                                           transB=1))
        return "logits"

    def model(self, name: str, batch: int, size: int, output: str = "logits",
              output_shape: tuple[int, ...] = (1000,)) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, *output_shape])], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def resnet18(batch: int = 1, size: int = 224) -> onnx.ModelProto:
    b = _Builder(0)
    x = b.conv("input", 3, 64, 7, 2)
    x = b.node("MaxPool", [x], "pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    cin = 64
    for stage, channels in enumerate([64, 128, 256, 512]):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = b.conv(b.conv(x, cin, channels, 3, stride), channels, channels, 3, act=None)
            shortcut = b.conv(x, cin, channels, 1, stride, act=None, pad=0) if stride != 1 or cin != channels else x
            x, cin = b.act(b.node("Add", [y, shortcut], "add"), "relu"), channels
    b.head(x, 512)
    return b.model("resnet18", batch, size)


def mobilenetv2(batch: int = 1, size: int = 224) -> onnx.ModelProto:
    b = _Builder(1)
    x, cin = b.conv("input", 3, 32, 3, 2, act="relu6"), 32
    for expand, channels, repeats, first_stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for index in range(repeats):
            stride, hidden = (first_stride if index == 0 else 1), cin * expand
            y = b.conv(x, cin, hidden, 1, act="relu6") if expand != 1 else x
            y = b.conv(y, hidden, hidden, 3, stride, group=hidden, act="relu6")
            y = b.conv(y, hidden, channels, 1, act=None)
            x, cin = (b.node("Add", [x, y], "add") if stride == 1 and cin == channels else y), channels
    b.head(b.conv(x, cin, 1280, 1, act="relu6"), 1280)
    return b.model("mobilenetv2", batch, size)


def small_cnn(batch: int = 1, size: int = 16, head: bool = False) -> onnx.ModelProto:
    """Two convs (+ a classifier head with head=True): models that share their conv layers."""
    b = _Builder(2)
    x = b.conv(b.conv("input", 3, 16, 3), 16, 16, 3)
    if head:
        return b.model("small_cnn_head", batch, size, b.head(x, 16, classes=10), (10,))
    return b.model("small_cnn", batch, size, x, (16, size, size))


MODELS = {"resnet18": resnet18, "mobilenetv2": mobilenetv2}
