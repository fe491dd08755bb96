"""ONNX models for kiln's tests and benchmarks, written with GraphBuilder.

ResNet-18 and MobileNetV2 with random weights (batch norm folded into the conv biases): their layers
are the real ones, and `size` shrinks the input image for fast tests. Small graphs for the
quantization and error tests, and the digits CNN with an injected outlier activation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kiln.testing.onnx_graphs import GraphBuilder
from kiln.testing.paths import DIGITS_CNN

if TYPE_CHECKING:
    import onnx


class _Layers:
    """CNN layers on a GraphBuilder, with He-scaled random weights; values named by kind and a counter."""

    def __init__(self, seed: int):
        self.graph = GraphBuilder(opset=13, ir_version=8)
        self.rng = np.random.default_rng(seed)

    def const(self, array, prefix: str = "w") -> str:
        return self.graph.const(np.asarray(array, np.float32), self.graph.fresh(prefix))

    def node(self, op: str, inputs: list[str], prefix: str, **attributes) -> str:
        return self.graph.node(op, inputs, self.graph.fresh(prefix), **attributes)

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
        if act == "silu":
            return self.node("Mul", [x, self.node("Sigmoid", [x], "sigmoid")], "silu")
        if act == "hardswish":  # as MXNet's GluonCV writes it: x * relu6(x + 3) / 6
            shifted = self.node("Add", [x, self.const(np.array(3.0), "three")], "shift")
            gate = self.node("Clip", [shifted, self.const(np.array(0.0), "lo"), self.const(np.array(6.0), "hi")], "relu6")
            return self.node("Mul", [x, self.node("Div", [gate, self.const(np.array(6.0), "six")], "gate")], "hswish")
        return x

    def squeeze_excitation(self, x: str, channels: int, squeezed: int) -> str:
        """EfficientNet's channel attention: the feature map scaled by a gate computed from its global average."""
        gate = self.conv(self.conv(self.node("GlobalAveragePool", [x], "gap"), channels, squeezed, 1, act="silu"),
                         squeezed, channels, 1, act=None)
        return self.node("Mul", [x, self.node("Sigmoid", [gate], "gate")], "scale")

    def head(self, x: str, channels: int, classes: int = 1000) -> str:
        flat = self.node("Flatten", [self.node("GlobalAveragePool", [x], "gap")], "flat", axis=1)
        weight = self.const(self.rng.standard_normal((classes, channels)) * 0.05)
        return self.graph.node("Gemm", [flat, weight, self.const(np.zeros(classes), "b")], "logits", transB=1)

    def model(self, name: str, batch: int, size: int, output: str = "logits",
              output_shape: tuple[int, ...] = (1000,)) -> onnx.ModelProto:
        self.graph.name = name
        self.graph.input("input", [batch, 3, size, size])
        self.graph.output(output, [batch, *output_shape])
        return self.graph.model(check=True)


def resnet18(batch: int = 1, size: int = 224) -> onnx.ModelProto:
    b = _Layers(0)
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
    b = _Layers(1)
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


def efficientnet_block(batch: int = 1, size: int = 32) -> onnx.ModelProto:
    """An EfficientNet stem and MBConv block: SiLU activations and a squeeze-excitation around a depthwise conv."""
    b = _Layers(3)
    x = b.conv("input", 3, 32, 3, 2, act="silu")
    y = b.conv(b.conv(x, 32, 96, 1, act="silu"), 96, 96, 3, group=96, act="silu")
    x = b.conv(b.squeeze_excitation(y, 96, 8), 96, 32, 1, act=None)
    b.head(b.conv(x, 32, 128, 1, act="silu"), 128, classes=10)
    return b.model("efficientnet_block", batch, size, output_shape=(10,))


def mobilenetv3_block(batch: int = 1, size: int = 32) -> onnx.ModelProto:
    """A MobileNetV3 stem and inverted residual block: hard-swish activations around a depthwise conv."""
    b = _Layers(4)
    x = b.conv("input", 3, 16, 3, 2, act="hardswish")
    y = b.conv(b.conv(x, 16, 64, 1, act="hardswish"), 64, 64, 3, group=64, act="hardswish")
    x = b.node("Add", [x, b.conv(y, 64, 16, 1, act=None)], "add")
    b.head(b.conv(x, 16, 96, 1, act="hardswish"), 96, classes=10)
    return b.model("mobilenetv3_block", batch, size, output_shape=(10,))


