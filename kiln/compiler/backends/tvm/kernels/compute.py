"""The blocked convolutions kiln emits (TE), with the block names its rules look for.

data [N, C/b, H, W, b] ("NCHW[b]c"), weights pre-packed at compile time:
conv2d [OC/ob, IC/ib, KH, KW, ib, ob], Winograd conv2d [16, OC/ob, IC, ob], depthwise [C/b, KH, KW, b]; the
dense matmul, weights [N/b, K, b]; and the softmax over the last axis."""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

PAD, CONV2D, DEPTHWISE = "kpad", "kconv", "kdwconv"
WINOGRAD_IN, WINOGRAD, WINOGRAD_OUT = "kwino_in", "kwino", "kwino_out"
MATMUL = "matmul"  # also the block LegalizeOps makes of relax.matmul: one rule schedules both
# TOPI's softmax names, which `softmax` keeps: one rule (schedules/softmax.py) schedules both
SOFTMAX_MAX, SOFTMAX_DELTA, SOFTMAX_EXP, SOFTMAX_SUM, SOFTMAX_NORM = (
    "T_softmax_maxelem", "T_softmax_delta", "T_fast_exp", "T_softmax_expsum", "T_softmax_norm")
PRECOMPUTED = "kpre_"  # the prefix of a table computed once and read many times (roi_align.py): never inlined


def pad(data, top: int, left: int, bottom: int, right: int, fill: float = 0.0):
    if top == left == bottom == right == 0:
        return data
    n, c, h, w, b = data.shape

    def value(i, j, y, x, k):
        inside = tirx.all(y >= top, y < h + top, x >= left, x < w + left)
        return tirx.if_then_else(inside, data[i, j, y - top, x - left, k], tirx.const(fill, data.dtype))

    return te.compute((n, c, h + top + bottom, w + left + right, b), value, name=PAD)


def output_size(size: int, before: int, after: int, kernel: int, stride: int) -> int:
    return (size + before + after - kernel) // stride + 1


def conv2d_nchwc(data, kernel, strides, padding):
    """data [N, IC/ib, H, W, ib] * kernel [OC/ob, IC/ib, KH, KW, ib, ob] -> [N, OC/ob, OH, OW, ob]."""
    n, _, h, w, _ = (int(x) for x in data.shape)
    oc_blocks, ic_blocks, kh, kw, ib, ob = (int(x) for x in kernel.shape)
    (sh, sw), (top, left, bottom, right) = strides, padding
    padded = pad(data, top, left, bottom, right)
    ico, ry, rx, ici = (te.reduce_axis((0, e), name) for e, name in ((ic_blocks, "ico"), (kh, "kh"), (kw, "kw"),
                                                                    (ib, "ici")))
    shape = (n, oc_blocks, output_size(h, top, bottom, kh, sh), output_size(w, left, right, kw, sw), ob)
    return te.compute(shape, lambda b, oc, y, x, o: te.sum(
        padded[b, ico, y * sh + ry, x * sw + rx, ici] * kernel[oc, ico, ry, rx, ici, o], axis=[ico, ry, rx, ici]),
        name=CONV2D)


def depthwise_nchwc(data, kernel, strides, padding):
    """data [N, C/b, H, W, b] * kernel [C/b, KH, KW, b] -> [N, C/b, OH, OW, b]."""
    n, c_blocks, h, w, lanes = (int(x) for x in data.shape)
    _, kh, kw, _ = (int(x) for x in kernel.shape)
    (sh, sw), (top, left, bottom, right) = strides, padding
    padded = pad(data, top, left, bottom, right)
    ry, rx = te.reduce_axis((0, kh), "kh"), te.reduce_axis((0, kw), "kw")
    shape = (n, c_blocks, output_size(h, top, bottom, kh, sh), output_size(w, left, right, kw, sw), lanes)
    return te.compute(shape, lambda b, c, y, x, k: te.sum(
        padded[b, c, y * sh + ry, x * sw + rx, k] * kernel[c, ry, rx, k], axis=[ry, rx]), name=DEPTHWISE)


