"""The integer conv2d kiln emits for a matched quantized conv (TE), and its constants packed at compile time.

data [N, IC/ib, H, W, ib] uint8/int8, weights int8 [OC/ob, IC/ib, KH, KW, ib/4, ob, 4] (each
ob x 4 slab one dot-product instruction's operand), summed in int32, then requantized in the same
kernel: clip(round((sum + bias') * multiplier) + output zero point, low, high). The input's zero
point is folded into bias' (bias - zero_point * sum(weights)), which is exact because the padding
is filled with that zero point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from kiln.compiler.backends.tvm.schedules.compute import output_size, pad
from kiln.compiler.backends.tvm.schedules.intrinsics import GROUP, Int8Isa
from kiln.compiler.backends.tvm.schedules.qdq_match import QuantizedConv

INT8_CONV, REQUANTIZE = "kqconv", "krequant"


@dataclass(frozen=True)
class PackedConv:
    weight: np.ndarray  # int8 [OC/ob, IC/ib, KH, KW, ib/4, ob, 4]
    bias: np.ndarray  # int32 [OC/ob, ob]
    multiplier: np.ndarray  # float32 [OC/ob, ob]
    in_block: int
    out_block: int


def pack(conv: QuantizedConv, isa: Int8Isa, in_block: int) -> PackedConv | None:
    """The conv's constants for `isa`'s kernel, or None where that kernel cannot compute it exactly."""
    w = conv.weight
    out_channels, in_channels, kh, kw = w.shape
    ob = isa.lanes
    if (conv.groups != 1 or out_channels % ob or in_block % GROUP or in_channels % in_block
            or conv.input.dtype != isa.activations):
        return None
    pairs = np.abs(w.astype(np.int32)).reshape(out_channels, in_channels // 2, 2, kh, kw).sum(axis=2) \
        if in_channels % 2 == 0 else None
    if isa.pair_limit is not None and (pairs is None or pairs.max() > isa.pair_limit):
        return None
    packed = w.reshape(out_channels // ob, ob, in_channels // in_block, in_block // GROUP, GROUP, kh, kw)
    packed = packed.transpose(0, 2, 5, 6, 3, 1, 4)
    bias = conv.bias.astype(np.int64) - conv.input.zero_point * w.astype(np.int64).sum(axis=(1, 2, 3))
    multiplier = (conv.input.scale * conv.weight_scale / conv.output.scale).astype(np.float32)
    return PackedConv(np.ascontiguousarray(packed), bias.astype(np.int32).reshape(-1, ob),
                      multiplier.reshape(-1, ob), in_block, ob)


def conv2d_int8_nchwc(data, kernel, bias, multiplier, strides, padding, input_zero: int,
                      output: tuple[int, int, int, str]):
    """`output`: (zero point, low, high, dtype) of the requantized result."""
    n, _, h, w, _ = (int(x) for x in data.shape)
    oc_blocks, ic_blocks, kh, kw, groups, ob, _ = (int(x) for x in kernel.shape)
    (sh, sw), (top, left, bottom, right) = strides, padding
    padded = pad(data, top, left, bottom, right, input_zero)
    ico, ry, rx, icg, k = (te.reduce_axis((0, e), name) for e, name in (
        (ic_blocks, "ico"), (kh, "kh"), (kw, "kw"), (groups, "icg"), (GROUP, "k")))
    shape = (n, oc_blocks, output_size(h, top, bottom, kh, sh), output_size(w, left, right, kw, sw), ob)
    sums = te.compute(shape, lambda b, oc, y, x, o: te.sum(
        padded[b, ico, y * sh + ry, x * sw + rx, icg * GROUP + k].astype("int32")
        * kernel[oc, ico, ry, rx, icg, o, k].astype("int32"), axis=[ico, ry, rx, icg, k]), name=INT8_CONV)
    zero, low, high, dtype = output

    def requantize(b, oc, y, x, o):
        scaled = te.round((sums[b, oc, y, x, o] + bias[oc, o]).astype("float32") * multiplier[oc, o])
        return tirx.max(tirx.min(scaled.astype("int32") + zero, high), low).astype(dtype)

    return te.compute(shape, requantize, name=REQUANTIZE)