def small_cnn(batch: int = 1, size: int = 16, head: bool = False) -> onnx.ModelProto:
    """Two convs (+ a classifier head with head=True): models that share their conv layers."""
    b = _Layers(2)
    x = b.conv(b.conv("input", 3, 16, 3), 16, 16, 3)
    if head:
        return b.model("small_cnn_head", batch, size, b.head(x, 16, classes=10), (10,))
    return b.model("small_cnn", batch, size, x, (16, size, size))


MODELS = {"resnet18": resnet18, "mobilenetv2": mobilenetv2}


def op_chain(path: Path, ops: list[str]) -> Path:
    """x[1, 4] through `ops` in a row, each node named <op in lower case>_<position>."""
    b = GraphBuilder("g")
    previous = b.input("x", [1, 4])
    for index, op in enumerate(ops):
        previous = b.node(op, [previous], f"t{index}", name=f"{op.lower()}_{index}")
    b.output(previous, [1, 4])
    return b.save(path)


def conv_bn_model(path: Path) -> Path:
    """Conv -> BatchNormalization -> Relu -> Gemm-free head, random but fixed weights."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("conv_bn", ir_version=8)
    x = b.input("input", ["batch", 1, 8, 8])
    weight = b.const(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    bias = b.const(rng.standard_normal(4).astype(np.float32), "b")
    norm = [b.const(rng.uniform(0.5, 2, 4).astype(np.float32), "gamma"),
            b.const(rng.standard_normal(4).astype(np.float32), "beta"),
            b.const(rng.standard_normal(4).astype(np.float32), "mean"),
            b.const(rng.uniform(0.5, 2, 4).astype(np.float32), "var")]
    conv = b.node("Conv", [x, weight, bias], "conv", name="conv", pads=[1, 1, 1, 1])
    bn = b.node("BatchNormalization", [conv, *norm], "bn", name="bn", epsilon=1e-3)
    b.output(b.node("Relu", [bn], "out", name="relu"), ["batch", 4, 8, 8])
    return b.save(path)


def no_quantizable_model(path: Path) -> Path:
    b = GraphBuilder("plain", ir_version=8)
    b.output(b.node("Sigmoid", [b.input("input", ["batch", 4])], "out", name="sigmoid"), ["batch", 4])
    return b.save(path)


RELU1 = "/features/features.2/Relu_output_0"
OUTLIER = 100.0  # the injected values reach this many times the tensor's normal maximum
RARE = 12  # calibration elements that take the injected values


def outlier_cnn(path: Path, calib: np.ndarray) -> Path:
    """The digits CNN with an outlier activation injected after the first Relu.

    A 1x1 Conv + Relu ("inject", "inject_relu") passes the first Relu's channels through, but for one channel c
    computes M x max(relu1_c - t, 0), with t the value only RARE of the calibration data's elements of that
    channel exceed: a handful of values OUTLIER x the tensor's normal maximum set its range, as outlier
    activations do. The next conv reads channel c divided by M, so the float model loses only channel c's
    values below t.
    """
    import onnx
    from onnx import helper, numpy_helper

    from kiln.testing.reference import onnxruntime_outputs

    model = onnx.load(str(DIGITS_CNN))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_empty_tensor_value_info(RELU1))
    relu = onnxruntime_outputs(probe, {"input": calib}, outputs=[RELU1])[0]
    channels = relu.shape[1]
    c = int(np.argmax(relu.max(axis=(0, 2, 3))))
    values = np.sort(relu[:, c].ravel())
    threshold = float(values[-RARE - 1])
    scale = OUTLIER * float(relu.max()) / (float(values[-1]) - threshold)
    weight = np.eye(channels, dtype=np.float32)
    weight[c, c] = scale
    bias = np.zeros(channels, np.float32)
    bias[c] = -scale * threshold
    model.graph.initializer.extend([numpy_helper.from_array(weight[:, :, None, None], "inject_weight"),
                                    numpy_helper.from_array(bias, "inject_bias")])
    consumer = next(node for node in model.graph.node if RELU1 in node.input)
    next_weight = next(t for t in model.graph.initializer if t.name == consumer.input[1])
    restored = numpy_helper.to_array(next_weight).copy()
    restored[:, c] /= scale
    next_weight.CopyFrom(numpy_helper.from_array(restored, next_weight.name))
    for node in model.graph.node:
        node.input[:] = ["outlier" if name == RELU1 else name for name in node.input]
    index = next(i for i, node in enumerate(model.graph.node) if RELU1 in node.output)
    model.graph.node.insert(index + 1, helper.make_node("Conv", [RELU1, "inject_weight", "inject_bias"],
                                                        ["injected"], name="inject"))
    model.graph.node.insert(index + 2, helper.make_node("Relu", ["injected"], ["outlier"], name="inject_relu"))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
