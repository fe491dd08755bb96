"""Graph -> Graph passes, run on every neural graph in this order, whatever its precision."""

from __future__ import annotations

import dataclasses

from kiln.compiler.graph import Graph, GraphKind
from kiln.compiler.onnx_graph import infer_shapes
from kiln.compiler.passes.fold_batchnorm import fold_batchnorm
from kiln.compiler.passes.batchnorm_training import batchnorm_training
from kiln.compiler.passes.arg_extremes import arg_extremes
from kiln.compiler.passes.blocked_quantize import blocked_quantize
from kiln.compiler.passes.center_crop_pad import center_crop_pad
from kiln.compiler.passes.col2im import col2im
from kiln.compiler.passes.conv_padding import conv_padding
from kiln.compiler.passes.conv_transpose import conv_transpose
from kiln.compiler.passes.converter_gaps import converter_gaps
from kiln.compiler.passes.cumprod import unroll_cumprod
from kiln.compiler.passes.det import expand_det
from kiln.compiler.passes.dilated_conv import dilated_conv
from kiln.compiler.passes.dropout import inference_dropout
from kiln.compiler.passes.empty_reductions import empty_reductions
from kiln.compiler.passes.fold_constants import fold_constants
from kiln.compiler.passes.function_expansion import expand_functions
from kiln.compiler.passes.index_bounds import index_bounds
from kiln.compiler.passes.integer_conv import integer_conv
from kiln.compiler.passes.lp_normalization import lp_normalization
from kiln.compiler.passes.maxpool_indices import maxpool_indices
from kiln.compiler.passes.name_nodes import name_nodes
from kiln.compiler.passes.narrow_types import narrow_types
from kiln.compiler.passes.nms_defaults import nms_defaults
from kiln.compiler.passes.onehot import onehot
from kiln.compiler.passes.pow_types import pow_types
from kiln.compiler.passes.qlinear_matmul import qlinear_matmul
from kiln.compiler.passes.recurrent import unroll_recurrent
from kiln.compiler.passes.resize_axes import resize_axes
from kiln.compiler.passes.resize_exact import resize_exact
from kiln.compiler.passes.reverse_sequence import reverse_sequence
from kiln.compiler.passes.roi_align_max import roi_align_max
from kiln.compiler.passes.roi_align_scale import roi_align_scale
from kiln.compiler.passes.scan import unroll_scan
from kiln.compiler.passes.spectral import spectral
from kiln.compiler.passes.tensor_scatter import tensor_scatter
from kiln.compiler.passes.tfidf_vectorizer import tfidf_vectorizer
from kiln.compiler.passes.tree_ensemble import tree_ensemble
from kiln.compiler.passes.topk_unsigned import topk_unsigned

# Names first, so an unnamed node keeps the name its place in the source model gives it; ops TVM cannot convert
# expanded into their ONNX function bodies next, before folding, which folds what the bodies compute from shapes;
# narrow types (float8, int4, ...) moved to their carriers after that (a body's Cast to float8 included), before
# folding meets them;
# constants folded before Scan is unrolled (folding makes its length static), and both before LSTM / GRU / RNN are
# unrolled, so that weights computed from constants are cut at compile time (and the static shapes folding infers
# serve), before BatchNorm folding, which needs its parameters (Constant nodes in some exports) as initializers,
# and before conv padding is made explicit, which needs a Pad's amounts as constants;
# training-mode BatchNorm written out before BatchNorm folding, which would fold its given statistics; RoiAlign's
# max mode before its scale becomes a Mul, whose output has no shape yet;
# transposed and dilated convs rewritten to ordinary ones after BatchNorm folding, which folds into the conv right
# before it; index bounds once the tables a Gather reads are initializers, OneHot once its depth and values are,
# Resize's axes once its scales / sizes / roi are (then the Resizes TVM computes otherwise, written exactly),
# reductions over empty axes once their axes are, CumProd once its axis is, CenterCropPad once its shape is,
# Col2Im once its shapes are, Dropout once its ratio and training_mode are, DFT / STFT / MelWeightMatrix once their
# parameters are, the converters' gaps (bool ReduceMax / ReduceMin, Split's empty parts, ...) once Split's sizes
# are and after reductions over empty axes are rewritten. TensorScatter, ReverseSequence and Det (static shapes
# only), RoiAlign's scale, NonMaxSuppression's defaults, Pow's types, QLinearMatMul, LpNormalization, uint64 TopK,
# TfIdfVectorizer, ai.onnx.ml's TreeEnsemble (static shapes only), QLinearConv / ConvInteger, blocked
# QuantizeLinear / DequantizeLinear (the narrow types' already moved by then) and MaxPool's Indices (static shapes
# only) have no order. ArgMax / ArgMin clamped last, those the passes wrote (MaxPool's Indices) included.
NEURAL_PASSES = (name_nodes, expand_functions, narrow_types, fold_constants, unroll_scan, unroll_recurrent,
                 conv_padding, batchnorm_training, fold_batchnorm, conv_transpose, dilated_conv, roi_align_max,
                 roi_align_scale, nms_defaults, index_bounds, onehot, resize_axes, resize_exact, empty_reductions,
                 pow_types, qlinear_matmul, unroll_cumprod, center_crop_pad, col2im, lp_normalization,
                 inference_dropout, tensor_scatter, reverse_sequence, expand_det, converter_gaps, spectral,
                 topk_unsigned, tfidf_vectorizer, tree_ensemble, integer_conv, blocked_quantize, maxpool_indices,
                 arg_extremes)


def run_passes(graph: Graph) -> Graph:
    """`graph` after NEURAL_PASSES (tree graphs have no passes), then ONNX's shape inference again where they
    changed it: calibration ranges only the float tensors it finds typed, so the values the passes wrote (a
    sub-pixel or space-to-batch conv's output) stayed float in INT8."""
    if graph.kind is not GraphKind.NEURAL:
        return graph
    source = graph
    for step in NEURAL_PASSES:
        graph = step(graph)
    return graph if graph is source else dataclasses.replace(graph, body=infer_shapes(graph.body))
