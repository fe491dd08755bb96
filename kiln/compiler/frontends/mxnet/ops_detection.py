"""Converters for GluonCV's detection ops: box decoding, ROI alignment and box non-maximum suppression, each with
MXNet 1.9.1's arithmetic (src/operator/contrib/bounding_box-inl.h, roi_align.cc)."""

from __future__ import annotations

import math

import numpy as np

from kiln.compiler.frontends.mxnet.attrs import Attrs, Unsupported
from kiln.compiler.frontends.mxnet.builder import GraphBuilder

_FORMATS = ("corner", "center")


def _format(a: Attrs, key: str, default: str) -> str:
    value = a.str(key, default)
    if value not in _FORMATS:
        raise ValueError(f"{key}={value} is neither corner nor center")
    return value


def _columns(g: GraphBuilder, x: str, start: int, stop: int) -> str:
    return g.op("Slice", [x, g.ints([start]), g.ints([stop]), g.ints([-1])])


def box_decode(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """_contrib_box_decode: data (B, N, 4) holds offsets from the N anchors (any shape of N * 4 elements, as MXNet
    reads them); the result is corner boxes."""
    count = g.shape(x[0])[1]
    anchors = x[1]
    if math.prod(g.shape(anchors)) != count * 4:
        raise ValueError(f"anchors of shape {g.shape(anchors)} are not the data's {count} boxes")
    if g.shape(anchors) != (1, count, 4):
        anchors = g.op("Reshape", [anchors, g.ints([1, count, 4])])
    centers, sizes = _columns(g, anchors, 0, 2), _columns(g, anchors, 2, 4)
    half = g.const_like(0.5, x[0])
    if _format(a, "format", "center") == "corner":
        sizes = g.op("Sub", [sizes, centers])
        centers = g.op("Add", [centers, g.op("Mul", [sizes, half])])
    stds = g.const_like([a.float(f"std{i}", 1.0) for i in range(4)], x[0])
    scaled = g.op("Mul", [x[0], stds])
    middle = g.op("Add", [g.op("Mul", [_columns(g, scaled, 0, 2), sizes]), centers])
    exponents = _columns(g, scaled, 2, 4)
    clip = a.float("clip", -1.0)
    if clip > 0:
        exponents = g.op("Min", [exponents, g.const_like(clip, x[0])])
    extent = g.op("Mul", [g.op("Mul", [g.op("Exp", [exponents]), sizes]), half])
    return g.op("Concat", [g.op("Sub", [middle, extent]), g.op("Add", [middle, extent])], axis=-1)


def roi_align(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """_contrib_ROIAlign as ONNX RoiAlign (both Detectron's): MXNet's aligned is ONNX's half_pixel, its adaptive
    sample_ratio (< 1) ONNX's 0. A ROI whose batch index (truncated to an integer) is negative gives zeros (MXNet
    leaves them unwritten)."""
    if a.bool("position_sensitive", False):
        raise Unsupported("position_sensitive=True")
    height, width = a.ints("pooled_size")
    scale, ratio, aligned = a.float("spatial_scale"), max(a.int("sample_ratio", -1), 0), a.bool("aligned", False)
    rois = x[1]
    index = g.cast(_columns(g, rois, 0, 1), "int64")
    zero = g.const(0, "int64")
    boxes = _columns(g, rois, 1, 5)
    if aligned:  # scaled here: TVM's importer moves half_pixel's half pixel before the scale, right at scale 1 only
        boxes, scale = g.op("Mul", [boxes, g.const_like(scale, boxes)]), 1.0
    pooled = g.op("RoiAlign", [x[0], boxes, g.op("Max", [g.op("Squeeze", [index, g.ints([1])]), zero])],
                  mode="avg", output_height=height, output_width=width, sampling_ratio=ratio, spatial_scale=scale,
                  coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")
    ignored = g.op("Less", [index, zero])
    if aligned and ratio == 0:
        # An aligned ROI of no width or height (MXNet aborts on it) has no adaptive samples: zeros, as ONNX Runtime
        # computes, where TVM divides by its zero sample count.
        empty = g.op("LessOrEqual", [g.op("Sub", [_columns(g, boxes, 2, 4), _columns(g, boxes, 0, 2)]),
                                     g.const_like(0, boxes)])
        ignored = g.op("Or", [ignored, g.op("Or", [_columns(g, empty, 0, 1), _columns(g, empty, 1, 2)])])
    ignored = g.op("Reshape", [ignored, g.ints([-1, 1, 1, 1])])
    return g.op("Where", [ignored, g.const_like(0, x[0]), pooled])


def box_nms(g: GraphBuilder, x: list[str], a: Attrs) -> str:
    """_contrib_box_nms: per batch, the boxes scoring above valid_thresh (and not of class background_id), sorted by
    score (ties by position), the first topk of them, greedily suppressed where their IoU with a kept box (of the
    same integer class unless force_suppress) exceeds overlap_thresh; the kept rows first, in that order, then rows
    of -1; in out_format where the first coordinate is not negative.

    ONNX's NonMaxSuppression does the suppression on ranks for scores (no ties, and no boxes below its threshold
    but the invalid ones); per class, each class a channel named by its first box. Boxes of no extent, which
    MXNet never suppresses nor suppresses with, are moved to zero boxes, which ONNX does not either."""
    shape = g.shape(x[0])
    if len(shape) < 2:
        raise ValueError(f"data of rank {len(shape)}; box_nms takes (..., boxes, box width)")
    threshold = a.float("overlap_thresh", 0.5)
    if threshold < 0:  # every pair would be suppressed, boxes of no extent included
        raise Unsupported(f"overlap_thresh={threshold}")
    if g.dtype(x[0]) != np.float32:  # NonMaxSuppression takes float32 boxes
        raise Unsupported(f"{g.dtype(x[0])} data")
    count, width = shape[-2:]
    batch = math.prod(shape[:-2])
    topk = a.int("topk", -1)
    if topk == 0 or count == 0:  # MXNet copies the input
        return g.op("Identity", [x[0]])
    keep = count if topk < 0 else min(topk, count)
    start, score_index, id_index = a.int("coord_start", 2), a.int("score_index", 1), a.int("id_index", -1)
    for name, index in (("coord_start", start), ("coord_start + 3", start + 3), ("score_index", score_index),
                        ("id_index", id_index)):
        if index >= width or (index < 0 and name != "id_index"):
            raise ValueError(f"{name} {index} is outside the box width {width}")
    in_format, out_format = _format(a, "in_format", "corner"), _format(a, "out_format", "corner")
    classes = id_index >= 0 and not a.bool("force_suppress", False)

    data = g.op("Reshape", [x[0], g.ints([batch, count, width])])
    scores = g.op("Squeeze", [_columns(g, data, score_index, score_index + 1), g.ints([2])])
    valid = g.op("Greater", [scores, g.const_like(a.float("valid_thresh", 0.0), scores)])
    if id_index >= 0:
        ids = g.op("Squeeze", [_columns(g, data, id_index, id_index + 1), g.ints([2])])
        background = g.op("Equal", [ids, g.const_like(a.int("background_id", -1), ids)])
        valid = g.op("And", [valid, g.op("Not", [background])])
    ranked = g.op("Where", [valid, scores, g.const_like(-np.inf, scores)])
    order = g.op("TopK", [ranked, g.ints([keep])], outputs=2, axis=1, largest=1, sorted=1)[1]
    offsets = g.const(np.arange(batch).reshape(batch, 1) * count, "int64")
    rows = g.op("Gather", [g.op("Reshape", [data, g.ints([batch * count, width])]), g.op("Add", [order, offsets])],
                axis=0)
    valid = g.op("GatherElements", [g.cast(valid, "float32"), order], axis=1)
    # Rank keep - i for candidate i, 0 for the invalid: what NonMaxSuppression orders and thresholds (at 0.5).
    rank = g.op("Mul", [valid, g.const(np.arange(keep, 0, -1), "float32")])
    rank = g.op("Unsqueeze", [rank, g.ints([1])])
    if classes:
        rank = g.op("Mul", [rank, _class_channels(g, rows, id_index, keep)])
    # MXNet suppresses when IoU > overlap_thresh, as ONNX says; TVM's CUDA NonMaxSuppression tests >= (and skips
    # suppression at a threshold <= 0): the next float32 above the threshold makes its >= MXNet's >. (kiln's CPU
    # kernel tests >, so there the two differ where an IoU is that next float32 exactly.)
    above = np.nextafter(np.float32(threshold), np.float32(np.inf))
    selected = g.op("NonMaxSuppression", [_nms_boxes(g, rows, start, in_format), rank, g.ints([keep]),
                                          g.const([above]), g.const([0.5])])
    # Kept candidates: 1 at each selected (batch, candidate); rows past those selected (TVM's padding, zeros) mark
    # the first candidate of batch 0, which is kept whenever it is valid.
    ones = g.cast(g.op("GreaterOrEqual", [_columns(g, selected, 0, 1), g.const(0, "int64")]), "float32")
    kept = g.op("ScatterND", [g.op("Expand", [g.const(0.0), g.ints([batch, keep])]),
                              g.op("Gather", [selected, g.ints([0, 2])], axis=1),
                              g.op("Squeeze", [ones, g.ints([1])])])
    kept = g.op("Mul", [kept, valid])
    # Kept candidates first, each part in rank order.
    position = g.op("Add", [g.op("Mul", [kept, g.const(2.0 * keep)]), g.const(np.arange(keep, 0, -1), "float32")])
    final = g.op("TopK", [position, g.ints([keep])], outputs=2, axis=1, largest=1, sorted=1)[1]
    rows = g.op("Gather", [g.op("Reshape", [rows, g.ints([batch * keep, width])]),
                           g.op("Add", [final, g.const(np.arange(batch).reshape(batch, 1) * keep, "int64")])], axis=0)
    kept = g.op("Unsqueeze", [g.op("GatherElements", [kept, final], axis=1), g.ints([2])])
    minus_one = g.const_like(-1, x[0])
    out = g.op("Where", [g.cast(kept, "bool"), rows, minus_one])
    if keep < count:
        out = g.op("Concat", [out, g.const(np.full((batch, count - keep, width), -1), g.dtype(x[0]))], axis=1)
    if in_format != out_format:
        out = _reformat(g, out, start, out_format)
    return g.op("Reshape", [out, g.ints(shape)])


def _class_channels(g: GraphBuilder, rows: str, id_index: int, keep: int) -> str:
    """(batch, channel, candidate): 1 where the candidate's class (truncated to an integer, as MXNet compares them)
    is that of candidate `channel`, and no earlier candidate has it."""
    ids = g.cast(g.op("Squeeze", [_columns(g, rows, id_index, id_index + 1), g.ints([2])]), "int32")
    same = g.op("Equal", [g.op("Unsqueeze", [ids, g.ints([2])]), g.op("Unsqueeze", [ids, g.ints([1])])])
    earlier = g.const(np.tri(keep, k=-1, dtype=bool), "bool")
    repeated = g.op("ReduceMax", [g.cast(g.op("And", [same, earlier]), "float32")], axes=[2], keepdims=1)
    return g.op("Mul", [g.cast(same, "float32"), g.op("Sub", [g.const(1.0), repeated])])


def _nms_boxes(g: GraphBuilder, rows: str, start: int, in_format: str) -> str:
    """Corner boxes for NonMaxSuppression, with MXNet's edges (a centre box's half size is w / 2); a box of no
    width or height becomes the zero box."""
    coords = _columns(g, rows, start, start + 4)
    low, high = _columns(g, coords, 0, 2), _columns(g, coords, 2, 4)
    if in_format == "center":
        half = g.op("Div", [high, g.const(2.0)])
        low, high, extent = g.op("Sub", [low, half]), g.op("Add", [low, half]), high
    else:
        extent = g.op("Sub", [high, low])
    empty = g.op("LessOrEqual", [extent, g.const(0.0)])
    empty = g.op("Or", [_columns(g, empty, 0, 1), _columns(g, empty, 1, 2)])
    return g.op("Where", [empty, g.const(0.0), g.op("Concat", [low, high], axis=-1)])


def _reformat(g: GraphBuilder, out: str, start: int, out_format: str) -> str:
    """The coordinates in out_format, except in rows whose first coordinate is negative (MXNet's test for its -1
    rows, which skips kept boxes left of 0 as well)."""
    width = g.shape(out)[-1]
    coords = _columns(g, out, start, start + 4)
    first, second = _columns(g, coords, 0, 2), _columns(g, coords, 2, 4)
    two = g.const_like(2, out)
    if out_format == "center":
        converted = [g.op("Div", [g.op("Add", [first, second]), two]), g.op("Sub", [second, first])]
    else:
        half = g.op("Div", [second, two])
        converted = [g.op("Sub", [first, half]), g.op("Add", [first, half])]
    negative = g.op("Less", [_columns(g, coords, 0, 1), g.const_like(0, out)])
    coords = g.op("Where", [negative, coords, g.op("Concat", converted, axis=-1)])
    parts = [_columns(g, out, 0, start)] * (start > 0) + [coords] + [_columns(g, out, start + 4, width)] * (
        start + 4 < width)
    return g.op("Concat", parts, axis=-1)
