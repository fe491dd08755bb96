"""The blocked convolutions kiln emits (TE), with the block names its rules look for.

data [N, C/b, H, W, b] ("NCHW[b]c"), weights pre-packed at compile time:
conv2d [OC/ob, IC/ib, KH, KW, ib, ob], depthwise [C/b, KH, KW, b]; and the dense matmul, weights [N/b, K, b]."""

from __future__ import annotations

from tvm import te, tirx

PAD, CONV2D, DEPTHWISE = "kpad", "kconv", "kdwconv"
MATMUL = "matmul"  # also the block LegalizeOps makes of relax.matmul: one rule schedules both


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
    """data [M, K] x kernel [N/b, K, b] -> [M, N]. Each block of b columns reads its weights in one
    contiguous run; in [K, N] every k is a new row (at N = 1000, a new 4 KiB page per k)."""
    rows, depth = (int(x) for x in data.shape)
    blocks, _, block = (int(x) for x in kernel.shape)
    k = te.reduce_axis((0, depth), "k")
    return te.compute((rows, blocks * block), lambda i, j: te.sum(data[i, k] * kernel[j // block, k, j % block], axis=k),
                      name=MATMUL)
