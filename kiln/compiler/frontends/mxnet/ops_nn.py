"""Converters for MXNet's neural-network layers: one small function per MXNet op.

Each takes the graph builder, the ONNX names of the node's inputs and its typed attributes, emits
ONNX nodes, and returns the name(s) of the node's output(s).
"""

from __future__ import annotations

import math

import numpy as np

from kiln.compiler.frontends.mxnet.attrs import Attrs, Unsupported
from kiln.compiler.frontends.mxnet.builder import GraphBuilder
from kiln.errors import InputError

_CHANNEL_FIRST_LAYOUTS = ("None", "NCW", "NCHW", "NCDHW")


def _spatial(a: Attrs, key: str, rank: int, default: int) -> tuple[int, ...]:
    return a.ints(key, ()) or (default,) * rank


def _check_layout(a: Attrs) -> None:
    layout = a.str("layout", "None")
    if layout not in _CHANNEL_FIRST_LAYOUTS:
        raise Unsupported(f"layout={layout}")


def _window(a: Attrs, kernel: tuple[int, ...]) -> dict:
    rank = len(kernel)
    return {"kernel_shape": kernel, "strides": _spatial(a, "stride", rank, 1),
            "pads": _spatial(a, "pad", rank, 0) * 2}


def _check_parameters(g: GraphBuilder, x: list[str], shapes: tuple[tuple[int, ...], ...], meaning: str) -> None:
    """Refuse a weight or bias from the .params file whose shape is not what the op's attributes and input
    make it: shape inference would fail later without naming the parameter."""
    for name, expected in zip(x[1:], shapes):
        array = g.array(name)
        if array is not None and array.shape != expected:
            raise InputError(f"{g.scope}: parameter {name!r} has shape {'x'.join(map(str, array.shape))} in the "
                             f".params file, but this op needs {'x'.join(map(str, expected))} ({meaning}); the "
                             ".params file does not match the symbol: export both from the same model")


