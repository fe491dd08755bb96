"""MXNet Reshape's special codes, resolved against a static input shape into a plain target shape.

0 copies the input dim, -1 infers one dim, -2 copies all remaining dims, -3 merges two consecutive
dims, -4 splits one dim into the next two given values (one may be -1). With reverse=True MXNet
reverses both the input shape and the codes, resolves, and reverses the result; so does this.
"""

from __future__ import annotations

import math

from kiln.compiler.frontends.mxnet.attrs import Unsupported


def infer_reshape(shape: tuple[int, ...], spec: tuple[int, ...], *, reverse: bool = False) -> tuple[int, ...]:
    if reverse:
        return tuple(reversed(_resolve(tuple(reversed(shape)), tuple(reversed(spec)))))
    return _resolve(shape, spec)


def _resolve(shape: tuple[int, ...], spec: tuple[int, ...]) -> tuple[int, ...]:
    def fail(why: str) -> Unsupported:
        return Unsupported(f"shape={spec} on input {shape}: {why}")

    out: list[int] = []
    source, index = 0, 0
    while index < len(spec):
        code = spec[index]
        if code > 0 or code == -1:
            out.append(code)
            source += 1
        elif code == 0:
            if source >= len(shape):
                raise fail("0 copies a dim the input lacks")
            out.append(shape[source])
            source += 1
        elif code == -2:
            out.extend(shape[source:])
            source = len(shape)
        elif code == -3:
            if source + 1 >= len(shape):
                raise fail("-3 merges two dims the input lacks")
            out.append(shape[source] * shape[source + 1])
            source += 2
        elif code == -4:
            if index + 2 >= len(spec) or source >= len(shape):
                raise fail("-4 needs a dim to split and two sizes after it")
            first, second = spec[index + 1], spec[index + 2]
            whole = shape[source]
            if first == -1 and second > 0:
                first = whole // second
            elif second == -1 and first > 0:
                second = whole // first
            out.extend((first, second))
            source += 1
            index += 2
        else:
            raise fail(f"unknown code {code}")
        index += 1
    if out.count(-1) > 1:
        raise fail("more than one -1")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(shape) // known if known else 0
    if math.prod(out) != math.prod(shape):
        raise fail(f"gives {tuple(out)}, which does not hold the same number of elements")
    return tuple(out)
