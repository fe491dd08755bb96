"""The integer convs kiln emits for matched quantized ones (TE), and their constants packed at compile time.

conv2d: data [N, IC/ib, H, W, ib] uint8/int8, weights int8 [OC/ob, IC/ib, KH, KW, ib/4, ob, 4] (each
ob x 4 slab one dot-product instruction's operand); depthwise: data [N, C/ob, H, W, ob], weights
[C/ob, KH, KW, ob]. Both sum in int32, then requantize in the same kernel:
clip(round((sum + bias') * multiplier) + output zero point, low, high). The input's zero
point is folded into bias' (bias - zero_point * sum(weights)), which is exact because the padding
is filled with that zero point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx

from kiln.compiler.backends.tvm.kernels.compute import (KERNEL_ROWS, output_size, pad, winograd_output,
                                                        winograd_tiles, winograd_weights)
from kiln.compiler.backends.tvm.kernels.intrinsics import GROUP, PAIR, DotProduct
from kiln.compiler.backends.tvm.rewrite.qdq_match import Quantization, QuantizedConv

INT8_CONV, INT8_DEPTHWISE, REQUANTIZE = "kqconv", "kqdwconv", "krequant"
INT8_WINOGRAD_IN, INT8_WINOGRAD, INT8_WINOGRAD_OUT = "kqwino_in", "kqwino", "kqwino_out"
# The integer Winograd conv's transformed input tiles: (x - zero point) summed 4 at a time, |v| <= 4 * 255.
_TILE_BOUND = 4 * 255


@dataclass(frozen=True)
class PackedConv:
    weight: np.ndarray  # int8 [OC/ob, IC/ib, KH, KW, ib/4, ob, 4]; depthwise [C/ob, KH, KW, ob]
    bias: np.ndarray  # int32 [OC/ob, ob]
    multiplier: np.ndarray  # float32 [OC/ob, ob]
    in_block: int
    out_block: int


def is_depthwise(conv: QuantizedConv) -> bool:
    return conv.groups > 1 and conv.weight.shape[1] == 1 and conv.groups == conv.weight.shape[0]


def input_block(conv: QuantizedConv, isa: DotProduct, current: int | None) -> int:
    """The channel block the kernel reads its input in: the current one where it holds whole groups of 4
    and tiles each conv group; fewer than 4 channels (an RGB image) are padded to 4."""
    per_group = conv.weight.shape[1]
    if is_depthwise(conv):
        return isa.lanes
    if per_group < GROUP and conv.groups == 1:
        return GROUP
    if current and current % GROUP == 0 and per_group % current == 0:
        return current
    return isa.lanes if per_group % isa.lanes == 0 else GROUP


def pack(conv: QuantizedConv, isa: DotProduct, in_block: int) -> PackedConv | str:
    """The conv's constants for `isa`'s kernel, or why that kernel cannot compute it exactly."""
    w = conv.weight
    out_channels, in_channels, kh, kw = w.shape
    ob = isa.lanes
    depthwise = is_depthwise(conv)
    groups = 1 if depthwise else conv.groups
    per_group = f" per group ({groups} groups)" if groups > 1 else ""
    if conv.input.dtype != isa.activations:
        return f"{conv.input.dtype} activations; {isa.name} takes {isa.activations}"
    if (out_channels // groups) % ob:
        return f"output channels {out_channels // groups}{per_group} not in blocks of {ob}"
    if depthwise:
        return _packed(conv, w.reshape(out_channels // ob, ob, kh, kw).transpose(0, 2, 3, 1), in_block, ob)
    padded = in_channels < GROUP and groups == 1
    if in_block % GROUP or (GROUP if padded else in_channels) % in_block:
        return f"input channels {in_channels}{per_group} not in groups of {GROUP}"
    if padded:  # zero weights for the padding channels: their values never count
        w = np.concatenate([w, np.zeros((out_channels, GROUP - in_channels, kh, kw), w.dtype)], axis=1)
        in_channels = GROUP
    pairs = np.abs(w.astype(np.int32)).reshape(out_channels, in_channels // 2, 2, kh, kw).sum(axis=2)
    if isa.pair_limit is not None and pairs.max() > isa.pair_limit:
        return f"weights beyond {isa.name}'s int16 pair range (quantize for this target: 7-bit weights)"
    packed = w.reshape(out_channels // ob, ob, in_channels // in_block, in_block // GROUP, GROUP, kh, kw)
    return _packed(conv, packed.transpose(0, 2, 5, 6, 3, 1, 4), in_block, ob)


def _packed(conv: QuantizedConv, weight: np.ndarray, in_block: int, ob: int) -> PackedConv:
    bias = conv.bias.astype(np.int64) - conv.input.zero_point * conv.weight.astype(np.int64).sum(axis=(1, 2, 3))
    multiplier = (conv.input.scale * conv.weight_scale / conv.output.scale).astype(np.float32)
    return PackedConv(np.ascontiguousarray(weight), bias.astype(np.int32).reshape(-1, ob), multiplier.reshape(-1, ob),
                      in_block, ob)


def pack_winograd(conv: QuantizedConv, isa: DotProduct) -> PackedConv | str:
    """The constants of the integer Winograd F(2x2, 3x3) conv: int16 weights 4 G g G^T = (2G) g (2G)^T, exact
    integers, packed [16, OC/ob, IC/2, ob, 2]; the bias as is (the input's zero point is subtracted before the
    transform); or why the sums could leave int32, whose wrap-around is exact only if the result fits."""
    out_channels, in_channels = conv.weight.shape[:2]
    u = winograd_weights(conv.weight.astype(np.int64), (2 * KERNEL_ROWS).astype(np.int64))
    if _TILE_BOUND * np.abs(u).sum(axis=(0, 1)).max() >= 2 ** 31:
        return "Winograd sums could overflow int32"
    ob = isa.lanes
    packed = u.reshape(16, in_channels // PAIR, PAIR, out_channels // ob, ob).transpose(0, 3, 1, 4, 2)
    multiplier = (conv.input.scale * conv.weight_scale / conv.output.scale).astype(np.float32)
    return PackedConv(np.ascontiguousarray(packed, dtype=np.int16), conv.bias.astype(np.int32).reshape(-1, ob),
                      multiplier.reshape(-1, ob), isa.lanes, ob)


def conv2d_winograd_int8(data, kernel, bias, multiplier, padding, input_zero: int, output: tuple[int, int, int, str]):
    """A 3x3 stride-1 quantized conv as Winograd F(2x2, 3x3) in integers: the tiles of (x - zero point) in int16,
    their products with the kernel (pack_winograd) summed in int32 by int16 pairs, the output transform in
    int32 (4x the direct sum, exactly), divided by 4 and requantized."""
    pairs = int(data.shape[-1]) // PAIR  # per input channel block
    _, oc_blocks, _, ob, _ = (int(x) for x in kernel.shape)
    tiles, size = winograd_tiles(data, padding, input_zero,
                                 lambda x: x.astype("int16") - tirx.const(input_zero, "int16"), "int16",
                                 INT8_WINOGRAD_IN)
    ico, icp, k = (te.reduce_axis((0, e), name) for e, name in ((int(data.shape[1]), "ico"), (pairs, "icp"),
                                                                (PAIR, "k")))
    products = te.compute((16, int(data.shape[0]), oc_blocks, int(tiles.shape[3]), ob), lambda xi, b, oc, t, o: te.sum(
        tiles[xi, b, ico, t, icp * PAIR + k].astype("int32") * kernel[xi, oc, ico * pairs + icp, o, k].astype("int32"),
        axis=[ico, icp, k]), name=INT8_WINOGRAD)
    sums = winograd_output(products, size, INT8_WINOGRAD_OUT, lambda value: value >> 2)
    return _requantize(sums, bias, multiplier, output)


def conv2d_int8_nchwc(data, kernel, bias, multiplier, strides, padding, input_zero: int,
                      output: tuple[int, int, int, str], groups: int = 1):
    """`output`: (zero point, low, high, dtype) of the requantized result. With `groups`, output block oc
    reads the input blocks of its group: ic_blocks (per group) from (oc // blocks per group) * ic_blocks."""
    n, _, h, w, _ = (int(x) for x in data.shape)
    oc_blocks, ic_blocks, kh, kw, fours, ob, _ = (int(x) for x in kernel.shape)
    per_group = oc_blocks // groups
    (sh, sw), (top, left, bottom, right) = strides, padding
    padded = pad(data, top, left, bottom, right, input_zero)
    ico, ry, rx, icg, k = (te.reduce_axis((0, e), name) for e, name in (
        (ic_blocks, "ico"), (kh, "kh"), (kw, "kw"), (fours, "icg"), (GROUP, "k")))
    shape = (n, oc_blocks, output_size(h, top, bottom, kh, sh), output_size(w, left, right, kw, sw), ob)

    def channel_block(oc, ico):
        return ico if groups == 1 else oc // per_group * ic_blocks + ico

    sums = te.compute(shape, lambda b, oc, y, x, o: te.sum(
        padded[b, channel_block(oc, ico), y * sh + ry, x * sw + rx, icg * GROUP + k].astype("int32")
        * kernel[oc, ico, ry, rx, icg, o, k].astype("int32"), axis=[ico, ry, rx, icg, k]), name=INT8_CONV)
    return _requantize(sums, bias, multiplier, output)


def dense_int8_rows(data, kernel, bias, multiplier, input_zero: int, output: tuple[int, int, int, str],
                    columns: int):
    """data [rows, K] x packed weights as conv2d_int8_nchwc's 1x1 kernel -> [rows, columns], with no copy of either
    side into the blocked layout: the conv reads its [1, K/b, 1, rows, b] input and writes its output blocks
    through index views, which the schedule inlines (the rows are the conv's one wide output row)."""
    rows, depth = (int(x) for x in data.shape)
    in_block = int(kernel.shape[4]) * GROUP

    def blocked(n, c, y, x, i):  # K short of a whole block (under 4) read as the input's zero point, as packed
        return data[x, c * in_block + i] if depth % in_block == 0 else tirx.if_then_else(
            c * in_block + i < depth, data[x, tirx.min(c * in_block + i, depth - 1)], tirx.const(input_zero,
                                                                                                 data.dtype))

    image = te.compute((1, -(-depth // in_block), 1, rows, in_block), blocked, name="kdense_in")
    result = conv2d_int8_nchwc(image, kernel, bias, multiplier, (1, 1), (0, 0, 0, 0), input_zero, output)
    ob = int(result.shape[4])
    return te.compute((rows, columns), lambda r, c: result[0, c // ob, 0, r, c % ob], name="kdense_out")


def depthwise_int8_nchwc(data, kernel, bias, multiplier, strides, padding, input_zero: int,
                         output: tuple[int, int, int, str]):
    """data [N, C/b, H, W, b] * kernel [C/b, KH, KW, b], summed in int32 lane by lane (no dot product)."""
    n, c_blocks, h, w, lanes = (int(x) for x in data.shape)
    _, kh, kw, _ = (int(x) for x in kernel.shape)
    (sh, sw), (top, left, bottom, right) = strides, padding
    padded = pad(data, top, left, bottom, right, input_zero)
    ry, rx = te.reduce_axis((0, kh), "kh"), te.reduce_axis((0, kw), "kw")
    shape = (n, c_blocks, output_size(h, top, bottom, kh, sh), output_size(w, left, right, kw, sw), lanes)
    sums = te.compute(shape, lambda b, c, y, x, k: te.sum(
        padded[b, c, y * sh + ry, x * sw + rx, k].astype("int32") * kernel[c, ry, rx, k].astype("int32"),
        axis=[ry, rx]), name=INT8_DEPTHWISE)
    return _requantize(sums, bias, multiplier, output)


def _requantize(sums, bias, multiplier, output: tuple[int, int, int, str]):
    zero, low, high, dtype = output

    def requantize(b, oc, y, x, o):
        scaled = (sums[b, oc, y, x, o] + bias[oc, o]).astype("float32") * multiplier[oc, o]
        return _rounded(scaled, zero, (low, high), dtype)

    return te.compute(sums.shape, requantize, name=REQUANTIZE)


def _rounded(value, zero_point: int, bounds: tuple[int, int], dtype: str):
    """A float value in output steps as the quantized integer: rounded half to even, offset, clamped."""
    low, high = bounds
    return tirx.max(tirx.min(te.round(value).astype("int32") + zero_point, high), low).astype(dtype)


def add_int8(a, b, inputs: tuple[Quantization, Quantization], output: Quantization, clamp: tuple[int, int]):
    """dequantize(a) + dequantize(b), quantized, as ONNX Runtime's QLinearAdd computes it: each input's offset
    from its zero point times (its scale / the output scale), summed in float, rounded once."""
    qa, qb = inputs

    def value(*index):
        total = ((a[index].astype("int32") - qa.zero_point).astype("float32") * (qa.scale / output.scale)
                 + (b[index].astype("int32") - qb.zero_point).astype("float32") * (qb.scale / output.scale))
        return _rounded(total, output.zero_point, clamp, output.dtype)

    return te.compute(a.shape, value, name="kqadd")


def spatial_mean_int8(data, input: Quantization, output: Quantization):
    """GlobalAveragePool of a quantized [N, C(/b), H, W(, b)] tensor: the int32 sum over H and W, requantized
    once: round((sum - H*W*input zero point) * input scale / (output scale * H*W)) + output zero point."""
    shape = [int(x) for x in data.shape]
    height, width = shape[2], shape[3]
    ry, rx = te.reduce_axis((0, height), "h"), te.reduce_axis((0, width), "w")
    out_shape = (shape[0], shape[1], 1, 1, *shape[4:])
    sums = te.compute(out_shape, lambda n, c, y, x, *k: te.sum(data[(n, c, ry, rx, *k)].astype("int32"), axis=[ry, rx]),
                      name="kqsum")
    ratio = input.scale / (output.scale * height * width)

    def requantize(*index):
        centered = (sums[index] - height * width * input.zero_point).astype("float32")
        return _rounded(centered * ratio, output.zero_point, output.bounds, output.dtype)

    return te.compute(out_shape, requantize, name="kqmean")
