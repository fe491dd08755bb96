"""The integer half of the NCHW[b]c rewrite: a QDQ model's quantized ops (qdq_match.py) as integer
kernels (integer.py) in the blocked layout, each recorded in `report`: int8, or float and why."""

from __future__ import annotations

import functools
import math

from tvm import relax

from kiln.compiler.backends.tvm.kernels import integer
from kiln.compiler.backends.tvm.kernels.compute import output_size
from kiln.compiler.backends.tvm.kernels.intrinsics import DotProduct
from kiln.compiler.backends.tvm.rewrite.qdq_match import QdqMatcher, QuantizedAdd


# Ops that only move or relabel values: quantizing their result is exact, float or not.
DATA_MOVEMENT = frozenset({"reshape", "permute_dims", "flatten", "layout_transform", "squeeze", "expand_dims"})


class IntegerRewrites:
    def __init__(self, layout, isa: DotProduct | None, function: relax.Function):
        """`layout`: the layout rewriter whose block builder, layouts and values these rewrites use, rewriting
        `function`."""
        self.layout, self.isa = layout, isa
        self.matcher = QdqMatcher(function)
        self.report: list[dict] = []

    def rewrite(self, var):
        """The quantized op ending at quantize binding `var` as an integer kernel; None keeps it float."""
        if self.isa is None:
            return self.conv(var)  # reports why it stays float
        if (pool := self.matcher.max_pool(var)) is not None and pool.args[0] in self.matcher.values:
            self.report.append({"op": "max_pool", "kernel": "int8"})
            return self.layout.max_pool(pool, data=self.matcher.values[pool.args[0]].args[0])
        if (add := self.matcher.add(var)) is not None:
            return self.add(add)
        if (concat := self.matcher.concat(var)) is not None:
            return self.concat(*concat)
        if (mean := self.matcher.spatial_mean(var)) is not None:
            return self.spatial_mean(*mean)
        return self.conv(var)

    def spatial_mean(self, data, data_q, output):
        block = self.layout.block_of(data)
        self.report.append({"op": "global_avg_pool", "kernel": "int8"})
        te_func = functools.partial(integer.spatial_mean_int8, input=data_q, output=output)
        return self.layout.bb.emit(self.layout.bb.call_te(te_func, self.layout.env[data][0],
                                                          primfunc_name_hint="kqmean")), block

    def concat(self, parts: list, axis: int):
        """Blocked when every part is in the same channel block (a channel concat of whole blocks)."""
        blocks = {self.layout.block_of(x) for x in parts}
        block = blocks.pop() if len(blocks) == 1 and axis == 1 else None
        self.report.append({"op": "concat", "kernel": "int8"})
        operands = [self.layout.env[x][0] for x in parts] if block else [self.layout.plain(x) for x in parts]
        return self.layout.bb.emit(relax.op.concat(operands, axis=axis)), block

    def add(self, add: QuantizedAdd):
        block = self.layout.block_of(add.a) or self.layout.block_of(add.b)
        if block and add.a.ty.ndim != 4:
            return None
        self.report.append({"op": "add", "kernel": "int8"})
        operands = [self.layout.blocked(x, block) if block else self.layout.plain(x) for x in (add.a, add.b)]
        te_func = functools.partial(integer.add_int8, inputs=(add.a_input, add.b_input), output=add.output,
                                    clamp=add.clamp)
        return self.layout.bb.emit(self.layout.bb.call_te(te_func, *operands, primfunc_name_hint="kqadd")), block

    def conv(self, var):
        """The quantized conv ending at quantize binding `var` as one integer kernel; None keeps it float."""
        conv = self.matcher.conv(var)
        if conv is None:
            self._report_unmatched(var)
            return None
        entry = ({"op": "dense", "shape": list(conv.weight.shape[:2])} if conv.dense else
                 {"op": "conv2d", "shape": list(conv.weight.shape), "strides": list(conv.strides),
                  "groups": conv.groups})
        if self.isa is None:
            self.report.append({**entry, "kernel": "float", "reason": "the target has no int8 dot product kiln uses"})
            return None
        output = (conv.output.zero_point, *conv.clamp, conv.output.dtype)
        winograd = self._winograd(conv, output)
        if winograd is not None:
            self.report.append({**entry, "kernel": "int8", "isa": self.isa.pair_name})
            return winograd
        isa, in_block, packed = self._pack(conv, self.isa)
        if isinstance(packed, str) and self.isa.narrow is not None:
            narrow = self._pack(conv, self.isa.narrow)
            if not isinstance(narrow[2], str):
                isa, in_block, packed = narrow
        if isinstance(packed, str):
            self.report.append({**entry, "kernel": "float", "reason": packed})
            return None
        self.report.append({**entry, "kernel": "int8", "isa": isa.name})
        if conv.dense:
            return self._dense(conv, packed, output), None
        depthwise = integer.is_depthwise(conv)
        kernel = integer.depthwise_int8_nchwc if depthwise else integer.conv2d_int8_nchwc
        te_func = functools.partial(kernel, strides=conv.strides, padding=conv.padding,
                                    input_zero=conv.input.zero_point, output=output)
        if conv.groups > 1 and not depthwise:
            te_func = functools.partial(te_func, groups=conv.groups)
        bb = self.layout.bb
        result = bb.emit(bb.call_te(te_func, self.layout.blocked(conv.data, in_block), self.layout.const(packed.weight),
                                    self.layout.const(packed.bias), self.layout.const(packed.multiplier),
                                    primfunc_name_hint=integer.INT8_DEPTHWISE if depthwise else integer.INT8_CONV))
        return result, packed.out_block

    def _dense(self, conv, packed: integer.PackedConv, output: tuple[int, int, int, str]):
        """[..., M, K] x [K, N] as the kernel over [rows, K] (plain): a transformer's activations stay row-major,
        with no copy into the blocked layout and back around each linear layer."""
        bb = self.layout.bb
        leading, (columns, depth) = [int(d) for d in list(conv.data.ty.shape)[:-1]], conv.weight.shape[:2]
        rows = bb.emit(relax.op.reshape(self.layout.plain(conv.data), [math.prod(leading), depth]))
        te_func = functools.partial(integer.dense_int8_rows, input_zero=conv.input.zero_point, output=output,
                                    columns=int(columns))
        result = bb.emit(bb.call_te(te_func, rows, self.layout.const(packed.weight), self.layout.const(packed.bias),
                                    self.layout.const(packed.multiplier), primfunc_name_hint=integer.INT8_CONV))
        return bb.emit(relax.op.reshape(result, [*leading, columns]))

    def _pack(self, conv, isa: DotProduct) -> tuple[DotProduct, int, integer.PackedConv | str]:
        in_block = integer.input_block(conv, isa, self.layout.block_of(conv.data))
        return isa, in_block, integer.pack(conv, isa, in_block)

    def _winograd(self, conv, output: tuple[int, int, int, str]):
        """The quantized conv as the integer Winograd kernel where the target has it and it pays; else None."""
        if self.isa.pair_intrinsic is None or conv.dense or conv.groups != 1:
            return None
        top, left, bottom, right = conv.padding
        n, _, h, w = (int(d) for d in conv.data.ty.shape)
        outputs = n * output_size(h, top, bottom, 3, 1) * output_size(w, left, right, 3, 1)
        if not self.layout.winograd(conv.weight.shape, conv.strides, outputs, self.isa.pair_min_work,
                                    self.isa.pair_min_channels):
            return None
        packed = integer.pack_winograd(conv, self.isa)
        if isinstance(packed, str):
            return None
        bb = self.layout.bb
        te_func = functools.partial(integer.conv2d_winograd_int8, padding=conv.padding,
                                    input_zero=conv.input.zero_point, output=output)
        result = bb.call_te(te_func, self.layout.blocked(conv.data, packed.in_block), self.layout.const(packed.weight),
                            self.layout.const(packed.bias), self.layout.const(packed.multiplier),
                            primfunc_name_hint=integer.INT8_WINOGRAD)
        return bb.emit(result), packed.out_block

    def _report_unmatched(self, var) -> None:
        """A quantized result no integer kernel produces: listed unless it only moves data."""
        op = self.matcher.producer(var)
        if op is not None and op not in DATA_MOVEMENT:
            self.report.append({"op": op, "kernel": "float", "reason": f"no integer kernel for {op}"})
