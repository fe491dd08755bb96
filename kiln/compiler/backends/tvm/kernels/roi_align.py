"""RoiAlign (average, NCHW, a fixed sampling grid) with its bilinear taps computed once per bin, not per channel.

TOPI's roi_align computes each output's sample positions, clamps, floors and bilinear weights inside the sum,
for every channel alike: Faster R-CNN's 16 x 1024 x 14 x 14 bins spent 200 ms on that arithmetic. Here

    taps[roi, ph, pw, k], weights[roi, ph, pw, k]    k = (sample y, sample x, corner): the grid's samples x 4
    out[roi, c, ph, pw] = sum_k weights[.., k] * data[batch[roi], c, taps_y[.., k], taps_x[.., k]]

with TOPI's arithmetic for positions and weights (a sample outside [-1, size] or a corner off the map weighs 0;
each weighs 1 / samples, so the sum is the samples' mean). The tables are named PRECOMPUTED..., which the rules
keep as their own loops instead of inlining them into the sum. Max mode and adaptive grids (sampling_ratio 0:
a grid per ROI) keep TOPI's kernel."""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx

from kiln.compiler.backends.tvm.kernels.compute import PRECOMPUTED

ROI_ALIGN = "kroi_align"


def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    attrs = call.attrs
    if str(attrs.mode) != "avg" or int(attrs.sample_ratio) <= 0 or str(attrs.layout) != "NCHW":
        return tvm.ir.Op.get("relax.vision.roi_align").get_attr("FLegalize")(bb, call)
    return bb.call_te(roi_align_nchw, call.args[0], call.args[1], [int(s) for s in attrs.pooled_size],
                      float(attrs.spatial_scale), int(attrs.sample_ratio), bool(attrs.aligned),
                      primfunc_name_hint="roi_align")


def roi_align_nchw(data, rois, pooled_size: list[int], spatial_scale: float, ratio: int, aligned: bool):
    _, channels, height, width = (int(d) for d in data.shape)
    count = int(rois.shape[0])
    pooled_h, pooled_w = pooled_size
    taps = ratio * ratio * 4
    dtype = rois.dtype

    def sample(i, ph, pw, k):
        """(y index, x index, weight) of tap k of bin (ph, pw) of ROI i."""
        ry, rx, corner = k // (ratio * 4), k // 4 % ratio, k % 4
        start_w, start_h = rois[i, 1] * spatial_scale, rois[i, 2] * spatial_scale
        end_w, end_h = rois[i, 3] * spatial_scale, rois[i, 4] * spatial_scale
        one = tirx.const(1.0, dtype)
        roi_h, roi_w = (end_h - start_h, end_w - start_w) if aligned else (
            te.max(end_h - start_h, one), te.max(end_w - start_w, one))
        bin_h, bin_w = roi_h / tirx.const(pooled_h, dtype), roi_w / tirx.const(pooled_w, dtype)
        grid = tirx.const(ratio, dtype)
        y = start_h + ph.astype(dtype) * bin_h + (ry.astype(dtype) + tirx.const(0.5, dtype)) * bin_h / grid
        x = start_w + pw.astype(dtype) * bin_w + (rx.astype(dtype) + tirx.const(0.5, dtype)) * bin_w / grid
        outside = tirx.any(y < -1.0, x < -1.0, y > tirx.const(height, dtype), x > tirx.const(width, dtype))
        y = te.min(te.max(y, 0.0), tirx.const(height - 1, dtype))
        x = te.min(te.max(x, 0.0), tirx.const(width - 1, dtype))
        y0, x0 = te.floor(y).astype("int32"), te.floor(x).astype("int32")
        fy, fx = y - y0.astype(dtype), x - x0.astype(dtype)
        dy, dx = corner // 2, corner % 2
        ty, tx = y0 + dy, x0 + dx
        weight = (tirx.Select(dx == 1, fx, one - fx) * tirx.Select(dy == 1, fy, one - fy)
                  / tirx.const(ratio * ratio, dtype))
        on_map = tirx.all(ty <= height - 1, tx <= width - 1, tirx.Not(outside))
        return (te.min(ty, height - 1), te.min(tx, width - 1),
                tirx.Select(on_map, weight, tirx.const(0.0, data.dtype)))

    shape = (count, pooled_h, pooled_w, taps)
    taps_y = te.compute(shape, lambda *i: sample(*i)[0], name=PRECOMPUTED + "taps_y")
    taps_x = te.compute(shape, lambda *i: sample(*i)[1], name=PRECOMPUTED + "taps_x")
    weights = te.compute(shape, lambda *i: sample(*i)[2], name=PRECOMPUTED + "weights")
    k = te.reduce_axis((0, taps), name="k")
    return te.compute(
        (count, channels, pooled_h, pooled_w),
        lambda i, c, ph, pw: te.sum(
            weights[i, ph, pw, k] * data[rois[i, 0].astype("int32"), c, taps_y[i, ph, pw, k], taps_x[i, ph, pw, k]],
            axis=k),
        name=ROI_ALIGN)