def dense_packed(data, kernel):
    """data [..., M, K] x kernel [N/b, K, b] -> [..., M, N]: the leading dims are more rows (a transformer's
    [1, S, K] activations), so a bias, GELU or residual add on [..., M, N] still fuses into the kernel. Each block
    of b columns reads its weights in one contiguous run; in [K, N] every k is a new row (at N = 1000, a new
    4 KiB page per k)."""
    *rows, depth = (int(x) for x in data.shape)
    blocks, _, block = (int(x) for x in kernel.shape)
    k = te.reduce_axis((0, depth), "k")
    return te.compute((*rows, blocks * block), lambda *i: te.sum(
        data[(*i[:-1], k)] * kernel[i[-1] // block, k, i[-1] % block], axis=k), name=MATMUL)


def softmax(data):
    """Softmax over the last axis with TOPI's polynomial exp (LLVM has no vector exp), as topi.nn.fast_softmax
    computes it but for the exp of x - max <= 0 (`_exp_of_non_positive`) and the normalization: each exp times the
    reciprocal of the row's sum, one divide a row where TOPI divides every element."""
    *rows, columns = data.shape
    k = te.reduce_axis((0, columns), "k")
    largest = te.compute(rows, lambda *i: te.max(data[(*i, k)], axis=k), name=SOFTMAX_MAX)
    exp = _exp_of_non_positive(te.compute(data.shape, lambda *i: data[i] - largest[i[:-1]], name=SOFTMAX_DELTA))
    k = te.reduce_axis((0, columns), "k")
    total = te.compute(rows, lambda *i: te.sum(exp[(*i, k)], axis=k), name=SOFTMAX_SUM)
    one = tirx.const(1.0, data.dtype)
    return te.compute(data.shape, lambda *i: exp[i] * (one / total[i[:-1]]), name=SOFTMAX_NORM,
                      attrs={"axis": len(rows)})


# TOPI's fast_exp polynomial: exp(r) ~ 1 + r + r^2 (1/2 + r (1/6 + ...)) on r in [-ln 2 / 2, ln 2 / 2]
_EXP_TERMS = (0.00019875691214110702, 0.0013981999363750219, 0.008333452045917511, 0.041665796190500259,
              0.1666666567325592, 0.5)


def _exp_of_non_positive(delta):
    """exp(delta) for delta <= 0 as TOPI's fast_exp computes it (2^n times its polynomial of the remainder, 0 below
    -88.38), without the clamp from above and the final max that only positive arguments need, and n rounded in one
    instruction (nearbyint, where TOPI floors x + 0.5)."""
    dtype = delta.dtype

    def value(*i):
        x = tirx.max(delta[i], tirx.const(-88.3762626647949, dtype))
        n = tirx.nearbyint(x * tirx.const(1.4426950408889634, dtype))
        r = x - n * tirx.const(0.6931471805599453, dtype)
        poly = tirx.const(_EXP_TERMS[0], dtype)
        for term in _EXP_TERMS[1:]:
            poly = poly * r + tirx.const(term, dtype)
        power = tirx.reinterpret(dtype, (n.astype("int32") + 127) << 23)  # 2^n; 0 at n = -127
        return (poly * r * r + r + tirx.const(1.0, dtype)) * power

    return te.compute(delta.shape, value, name=SOFTMAX_EXP)


# Winograd F(2x2, 3x3) (Lavin & Gray 2015): Y = A^T [(G g G^T) * (B^T d B)] A for each 4x4 input tile d and its
# 2x2 outputs Y: 16 multiply-adds per input channel where a direct conv takes 36. Each row of B^T is
# d[p] + s * d[q] (the (p, q, s) below); each row r of A^T is m[r] + s * (m[r + 1] + m[r + 2]), s = 1 - 2r.
_INPUT_ROWS = ((0, 2, -1), (1, 2, 1), (2, 1, -1), (1, 3, -1))
KERNEL_ROWS = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])  # G


def winograd_weights(weight: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """OIHW 3x3 weights -> rows g rows^T for each output and input channel, as [16, IC, OC] (16 = the 4x4
    tile's positions)."""
    out_channels, in_channels = weight.shape[:2]
    return np.einsum("ai,ocij,bj->abco", rows, weight, rows).reshape(16, in_channels, out_channels)


def winograd_kernel(weight: np.ndarray, block: int) -> np.ndarray:
    """OIHW 3x3 weights -> G g G^T, packed [16, OC/block, IC, block]."""
    u = winograd_weights(weight.astype(np.float64), KERNEL_ROWS)
    u = u.reshape(16, u.shape[1], u.shape[2] // block, block).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(u, dtype=np.float32)


def _row(a, column: int, dtype: str):
    """Component `column` of _INPUT_ROWS[a], for a loop variable a."""
    values = [tirx.const(row[column], dtype) for row in _INPUT_ROWS]
    expr = values[-1]
    for i in range(len(values) - 2, -1, -1):
        expr = tirx.Select(a == i, values[i], expr)
    return expr


def winograd_tiles(data, padding, fill, value, dtype: str, name: str):
    """The transformed 4x4 input tiles [16, N, C/b, tiles, b] of a 3x3 stride-1 conv's data [N, C/b, H, W, b]
    padded by `padding` (with `fill`, and up to whole tiles), each input element read through `value` as
    `dtype`; and the output's height and width."""
    n, blocks, h, w, lanes = (int(x) for x in data.shape)
    top, left, bottom, right = padding
    oh, ow = output_size(h, top, bottom, 3, 1), output_size(w, left, right, 3, 1)
    rows, cols = -(-oh // 2), -(-ow // 2)
    padded = pad(data, top, left, bottom + 2 * rows - oh, right + 2 * cols - ow, fill)

    def transformed(xi, b, c, t, k):
        y, x = t // cols * 2, t % cols * 2

        def d(i, j):
            return value(padded[b, c, y + i, x + j, k])
        (pa, qa, sa), (pb, qb, sb) = ([_row(a, 0, "int32"), _row(a, 1, "int32"), _row(a, 2, dtype)]
                                      for a in (xi // 4, xi % 4))
        return d(pa, pb) + sb * d(pa, qb) + sa * (d(qa, pb) + sb * d(qa, qb))

    return te.compute((16, n, blocks, rows * cols, lanes), transformed, name=name), (oh, ow)


def winograd_output(products, size: tuple[int, int], name: str, finish=lambda value: value):
    """The conv's output [N, OC/b, OH, OW, b] from the tiles' products [16, N, OC/b, tiles, b]: A^T m A, then
    `finish`."""
    _, n, blocks, _, lanes = (int(x) for x in products.shape)
    oh, ow = size
    cols = -(-ow // 2)

    def output(b, oc, y, x, o):
        t, r, s = y // 2 * cols + x // 2, y % 2, x % 2

        def row(j):
            def m(i):
                return products[i * 4 + j, b, oc, t, o]
            return m(r) + (1 - 2 * r).astype(products.dtype) * (m(r + 1) + m(r + 2))
        return finish(row(s) + (1 - 2 * s).astype(products.dtype) * (row(s + 1) + row(s + 2)))

    return te.compute((n, blocks, oh, ow, lanes), output, name=name)


def conv2d_winograd(data, kernel, padding):
    """A 3x3 stride-1 conv, data [N, IC/ib, H, W, ib] * kernel [16, OC/ob, IC, ob] (winograd_kernel) ->
    [N, OC/ob, OH, OW, ob] in three blocks: WINOGRAD_IN, the transformed tiles [16, N, IC/ib, tiles, ib];
    WINOGRAD, their products with the kernel summed over IC [16, N, OC/ob, tiles, ob]; WINOGRAD_OUT, the output."""
    ib = int(data.shape[-1])
    _, oc_blocks, _, ob = (int(x) for x in kernel.shape)
    tiles, size = winograd_tiles(data, padding, 0.0, lambda x: x, "float32", WINOGRAD_IN)
    ico, ici = te.reduce_axis((0, int(data.shape[1])), "ico"), te.reduce_axis((0, ib), "ici")
    products = te.compute((16, int(data.shape[0]), oc_blocks, int(tiles.shape[3]), ob), lambda xi, b, oc, t, o: te.sum(
        tiles[xi, b, ico, t, ici] * kernel[xi, oc, ico * ib + ici, o], axis=[ico, ici]), name=WINOGRAD)
    return winograd_output(products, size, WINOGRAD_OUT)
