"""Models for the quantization tests, made from the trained digits CNN with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import DIGITS_CNN

RELU1 = "/features/features.2/Relu_output_0"
OUTLIER = 100.0  # the injected values reach this many times the tensor's normal maximum


def outlier_cnn(path: Path, calib: np.ndarray) -> Path:
    """The digits CNN with an outlier activation injected after the first Relu.

    t = relu1 * M, then relu1' = t / M feeds the next conv, so the float model computes exactly what
    the original does. M is 1 except at one element that is rarely non-zero in the calibration data,
    where it scales the largest value seen to OUTLIER x the tensor's normal maximum: t's range is set by a handful of huge values, as outlier activations do.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(DIGITS_CNN))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_empty_tensor_value_info(RELU1))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    relu = session.run([RELU1], {"input": calib})[0]
    active = (relu > 0).mean(axis=0)  # [16, 8, 8]: how often each element is non-zero
    rare = np.where((active > 0) & (active <= 0.02), active, np.inf)
    element = np.unravel_index(int(np.argmin(rare)), rare.shape)
    mask = np.ones((1,) + relu.shape[1:], np.float32)
    mask[(0,) + element] = OUTLIER * relu.max() / relu[(slice(None),) + element].max()
    model.graph.initializer.extend([numpy_helper.from_array(mask, "outlier_mask"),
                                    numpy_helper.from_array((1.0 / mask).astype(np.float32), "outlier_unmask")])
    for node in model.graph.node:
        node.input[:] = ["outlier_restored" if name == RELU1 else name for name in node.input]
    index = next(i for i, node in enumerate(model.graph.node) if RELU1 in node.output)
    model.graph.node.insert(index + 1, helper.make_node("Mul", [RELU1, "outlier_mask"], ["outlier"], name="inject"))
    model.graph.node.insert(index + 2, helper.make_node("Mul", ["outlier", "outlier_unmask"], ["outlier_restored"],
                                                        name="restore"))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def conv_bn_model(path: Path) -> Path:
    """Conv -> BatchNormalization -> Relu -> Gemm-free head, random but fixed weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "mean"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "var")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"], name="bn",
                              epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["out"], name="relu")]
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def no_quantizable_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Sigmoid", ["input"], ["out"], name="sigmoid")], "plain",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
