"""The MXNet op table: every MXNet op kiln converts, by the name the symbol JSON records, to its converter."""

from __future__ import annotations

from kiln.compiler.frontends.mxnet import ops_array as array
from kiln.compiler.frontends.mxnet import ops_detection as detection
from kiln.compiler.frontends.mxnet import ops_nn as nn
from kiln.compiler.frontends.mxnet import ops_tensor as t

# Training heads whose second input is a label: unused at inference, so it needs no value.
LABEL_INPUTS = {"SoftmaxOutput": 1}

_ARITHMETIC = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}
_COMPARISONS = {"equal": "Equal", "not_equal": "NotEqual", "greater": "Greater", "greater_equal": "GreaterOrEqual",
                "lesser": "Less", "lesser_equal": "LessOrEqual"}
_EXTREMA = {"maximum": "Max", "minimum": "Min"}
_MOD = {"mod": "Mod"}  # MXNet's mod, not ONNX's: see ops_tensor._mod

OPS = {
    # layers
    "Convolution": nn.convolution,
    "Deconvolution": nn.deconvolution,
    "FullyConnected": nn.fully_connected,
    "BatchNorm": nn.batch_norm,
    "Activation": nn.activation,
    "LeakyReLU": nn.leaky_relu,
    "Pooling": nn.pooling,
    "Dropout": nn.dropout,
    "softmax": nn.softmax,
    "log_softmax": nn.log_softmax,
    "SoftmaxOutput": nn.softmax_output,
    "UpSampling": nn.upsampling,
    "Embedding": nn.embedding,
    "_contrib_AdaptiveAvgPooling2D": nn.adaptive_avg_pooling,
    "_contrib_BilinearResize2D": nn.bilinear_resize,
    # shapes and data movement
    "Flatten": t.flatten,
    "Concat": t.concat,
    "Reshape": t.reshape,
    "transpose": t.transpose,
    "expand_dims": t.expand_dims,
    "squeeze": t.squeeze,
    "slice": t.slice_,
    "slice_axis": t.slice_axis,
    "take": t.take,
    "where": t.where,
    "clip": t.clip,
    "_copy": t.identity,
    "identity": t.identity,
    "add_n": t.add_n,
    "BlockGrad": t.identity,
    "Cast": array.cast,
    # creating, repeating, splitting and gathering arrays
    "_arange": array.arange,
    "zeros_like": array.zeros_like,
    "ones_like": array.ones_like,
    "shape_array": array.shape_array,
    "tile": array.tile,
    "repeat": array.repeat,
    "SliceChannel": array.split,
    "reverse": array.reverse,
    "stack": array.stack,
    "broadcast_axis": array.broadcast_axis,
    "slice_like": array.slice_like,
    "gather_nd": array.gather_nd,
    "topk": array.topk,
    # detection
    "_contrib_box_decode": detection.box_decode,
    "_contrib_ROIAlign": detection.roi_align,
    "_contrib_box_nms": detection.box_nms,
    # reductions
    "sum": t.reduction("ReduceSum"),
    "mean": t.reduction("ReduceMean"),
    "max": t.reduction("ReduceMax"),
    "min": t.reduction("ReduceMin"),
    "prod": t.reduction("ReduceProd"),
    # element-wise, broadcast and scalar arithmetic and comparisons
    **{f"elemwise_{name}": t.binary(op) for name, op in _ARITHMETIC.items()},
    **{f"broadcast_{name}": t.binary(op) for name, op in _ARITHMETIC.items()},
    **{f"broadcast_{name}": t.binary(op) for name, op in {**_COMPARISONS, **_EXTREMA, **_MOD}.items()},
    **{f"_{name}": t.binary(op) for name, op in {**_COMPARISONS, **_EXTREMA, **_MOD}.items()},
    "_power": t.binary("Pow"),
    "broadcast_power": t.binary("Pow"),
    "_plus_scalar": t.scalar("Add"),
    "_minus_scalar": t.scalar("Sub"),
    "_rminus_scalar": t.scalar("Sub", reverse=True),
    "_mul_scalar": t.scalar("Mul"),
    "_div_scalar": t.scalar("Div"),
    "_rdiv_scalar": t.scalar("Div", reverse=True),
    "_power_scalar": t.scalar("Pow"),
    "_rpower_scalar": t.scalar("Pow", reverse=True),
    "_maximum_scalar": t.scalar("Max"),
    "_minimum_scalar": t.scalar("Min"),
    "_mod_scalar": t.scalar("Mod"),
    "_rmod_scalar": t.scalar("Mod", reverse=True),
    **{f"_{name}_scalar": t.scalar(op) for name, op in _COMPARISONS.items()},
    # element-wise math
    "relu": t.unary("Relu"),
    "sigmoid": t.unary("Sigmoid"),
    "tanh": t.unary("Tanh"),
    "exp": t.unary("Exp"),
    "log": t.unary("Log"),
    "sqrt": t.unary("Sqrt"),
    "abs": t.unary("Abs"),
    "negative": t.unary("Neg"),
    "floor": t.unary("Floor"),
    "ceil": t.unary("Ceil"),
    "reciprocal": t.unary("Reciprocal"),
    "erf": t.unary("Erf"),
    "square": t.square,
    "rsqrt": t.rsqrt,
}
