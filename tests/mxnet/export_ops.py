"""Export one small MXNet symbol per op case, with its parameters, inputs and MXNet's outputs.

Runs inside the side virtualenv: `.venv-mxnet/bin/python tests/mxnet/export_ops.py OUT_DIR`.
OUT_DIR/CASE/ receives model-symbol.json, model-0000.params (arg:/aux: prefixed, as Gluon's
`export` writes them) and reference.npz (one array per input, then `output`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# MKL-DNN cannot run Deconvolution with target_shape ("could not create a descriptor"); the plain
# CPU kernels compute every case.
os.environ["MXNET_MKLDNN_ENABLED"] = "0"
import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

S = mx.sym
X, Y = S.var("x"), S.var("y")
IMAGE, MATRIX = (2, 4, 6, 6), (3, 4)


def conv(**kw):
    return S.Convolution(X, name="op", **kw)


CASES = {
    # name: (symbol, {input: shape})
    "conv_groups_dilation": (conv(kernel=(3, 3), num_filter=8, num_group=2, dilate=(2, 2), pad=(2, 2)), {"x": IMAGE}),
    "conv_stride_no_bias": (conv(kernel=(3, 3), num_filter=3, stride=(2, 2), no_bias=True), {"x": IMAGE}),
    "conv1d": (conv(kernel=(3,), num_filter=3, pad=(1,)), {"x": (2, 4, 7)}),
    "deconv_adj": (S.Deconvolution(X, kernel=(3, 3), num_filter=3, stride=(2, 2), pad=(1, 1), adj=(1, 1),
                                   no_bias=False, name="op"), {"x": IMAGE}),
    "deconv_target_shape": (S.Deconvolution(X, kernel=(4, 4), num_filter=2, stride=(2, 2), target_shape=(13, 13),
                                            name="op"), {"x": IMAGE}),
    "fc_flatten": (S.FullyConnected(X, num_hidden=5, name="op"), {"x": IMAGE}),
    "fc_no_flatten": (S.FullyConnected(X, num_hidden=5, flatten=False, name="op"), {"x": (2, 3, 4)}),
    "fc_no_bias": (S.FullyConnected(X, num_hidden=5, no_bias=True, name="op"), {"x": MATRIX}),
    "bn_fix_gamma": (S.BatchNorm(X, name="op"), {"x": IMAGE}),
    "bn_global_stats": (S.BatchNorm(X, fix_gamma=False, use_global_stats=True, eps=1e-5, name="op"), {"x": IMAGE}),
    "bn_last_axis": (S.BatchNorm(X, fix_gamma=False, axis=-1, name="op"), {"x": (2, 3, 5)}),
    **{f"act_{t}": (S.Activation(X, act_type=t), {"x": IMAGE})
       for t in ("relu", "sigmoid", "tanh", "softrelu", "softsign")},
    **{f"leaky_{t}": (S.LeakyReLU(X, act_type=t, slope=0.3, name="op"), {"x": IMAGE})
       for t in ("leaky", "prelu", "elu", "selu", "gelu")},
    "pool_max_full": (S.Pooling(X, kernel=(3, 3), stride=(2, 2), pool_type="max", pooling_convention="full"),
                      {"x": (1, 2, 8, 8)}),
    "pool_avg_pad": (S.Pooling(X, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="avg"), {"x": IMAGE}),
    "pool_avg_exclude_pad": (S.Pooling(X, kernel=(3, 3), pad=(1, 1), pool_type="avg", count_include_pad=False),
                             {"x": IMAGE}),
    "pool_sum": (S.Pooling(X, kernel=(2, 2), stride=(2, 2), pool_type="sum"), {"x": IMAGE}),
    **{f"pool_global_{t}": (S.Pooling(X, kernel=(1, 1), global_pool=True, pool_type=t), {"x": IMAGE})
       for t in ("max", "avg", "sum")},
    "flatten": (S.Flatten(X), {"x": IMAGE}),
    "concat": (S.Concat(X, Y, dim=1), {"x": IMAGE, "y": IMAGE}),
    **{f"elemwise_{n}": (getattr(S, f"elemwise_{n}")(X, Y), {"x": MATRIX, "y": MATRIX})
       for n in ("add", "sub", "mul", "div")},
    **{f"broadcast_{n}": (getattr(S, f"broadcast_{n}")(X, Y), {"x": MATRIX, "y": (1, 4)})
       for n in ("add", "sub", "mul", "div", "maximum", "minimum", "equal", "not_equal", "greater",
                 "greater_equal", "lesser", "lesser_equal")},
    "compare_elemwise": (S.Group([X > Y, X <= Y, X == Y, X != Y]), {"x": MATRIX, "y": MATRIX}),
    "scalar_ops": (S.Group([X + 1.5, X - 2, 3 - X, X * 2, X / 4, 2 / X, X ** 2, 2 ** X, S.maximum(X, 0.1),
                            S.minimum(X, 0.2), X > 0.1, X < 0.1, X == 1, X != 1, X >= 0, X <= 0]), {"x": MATRIX}),
    "reshape_codes": (S.Reshape(X, shape=(0, -3, -2)), {"x": (2, 3, 4, 5)}),
    "reshape_split": (S.Reshape(X, shape=(-4, 1, -1, -2)), {"x": (2, 3, 4)}),
    "reshape_infer": (S.Reshape(X, shape=(-1, 0), reverse=True), {"x": (2, 3, 4)}),
    "transpose": (S.transpose(X, axes=(0, 2, 3, 1)), {"x": IMAGE}),
    "transpose_default": (S.transpose(X), {"x": (2, 3, 4)}),
    "clip": (S.clip(X, -0.5, 0.5), {"x": MATRIX}),
    "softmax": (S.softmax(X, axis=1), {"x": IMAGE}),
    "softmax_temperature": (S.softmax(X, temperature=2.0), {"x": MATRIX}),
    "log_softmax": (S.log_softmax(X), {"x": MATRIX}),
    "softmax_output": (S.SoftmaxOutput(X, name="softmax"), {"x": MATRIX}),
    "softmax_output_4d": (S.SoftmaxOutput(X, name="softmax"), {"x": IMAGE}),
    "dropout": (S.Dropout(X, p=0.5), {"x": MATRIX}),
    "slice": (S.slice(X, begin=(0, 1, None), end=(None, 3, -1)), {"x": (2, 4, 5)}),
    "slice_step": (S.slice(X, begin=(None, 3), end=(None, 0), step=(1, -2)), {"x": (2, 4)}),
    "slice_axis": (S.slice_axis(X, axis=1, begin=1, end=None), {"x": (2, 4, 5)}),
    "reductions": (S.Group([S.mean(X, axis=1), S.sum(X, axis=(1, 2), keepdims=True), S.max(X),
                            S.sum(X, axis=1, exclude=True), S.min(X, axis=-1), S.prod(X, axis=0)]),
                   {"x": (2, 3, 4)}),
    "upsampling_nearest": (S.UpSampling(X, scale=2, sample_type="nearest"), {"x": IMAGE}),
    "embedding": (S.Embedding(X, input_dim=10, output_dim=4, name="op"), {"x": (2, 3)}),
    "expand_squeeze": (S.Group([S.expand_dims(X, axis=1), S.squeeze(S.expand_dims(X, axis=0)),
                                S.squeeze(S.Reshape(X, shape=(3, 1, 4)), axis=1)]), {"x": MATRIX}),
    "add_n_copy": (S.Group([S.add_n(X, Y, X), S.identity(X)]), {"x": MATRIX, "y": MATRIX}),
    "where": (S.where(X > 0, X, Y), {"x": MATRIX, "y": MATRIX}),
    "take": (S.Group([S.take(X, S.var("i")), S.take(X, S.var("i"), axis=1, mode="wrap")]),
             {"x": MATRIX, "i": (2, 2)}),
    "unary_math": (S.Group([S.exp(X), S.abs(X), S.negative(X), S.floor(X), S.ceil(X), S.square(X),
                            S.relu(X), S.sigmoid(X), S.tanh(X), S.erf(X)]), {"x": MATRIX}),
    # issue #26: the tensor ops of GluonCV's zoo
    "slice_like": (S.Group([S.slice_like(X, Y), S.slice_like(X, Y, axes=(1, -1)), S.slice_like(X, Y, axes=(0,))]),
                   {"x": (3, 5, 6), "y": (2, 3, 4)}),
    "arange": (S.Group([S.arange(5), S.arange(1, 2.2, 0.3), S.arange(6, 0, -1.5, repeat=2, dtype="int32"),
                        S.arange(2, 3, 2, dtype="int64"), S.identity(X)]), {"x": MATRIX}),
    "zeros_ones_like": (S.Group([S.zeros_like(X), S.ones_like(X), S.ones_like(S.Cast(X, dtype="int32"))]),
                        {"x": MATRIX}),
    "tile": (S.Group([S.tile(X, reps=(2, 3)), S.tile(X, reps=(2,)), S.tile(X, reps=(2, 1, 3))]), {"x": MATRIX}),
    "repeat": (S.Group([S.repeat(X, repeats=2), S.repeat(X, repeats=3, axis=1), S.repeat(X, repeats=2, axis=-2)]),
               {"x": MATRIX}),
    "cast": (S.Group([S.Cast(X * 4, dtype="int32"), S.Cast(X, dtype="float16"), S.Cast(X, dtype="float64"),
                      S.Cast(S.abs(X) * 9, dtype="uint8"), S.Cast(X * 100, dtype="int8"),
                      S.Cast(X * 3, dtype="int64")]), {"x": MATRIX}),
    "slice_channel": (S.Group([*S.SliceChannel(X, num_outputs=2), *S.split(X, num_outputs=3, axis=-1,
                                                                            squeeze_axis=True),
                               S.SliceChannel(X, num_outputs=1, axis=0)]), {"x": (2, 4, 3)}),
    "block_grad": (S.BlockGrad(X * 2), {"x": MATRIX}),
    "reverse": (S.Group([S.reverse(X, axis=1), S.reverse(X, axis=(0, 2))]), {"x": (2, 3, 4)}),
    "stack": (S.Group([S.stack(X, Y), S.stack(X, Y, X, axis=-1), S.stack(X, Y, axis=1)]), {"x": MATRIX, "y": MATRIX}),
    "broadcast_axis": (S.Group([S.broadcast_axis(X, axis=1, size=3), S.broadcast_axis(X, axis=(0, 2), size=(2, 4))]),
                       {"x": (1, 1, 1)}),
    "mod": (S.Group([S.broadcast_mod(X * 5, Y), X % 0.3, 2 % X, S.broadcast_mod(X * 5, Y * 0),
                     S.broadcast_mod(S.Cast(X * 9, dtype="int32"), S.Cast(Y * 3 + 0.5, dtype="int32"))]),
            {"x": MATRIX, "y": (1, 4)}),
    "shape_array": (S.shape_array(X), {"x": (2, 3, 4)}),
    "gather_nd": (S.gather_nd(X, S.var("i")), {"x": (3, 4, 2), "i": (2, 3, 5)}),
    "topk": (S.Group([*S.topk(X, k=2, ret_typ="both"), S.topk(X, axis=0, k=2, is_ascend=True),
                      S.topk(X, ret_typ="value", k=0), S.topk(X, ret_typ="mask", k=3, axis=1)]), {"x": (3, 6)}),
    "topk_flattened": (S.Group([S.topk(X, ret_typ="indices", k=3, dtype="int32", axis=None),
                                S.topk(X, ret_typ="mask", k=2, axis=None, is_ascend=True)]), {"x": (3, 6)}),
    "adaptive_avg_pooling": (S.Group([S.contrib.AdaptiveAvgPooling2D(X),
                                      S.contrib.AdaptiveAvgPooling2D(X, output_size=4),
                                      S.contrib.AdaptiveAvgPooling2D(X, output_size=(3, 6)),
                                      S.contrib.AdaptiveAvgPooling2D(X, output_size=(5, 2))]), {"x": (1, 2, 6, 7)}),
    **{f"bilinear_{name}": (S.contrib.BilinearResize2D(X, **kw), {"x": (1, 2, 5, 6)}) for name, kw in {
        "size": {"height": 9, "width": 4},
        "size_half_pixel": {"height": 9, "width": 4, "align_corners": False},
        "scale": {"scale_height": 1.5, "scale_width": 0.7},
        "scale_half_pixel": {"scale_height": 2.0, "scale_width": 2.0, "align_corners": False},
        "odd_scale": {"scale_height": 2.0, "scale_width": 0.5, "mode": "odd_scale"},
        "to_even_up": {"mode": "to_even_up"},
        "to_odd_down": {"mode": "to_odd_down", "align_corners": False},
        "one_pixel": {"height": 1, "width": 1},
    }.items()},
    "bilinear_like": (S.contrib.BilinearResize2D(X, Y, mode="like"), {"x": (1, 2, 5, 6), "y": (1, 1, 3, 8)}),
    # issue #26: the detection ops (anchors as SSD's (1, N, 4); Faster R-CNN's clip and standard deviations)
    "box_decode": (S.Group([S.contrib.box_decode(X, Y), S.contrib.box_decode(X, Y, format="corner"),
                            S.contrib.box_decode(X, Y, std0=0.1, std1=0.1, std2=0.2, std3=0.2, clip=0.3)]),
                   {"x": (2, 8, 4), "y": (1, 8, 4)}),
    "box_decode_anchors_4d": (S.contrib.box_decode(X, Y, std2=2.0, clip=1.0, format="corner"),
                                {"x": (2, 5, 4), "y": (1, 1, 5, 4)}),
    **{f"roi_align_{name}": (S.contrib.ROIAlign(X, S.var("rois"), spatial_scale=0.5, **kw),
                             {"x": (2, 3, 8, 8), "rois": (6 + (not kw.get("aligned")), 5)}) for name, kw in {
        "adaptive": {"pooled_size": (2, 3)},
        "sampled": {"pooled_size": (3, 3), "sample_ratio": 2},
        "aligned": {"pooled_size": (2, 2), "aligned": True},
        "aligned_sampled": {"pooled_size": (4, 3), "sample_ratio": 1, "aligned": True},
    }.items()},
    # rows [class id, score, 4 coordinates] (detections(); GluonCV's SSD and YOLOv3 use id_index 0, score_index 1)
    "box_nms_classes": (S.contrib.box_nms(X, overlap_thresh=0.45, valid_thresh=0.01, topk=9, id_index=0,
                                          force_suppress=False), {"x": (2, 16, 6)}),
    "box_nms_force_background": (S.contrib.box_nms(X, id_index=0, background_id=0, force_suppress=True),
                                 {"x": (2, 16, 6)}),
    "box_nms_no_ids": (S.contrib.box_nms(X, overlap_thresh=0.3, topk=40), {"x": (16, 6)}),
    "box_nms_center": (S.contrib.box_nms(X, in_format="center", id_index=0), {"x": (1, 16, 6)}),
    "box_nms_formats": (S.Group([S.contrib.box_nms(X, in_format="center", out_format="corner"),
                                 S.contrib.box_nms(X, overlap_thresh=0.6, out_format="center", id_index=0)]),
                        {"x": (2, 2, 16, 6)}),
    "box_nms_none_valid": (S.contrib.box_nms(X, valid_thresh=1.0, id_index=0), {"x": (2, 16, 6)}),
    "box_nms_topk_zero": (S.contrib.box_nms(X, topk=0), {"x": (2, 16, 6)}),
    # IoU exactly at the threshold: MXNet keeps both boxes (it suppresses above it)
    "box_nms_at_threshold": (S.contrib.box_nms(X, overlap_thresh=0.5), {"x": (1, 3, 6)}),
}
# Inputs that are integer positions rather than data.
INDEX_INPUTS = {"embedding": ("x", 10), "take": ("i", 9), "gather_nd": ("i", 2)}
# Inputs with ties, which random ones lack: MXNet's topk sorts the small axes these have stably (lower index first).
FIXED_INPUTS = {"topk": {"x": [[1, 3, 3, 2, 3, 1], [2, 2, 2, 2, 2, 2], [0, 5, -1, 5, 4, 5]]}}
# ROIs [batch index, x1, y1, x2, y2] in image pixels (twice the feature map's): fractional batch indices, a ROI
# under one pixel, ROIs reaching past the image; without aligned, one of negative width too (aligned=True aborts on
# it). MXNet leaves the output of a negative batch index unwritten.
ROIS = [[0, 1.0, 2.0, 10.5, 13.0], [1, 0, 0, 15, 15], [1.9, 2, 2, 6, 6], [0.7, 3.3, 1.2, 4.1, 2.0],
        [1, 12.0, 3.0, 20.0, 9.5], [-0.5, -3.0, 4.0, 5.0, 7.5], [0, 5.0, 5.0, 4.5, 9.0]]
FIXED_INPUTS.update({name: {"rois": ROIS[:shapes["rois"][0]]} for name, (_, shapes) in CASES.items()
                     if name.startswith("roi_align")})


def detections(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Rows [class id, score, c0, c1, c2, c3]: ids -1 to 2, scores in tenths (ties), coordinates that make
    overlapping corner or centre boxes, some of them of no or negative extent."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(-1, 3, shape[:-1] + (1,))
    scores = rng.integers(0, 10, shape[:-1] + (1,)) / 10
    coords = np.concatenate([rng.uniform(0, 4, shape[:-1] + (2,)), rng.uniform(-0.3, 4, shape[:-1] + (2,))], -1)
    return np.concatenate([ids, scores, coords], -1).astype(np.float32)


FIXED_INPUTS.update({name: {"x": detections(shapes["x"])} for name, (_, shapes) in CASES.items()
                     if name.startswith("box_nms")})
# [0, 0, 3, 1] and [1, 0, 4, 1] overlap by 2 of 4 (IoU 0.5); [1, 0, 3, 1] overlaps the first by 2 of 3
FIXED_INPUTS["box_nms_at_threshold"] = {"x": np.array([[[0, 0.9, 0, 0, 3, 1], [0, 0.8, 1, 0, 4, 1],
                                                        [0, 0.7, 1, 0, 3, 1]]], np.float32)}


def export(name: str, out_dir: Path, rng: np.random.Generator) -> None:
    symbol, shapes = CASES[name]
    arg_shapes, _, aux_shapes = symbol.infer_shape(**shapes)
    args = {n: mx.nd.array(rng.uniform(-1, 1, s)) for n, s in zip(symbol.list_arguments(), arg_shapes)}
    if name in INDEX_INPUTS:
        index, bound = INDEX_INPUTS[name]
        args[index] = mx.nd.array(rng.integers(-1, bound, shapes[index]).astype(np.float32))
    for input_name, values in FIXED_INPUTS.get(name, {}).items():
        args[input_name] = mx.nd.array(values)
    aux = {n: mx.nd.array(rng.uniform(0.5, 1.5, s)) for n, s in zip(symbol.list_auxiliary_states(), aux_shapes)}
    executor = symbol.bind(mx.cpu(), args=args, aux_states=aux, grad_req="null")
    outputs = [o.asnumpy() for o in executor.forward(is_train=False)]
    case_dir = out_dir / name
    case_dir.mkdir(parents=True, exist_ok=True)
    symbol.save(str(case_dir / "model-symbol.json"))
    params = {f"arg:{n}": a for n, a in args.items() if n not in shapes}
    params.update({f"aux:{n}": a for n, a in aux.items()})
    mx.nd.save(str(case_dir / "model-0000.params"), params)
    feeds = {n: args[n].asnumpy() for n in shapes}
    np.savez(case_dir / "reference.npz", **feeds, **{f"output{i}": o for i, o in enumerate(outputs)})


def main(argv: list[str]) -> None:
    rng = np.random.default_rng(0)
    for name in CASES:
        export(name, Path(argv[0]), rng)


if __name__ == "__main__":
    main(sys.argv[1:])