def convolution(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    _check_layout(a)
    kernel = a.ints("kernel")
    inputs = x[:2] if a.bool("no_bias", False) else x[:3]
    # Input channels are left to shape inference: knowing them here would run it once per convolution
    weight, filters = g.array(x[1]), a.int("num_filter")
    channels = weight.shape[1] if weight is not None and weight.ndim > 1 else 1
    _check_parameters(g, inputs, ((filters, channels, *kernel), (filters,)),
                      f"num_filter {filters}, kernel {'x'.join(map(str, kernel))}")
    return g.op("Conv", inputs, dilations=_spatial(a, "dilate", len(kernel), 1), group=a.int("num_group", 1),
                **_window(a, kernel))


def deconvolution(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    _check_layout(a)
    kernel = a.ints("kernel")
    rank = len(kernel)
    window = _window(a, kernel)
    dilations = _spatial(a, "dilate", rank, 1)
    output_padding = _spatial(a, "adj", rank, 0)
    target = a.ints("target_shape", ())
    if any(target):  # MXNet then derives pad and adj from the target size and ignores the given ones
        sizes = g.shape(x[0])[2:]
        total = [s * (n - 1) + (k - 1) * d + 1 - t
                 for s, n, k, d, t in zip(window["strides"], sizes, kernel, dilations, target)]
        window["pads"] = tuple((t + 1) // 2 for t in total) * 2
        output_padding = tuple(t % 2 for t in total)
    inputs = x[:2] if a.bool("no_bias", True) else x[:3]
    return g.op("ConvTranspose", inputs, dilations=dilations, group=a.int("num_group", 1),
                output_padding=output_padding, **window)


def fully_connected(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    weights_and_bias = x[1:2] if a.bool("no_bias", False) else x[1:3]
    hidden, shape = a.int("num_hidden"), g.shape(x[0])
    features = math.prod(shape[1:]) if a.bool("flatten", True) else shape[-1]
    _check_parameters(g, [x[0], *weights_and_bias], ((hidden, features), (hidden,)),
                      f"num_hidden {hidden}, {features} input features")
    if a.bool("flatten", True):
        return g.op("Gemm", [g.op("Flatten", [x[0]], axis=1)] + weights_and_bias, transB=1)
    product = g.op("MatMul", [x[0], g.op("Transpose", [x[1]], perm=(1, 0))])
    return product if a.bool("no_bias", False) else g.op("Add", [product, x[2]])


def batch_norm(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    data, gamma, beta, mean, variance = x[:5]
    if a.bool("fix_gamma", True):
        gamma = g.const(np.ones(g.shape(gamma)), g.dtype(gamma))
    epsilon, axis = a.float("eps", 1e-3), a.int("axis", 1)
    if axis == 1:
        return g.op("BatchNormalization", [data, gamma, beta, mean, variance], epsilon=epsilon)
    rank = len(g.shape(data))
    axis %= rank
    # ONNX normalises axis 1 only: spell the inference formula out with parameters shaped to broadcast.
    shape = g.ints([-1] + [1] * (rank - 1 - axis))
    gamma, beta, mean, variance = (g.op("Reshape", [p, shape]) for p in (gamma, beta, mean, variance))
    scale = g.op("Div", [gamma, g.op("Sqrt", [g.op("Add", [variance, g.const_like(epsilon, variance)])])])
    return g.op("Add", [g.op("Mul", [g.op("Sub", [data, mean]), scale]), beta])


_ACTIVATIONS = {
    "relu": lambda g, x: g.op("Relu", [x]),
    "sigmoid": lambda g, x: g.op("Sigmoid", [x]),
    "tanh": lambda g, x: g.op("Tanh", [x]),
    "softrelu": lambda g, x: g.op("Softplus", [x]),
    "softsign": lambda g, x: g.op("Softsign", [x]),
}


def activation(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    act_type = a.str("act_type")
    if act_type not in _ACTIVATIONS:
        raise Unsupported(f"act_type={act_type}")
    return _ACTIVATIONS[act_type](g, x[0])


def _gelu(g: GraphBuilder, x: str) -> str:
    erf = g.op("Erf", [g.op("Mul", [x, g.const_like(1 / math.sqrt(2), x)])])
    return g.op("Mul", [g.op("Mul", [x, g.const_like(0.5, x)]), g.op("Add", [erf, g.const_like(1.0, x)])])


def leaky_relu(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    act_type, slope = a.str("act_type", "leaky"), a.float("slope", 0.25)
    if act_type == "leaky":
        return g.op("LeakyRelu", [x[0]], alpha=slope)
    if act_type == "rrelu":  # at inference the slope is the middle of its range
        return g.op("LeakyRelu", [x[0]], alpha=(a.float("lower_bound", 0.125) + a.float("upper_bound", 0.334)) / 2)
    if act_type == "prelu":  # gamma has one slope per channel (axis 1)
        rank = len(g.shape(x[0]))
        return g.op("PRelu", [x[0], g.op("Reshape", [x[1], g.ints([-1] + [1] * (rank - 2))])])
    if act_type == "elu":
        return g.op("Elu", [x[0]], alpha=slope)
    if act_type == "selu":
        return g.op("Selu", [x[0]])
    if act_type == "gelu":
        return _gelu(g, x[0])
    raise Unsupported(f"act_type={act_type}")


def pooling(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    _check_layout(a)
    pool_type = a.str("pool_type", "max")
    if a.bool("global_pool", False):
        return _global_pooling(g, x[0], pool_type)
    convention = a.str("pooling_convention", "valid")
    if convention not in ("valid", "full"):
        raise Unsupported(f"pooling_convention={convention}")
    kernel = a.ints("kernel")
    window = {**_window(a, kernel), "ceil_mode": int(convention == "full")}
    if pool_type == "max":
        return g.op("MaxPool", [x[0]], **window)
    if pool_type == "avg":
        include_pad = a.optional_bool("count_include_pad") is not False
        return g.op("AveragePool", [x[0]], count_include_pad=int(include_pad), **window)
    if pool_type == "sum":
        average = g.op("AveragePool", [x[0]], count_include_pad=1, **window)
        return g.op("Mul", [average, g.const_like(float(np.prod(kernel)), x[0])])
    raise Unsupported(f"pool_type={pool_type}")


def _global_pooling(g: GraphBuilder, x: str, pool_type: str) -> str:
    if pool_type == "max":
        return g.op("GlobalMaxPool", [x])
    if pool_type == "avg":
        return g.op("GlobalAveragePool", [x])
    if pool_type == "sum":
        return g.op("ReduceSum", [x, g.ints(range(2, len(g.shape(x))))], keepdims=1)
    raise Unsupported(f"pool_type={pool_type}")


def dropout(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    if a.str("mode", "training") == "always" and a.float("p", 0.5) > 0:
        raise Unsupported("mode=always (dropout at inference)")
    return g.op("Identity", [x[0]])


def softmax(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    if a.bool("use_length", False):
        raise Unsupported("use_length=True")
    return g.op("Softmax", [_with_temperature(g, x[0], a)], axis=a.int("axis", -1))


def log_softmax(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.op("LogSoftmax", [_with_temperature(g, x[0], a)], axis=a.int("axis", -1))


def _with_temperature(g: GraphBuilder, x: str, a: Attrs) -> str:
    temperature = a.optional_float("temperature")
    return x if temperature in (None, 1.0) else g.op("Div", [x, g.const_like(temperature, x)])


def softmax_output(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """The training head: at inference a softmax; its label input (x[1]) is unused."""
    if a.bool("preserve_shape", False):
        return g.op("Softmax", [x[0]], axis=-1)
    if a.bool("multi_output", False) or len(g.shape(x[0])) == 2:
        return g.op("Softmax", [x[0]], axis=1)
    rows = g.op("Softmax", [g.op("Flatten", [x[0]], axis=1)], axis=1)
    return g.op("Reshape", [rows, g.op("Shape", [x[0]])])


def upsampling(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    sample_type = a.str("sample_type")
    if sample_type != "nearest":
        raise Unsupported(f"sample_type={sample_type}")
    if a.int("num_args", 1) != 1:
        raise Unsupported("num_args>1")
    scale = float(a.int("scale"))
    return g.op("Resize", [x[0], "", g.const([1.0, 1.0, scale, scale])], mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def embedding(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    return g.op("Gather", [x[1], g.cast(x[0], "int64")], axis=0)


def adaptive_avg_pooling(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """_contrib_AdaptiveAvgPooling2D: output cell i averages input rows floor(i * H / h) to ceil((i + 1) * H / h),
    MXNet's bins (which overlap when h does not divide H); as two matrix products, one per spatial axis."""
    sizes = a.ints("output_size", ())
    if len(sizes) > 2:
        raise ValueError(f"output_size={sizes} has more than two sizes")
    height, width = g.shape(x[0])[2:]
    out_height, out_width = (sizes * 2)[:2] if sizes else (1, 1)  # one size is both
    rows, columns = _bin_means(height, out_height), _bin_means(width, out_width)
    pooled_columns = g.op("MatMul", [x[0], g.const(columns.T, g.dtype(x[0]))])
    return g.op("MatMul", [g.const(rows, g.dtype(x[0])), pooled_columns])


def _bin_means(size: int, bins: int) -> np.ndarray:
    """The (bins, size) matrix whose row i averages MXNet's adaptive pooling bin i."""
    if bins < 1:
        raise ValueError(f"output size {bins}")
    matrix = np.zeros((bins, size))
    for i in range(bins):
        start, end = (i * size) // bins, -((-(i + 1) * size) // bins)
        matrix[i, start:end] = 1 / (end - start)
    return matrix


_RESIZE_MODES = {
    "to_even_down": lambda n: n - n % 2,
    "to_even_up": lambda n: n + n % 2,
    "to_odd_down": lambda n: n - 1 + n % 2,
    "to_odd_up": lambda n: n + 1 - n % 2,
}


def bilinear_resize(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """_contrib_BilinearResize2D: MXNet's output size for each mode, then ONNX Resize; MXNet's align_corners=False
    maps output pixel centres as half_pixel does, its True (the default) as align_corners does."""
    shape = g.shape(x[0])
    sizes = _resized(a, shape[2:], g.shape(x[1])[2:] if len(x) > 1 else None)
    transform = "align_corners" if a.bool("align_corners", True) else "half_pixel"
    return g.op("Resize", [x[0], "", "", g.ints(shape[:2] + sizes)], mode="linear",
                coordinate_transformation_mode=transform)


def _resized(a: Attrs, spatial: tuple[int, int], like: tuple[int, int] | None) -> tuple[int, int]:
    mode = a.str("mode", "size")
    if mode in _RESIZE_MODES:
        return tuple(_RESIZE_MODES[mode](n) for n in spatial)
    if mode == "like":
        if like is None:
            raise ValueError("mode=like without a second input")
        return like
    scales = (a.optional_float("scale_height"), a.optional_float("scale_width"))
    if mode == "size" and scales == (None, None):
        return a.int("height", 1), a.int("width", 1)
    if mode not in ("size", "odd_scale"):
        raise Unsupported(f"mode={mode}")
    if None in scales:  # MXNet itself fails on a missing scale
        raise Unsupported(f"mode={mode} without both scale_height and scale_width")
    # MXNet multiplies in float32 and truncates; odd_scale keeps an odd size's last pixel.
    kept = [n % 2 if mode == "odd_scale" else 0 for n in spatial]
    return tuple(int(np.float32(n - k) * np.float32(s)) + k for n, k, s in zip(spatial, kept, scales))
