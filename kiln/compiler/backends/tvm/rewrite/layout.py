"""The NCHW[b]c layout rewrite of a Relax `main` (b = the target's fp32 vector lanes).

conv2d with constant OIHW weights (groups 1) becomes the blocked conv of compute.py
with its weights re-laid out in numpy (a large 3x3 stride-1 one the Winograd conv, its weights
transformed); depthwise likewise. Output channels that no block divides (a detection head's 84 or 75) are
computed padded with zero filters to whole blocks and cut back in NCHW. Elementwise ops (with per-channel or
scalar constants), activations, max-pooling and global pooling stay blocked; anything else gets its input
transformed back to NCHW once (memoized). So layout transforms appear only where the graph
leaves the blocked region, e.g. the input image and the flatten before a classifier.

A matmul of any [..., M, K] data by a constant [K, N] becomes compute.dense_packed, keeping the data's
leading dims so a transformer's bias, GELU or residual add fuses after it; erf, tanh, sigmoid and the exp of a
softmax over its last axis become vectorizable polynomials, squares and cubes multiplications."""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax, te, topi

from kiln.compiler.backends.tvm.kernels import compute
from kiln.compiler.backends.tvm.rewrite.entries import SharedConstants
from kiln.compiler.backends.tvm.rewrite.fold import fold
from kiln.compiler.backends.tvm.rewrite.quantized import IntegerRewrites
from kiln.compiler.backends.tvm.schedules.common import CpuSpec

_BINARY = {"relax.add": relax.op.add, "relax.multiply": relax.op.multiply, "relax.subtract": relax.op.subtract,
           "relax.divide": relax.op.divide, "relax.maximum": relax.op.maximum, "relax.minimum": relax.op.minimum}
_UNARY = {"relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh"}
_QDQ = {"relax.quantize", "relax.dequantize"}
_CLAMPS = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}  # ONNX Clip imports as call_tir of these
Const = tvm.ir.expr.GenericConst
_STAGED = "kiln_"  # a rewritten function's name until the original is dropped


def to_nchwc(mod: tvm.IRModule, spec: CpuSpec, report: list[dict] | None = None) -> tvm.IRModule:
    """Every Relax function of `mod` in NCHW[b]c, its quantized convs as integer kernels where spec.int8 allows;
    `report`, when given, gets one entry per quantized conv of `main`: what it became, or why it stays in float."""
    rewriter = _Rewriter(mod, spec)
    result = relax.transform.DeadCodeElimination()(rewriter.run())  # the float ops integer kernels replaced
    if report is not None:
        report.extend(rewriter.report)
    return result


def _fast_sigmoid(x):
    exp = topi.fast_exp(topi.negative(x))
    return te.compute(x.shape, lambda *i: tvm.tirx.const(1.0, x.dtype) / (1.0 + exp(*i)), name="sigmoid")


def _op_name(call) -> str | None:
    return getattr(call.op, "name", None)


class _Rewriter:
    def __init__(self, mod: tvm.IRModule, spec: CpuSpec):
        self.mod, self.spec, self.lanes, self.float_convs = mod, spec, spec.lanes, spec.float_convs
        self.winograd_work = spec.winograd_work
        self.bb = relax.BlockBuilder(mod)
        self.constants = SharedConstants()  # see const()
        self.env: dict = {}  # original var -> (new expr, block size or None for NCHW)
        self.transforms: dict = {}
        self.integer: IntegerRewrites  # the function being rewritten's (run)
        self.report: list[dict] = []

    # -- layouts --------------------------------------------------------------------------------
    def to_blocked(self, x, block: int):
        """x in NCHW[block]c; channels short of a whole block (an RGB image for an integer kernel) padded with 0."""
        key = (x, block)
        if key not in self.transforms:
            whole = int(x.ty.shape[1]) % block == 0
            self.transforms[key] = self.bb.emit(relax.op.layout_transform(
                x, lambda n, c, h, w: (n, c // block, h, w, c % block), pad_value=None if whole else 0))
        return self.transforms[key]

    def to_plain(self, x, block: int):
        key = (x, -block)
        if key not in self.transforms:
            self.transforms[key] = self.bb.emit(relax.op.layout_transform(
                x, lambda n, c, h, w, b: (n, c * block + b, h, w)))
        return self.transforms[key]

    def plain(self, expr):
        if isinstance(expr, relax.Tuple):
            return relax.Tuple([self.plain(x) for x in expr.fields])
        if isinstance(expr, relax.TupleGetItem):
            return relax.TupleGetItem(self.plain(expr.tuple_value), expr.index)
        if expr in self.env:
            new, block = self.env[expr]
            return self.to_plain(new, block) if block else new
        return expr

    def blocked(self, expr, block: int):
        new, current = self.env.get(expr, (expr, None))
        if current == block:
            return new
        return self.to_blocked(self.to_plain(new, current) if current else new, block)

    def block_of(self, expr) -> int | None:
        return self.env[expr][1] if expr in self.env else None

    def const(self, array: np.ndarray) -> relax.Constant:
        """`array` as a constant, one object with an equal one of another function: the functions of a range hold
        the same weights (rewrite/entries.py) and so pack and fold them alike, which held a copy per function
        while compiling."""
        array = np.asarray(array)
        contiguous = array if array.flags.c_contiguous else np.ascontiguousarray(array)  # which makes 0-d 1-d
        return self.constants.share(contiguous, lambda: relax.const(contiguous))

    def constant(self, expr) -> np.ndarray | None:
        if not isinstance(expr, Const) and expr in self.env and self.env[expr][1] is None:
            expr = self.env[expr][0]
        return expr.value.numpy() if isinstance(expr, Const) else None

    def _block_size(self, channels: int) -> int:
        return self.spec.block(channels) or (channels if channels <= 4 else 1)  # e.g. an RGB input: NCHW3c

    def _channel_constant(self, expr, channels: int, block: int):
        """A scalar, or a per-channel [C,1,1]/[1,C,1,1] constant as [1, C/b, 1, 1, b]; else None."""
        value = self.constant(expr)
        if value is None:
            return None
        if value.size == 1:
            return relax.const(value.reshape(()))
        if value.size == channels and value.ndim >= 3 and value.shape[-2:] == (1, 1):
            return self.const(value.reshape(1, channels // block, block, 1, 1).transpose(0, 1, 3, 4, 2))
        return None

    # -- ops ------------------------------------------------------------------------------------
    def conv2d(self, call):
        attrs, (data, weight) = call.attrs, call.args
        w = self.constant(weight)
        if (w is None or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or data.ty.dtype != "float32"
                or tuple(int(d) for d in attrs.dilation) != (1, 1)):
            return None
        channels, groups = int(data.ty.shape[1]), int(attrs.groups)
        kept = w.shape[0]
        if groups == 1 and not self.spec.block(kept):
            narrow = self.spec.narrow_lanes or self.lanes
            width = narrow if kept <= narrow else self.lanes
            w = np.concatenate([w, np.zeros((-kept % width, *w.shape[1:]), w.dtype)])
        out_channels, in_per_group, kh, kw = w.shape
        strides, padding = [int(s) for s in attrs.strides], [int(p) for p in attrs.padding]
        outputs = math.prod(int(d) for d in call.ty.shape) // kept
        if groups == 1 and self.winograd(w.shape, strides, outputs):
            ib = ob = self.lanes
            packed, te_func, name = compute.winograd_kernel(w, ob), compute.conv2d_winograd, compute.WINOGRAD
            options = (padding,)
        elif groups == 1 and self.spec.block(out_channels):
            ib, ob = self._block_size(channels), self.spec.block(out_channels)
            packed = w.reshape(out_channels // ob, ob, channels // ib, ib, kh, kw).transpose(0, 2, 4, 5, 3, 1)
            te_func, name, options = compute.conv2d_nchwc, compute.CONV2D, (strides, padding)
        elif groups == channels == out_channels and in_per_group == 1 and self.spec.block(channels):
            ib = ob = self.spec.block(channels)
            packed = w.reshape(channels // ob, ob, kh, kw).transpose(0, 2, 3, 1)
            te_func, name, options = compute.depthwise_nchwc, compute.DEPTHWISE, (strides, padding)
        else:
            return None
        result = self.bb.emit(self.bb.call_te(te_func, self.blocked(data, ib),
                                              self.const(packed), *options,
                                              primfunc_name_hint=name))
        if kept == out_channels:
            return result, ob
        return self.bb.emit(relax.op.strided_slice(self.to_plain(result, ob), [1], [0], [kept])), None

    def winograd(self, weight_shape: tuple[int, ...], strides, outputs: int, min_work: int = 0,
                 min_channels: int = 0) -> bool:
        """Whether a group-1 conv runs as Winograd F(2x2, 3x3): 3x3, stride 1, whole channel blocks, and at least
        spec.winograd_work multiply-adds (`outputs`: output pixels over the batch); below that its three passes
        cost more than they save. A kernel of its own (the integer one) may ask for more work and input channels."""
        out_channels, channels, kh, kw = weight_shape
        return (self.winograd_work > 0 and (kh, kw) == (3, 3) and tuple(int(s) for s in strides) == (1, 1)
                and channels % self.lanes == 0 and out_channels % self.lanes == 0 and channels >= min_channels
                and outputs * out_channels * channels * kh * kw >= max(self.winograd_work, min_work))

    def matmul(self, call):
        """x [..., M, K] x constant [K, N] (a Gemm's transposed weights already folded) as compute.dense_packed,
        its weights [N/b, K, b]; the output keeps x's leading dims, so the epilogue after it fuses unchanged."""
        data, weight = call.args
        w = self.constant(weight)
        if w is None or w.ndim != 2 or w.dtype != np.float32 or data.ty.ndim < 2 or data.ty.dtype != "float32" \
                or w.shape[1] % self.lanes or not all(isinstance(d, tvm.tirx.IntImm) for d in data.ty.shape):
            return None
        depth, columns = w.shape
        packed = w.reshape(depth, columns // self.lanes, self.lanes).transpose(1, 0, 2)
        result = self.bb.call_te(compute.dense_packed, self.plain(data), self.const(packed),
                                 primfunc_name_hint=compute.MATMUL)
        return self.bb.emit(result), None

    def erf(self, call):
        """erf (a BERT's GELU) as TOPI's rational approximation, max error 3e-7: LLVM has no vector erf, so
        relax.erf calls libm's erff once per element and its epilogue runs scalar. Any layout alike."""
        new, block = self.env.get(call.args[0], (call.args[0], None))
        if call.ty.dtype != "float32":
            return None
        return self.bb.emit(self.bb.call_te(topi.fast_erf, new, primfunc_name_hint="erf")), block

    def tanh(self, call):
        """tanh (GPT-2's GELU) as TOPI's rational approximation (Eigen's): TVM computes tanh from exp, which LLVM
        calls libm for once per element. Any layout alike; arithmetic.py's series below 0.01 stays around it."""
        new, block = self.env.get(call.args[0], (call.args[0], None))
        if call.ty.dtype != "float32":
            return None
        return self.bb.emit(self.bb.call_te(topi.fast_tanh, new, primfunc_name_hint="tanh")), block

    def sigmoid(self, call):
        """sigmoid (SiLU's, and a squeeze-excitation's gate) as 1 / (1 + exp(-x)) with TOPI's polynomial exp: LLVM
        has no vector exp, so relax's sigmoid calls libm's expf once per element, which made EfficientNet's
        conv + SiLU kernels several times slower than their convolutions. Any layout alike. Not on a dequantized
        input: the polynomial reads its input 17 times, and with the quantize and dequantize before it inlined, each
        a clip that NaN propagation turns into selects, the kernel's expression grows until TVM's simplifier takes
        minutes over it (INT8 EfficientNet-B0: 347 s to compile, against 47 s with libm's expf)."""
        producer = self.integer.matcher.values.get(call.args[0])
        if isinstance(producer, relax.Call) and _op_name(producer) == "relax.dequantize":
            return None
        new, block = self.env.get(call.args[0], (call.args[0], None))
        return self.bb.emit(self.bb.call_te(_fast_sigmoid, new, primfunc_name_hint="sigmoid")), block

    def power(self, call):
        """x ** 2 and x ** 3 (GPT-2's GELU cubes) as multiplications: LLVM calls libm's powf once per element. Any
        layout alike."""
        base, exponent = call.args
        value = self.constant(exponent)
        if (call.ty.dtype != "float32" or value is None or value.size != 1 or call.ty.ndim != base.ty.ndim
                or float(value.reshape(())) not in (2, 3)):  # a [1, 1] exponent would broadcast a 1-D base
            return None
        new, block = self.env.get(base, (base, None))
        square = self.bb.emit(relax.op.multiply(new, new))
        return (square if float(value.reshape(())) == 2 else self.bb.emit(relax.op.multiply(square, new))), block

    def softmax(self, call):
        """A softmax over the last axis (attention's scores) with TOPI's polynomial exp, max relative error ~1e-7
        (compute.softmax): LLVM has no vector exp, so relax's softmax calls libm's expf once per element, twice once
        the exp is inlined into both the sum and the normalization. The schedule rule (schedules/softmax.py)
        computes it once per row."""
        data = call.args[0]
        axis, ndim = int(call.attrs.axis), data.ty.ndim
        if call.ty.dtype != "float32" or ndim < 1 or axis not in (-1, ndim - 1):
            return None
        return self.bb.emit(self.bb.call_te(compute.softmax, self.plain(data), primfunc_name_hint="softmax")), None

    def binary(self, var, call):
        a, b = call.args
        block = self.block_of(a) or self.block_of(b)
        if not block or var.ty.ndim != 4:
            return None
        channels, shape = int(var.ty.shape[1]), [int(d) for d in var.ty.shape]
        operands = []
        for x in (a, b):
            if self.block_of(x) == block:
                operands.append(self.env[x][0])
            elif self.constant(x) is not None:
                operands.append(self._channel_constant(x, channels, block))
            elif x not in self.env and [int(d) for d in x.ty.shape] == shape:  # a graph input of the same shape
                operands.append(self.blocked(x, block))
            else:
                operands.append(None)
        if None in operands:
            return None
        return self.bb.emit(_BINARY[_op_name(call)](*operands)), block

    def unary(self, call):
        new, block = self.env[call.args[0]]
        return self.bb.emit(relax.Call(call.op, [new, *call.args[1:]], call.attrs)), block

    def _per_tensor(self, call) -> bool:
        """A quantize/dequantize with one scale and zero point: it applies to any layout alike."""
        return all(value is not None and value.size == 1 for value in map(self.constant, call.args[1:]))

    def clamp(self, call):
        fields = call.args[1].fields
        clamp = next((f for prefix, f in _CLAMPS.items() if call.args[0].name_hint.startswith(prefix)), None)
        bound = self.constant(fields[1]) if len(fields) == 2 else None
        if clamp is None or bound is None or bound.size != 1 or not self.block_of(fields[0]):
            return None
        new, block = self.env[fields[0]]
        return self.bb.emit(clamp(new, relax.const(bound.reshape(())))), block

    def max_pool(self, call, data=None):
        """call's max_pool2d in the blocked layout, on `data` (default: its own input)."""
        (new, block), a = self.env[call.args[0] if data is None else data], call.attrs
        layout = f"NCHW{block}c" if block else "NCHW"
        return self.bb.emit(relax.op.nn.max_pool2d(new, a.pool_size, a.strides, a.padding, a.dilation, a.ceil_mode,
                                                   a.count_include_pad, layout=layout, out_layout=layout)), block

    def spatial_reduce(self, call):
        """A mean or max over H and W that keeps them (GlobalAveragePool, GlobalMaxPool, a squeeze-excitation's
        pool) on the blocked data: in NCHW it would need the whole feature map transformed back first."""
        axes = sorted(int(a) % 4 for a in call.attrs.axis) if call.attrs.axis is not None else None
        if axes != [2, 3] or not call.attrs.keepdims or call.args[0].ty.ndim != 4:
            return None
        new, block = self.env[call.args[0]]
        reduce = relax.op.mean if _op_name(call) == "relax.mean" else relax.op.max
        return self.bb.emit(reduce(new, axis=[2, 3], keepdims=True)), block

    def rewrite(self, var, call):
        """(new expr, block) for one binding's call, or None to keep it in NCHW."""
        op = _op_name(call)
        if op == "relax.nn.conv2d":
            return self.conv2d(call) if self.float_convs else None
        if op == "relax.matmul":
            return self.matmul(call) if self.float_convs else None
        if op == "relax.erf":
            return self.erf(call) if self.float_convs else None
        if op == "relax.nn.softmax":
            return self.softmax(call) if self.float_convs else None
        if op == "relax.tanh" and self.float_convs and call.ty.dtype == "float32":
            return self.tanh(call)
        if op == "relax.sigmoid" and self.float_convs and call.ty.dtype == "float32" and (fast := self.sigmoid(call)):
            return fast  # (a dequantized input keeps relax's sigmoid, blocked as the other unary ops below)
        if op == "relax.power" and self.float_convs:
            return self.power(call)
        if op in _BINARY:
            return self.binary(var, call)
        if op in _UNARY and self.block_of(call.args[0]):
            return self.unary(call)
        if op in _QDQ and self.block_of(call.args[0]) and self._per_tensor(call):
            return self.unary(call)
        if op == "relax.call_tir" and len(call.args) > 1 and isinstance(call.args[1], relax.Tuple) \
                and call.args[1].fields and self.block_of(call.args[1].fields[0]):
            return self.clamp(call)
        if op == "relax.nn.max_pool2d" and self.block_of(call.args[0]):
            return self.max_pool(call)
        if op in ("relax.mean", "relax.max") and self.block_of(call.args[0]):
            return self.spatial_reduce(call)
        return None

    def bind(self, var, value) -> None:
        if not isinstance(value, relax.Call):
            self.env[var] = (self.bb.emit(self.plain(value)), None)
            return
        folded = fold(value, _op_name(value), self.constant)
        if folded is not None:
            self.env[var] = (self.const(folded), None)
            return
        result = self.integer.rewrite(var) if _op_name(value) == "relax.quantize" else None
        result = result or self.rewrite(var, value)
        if result is None:
            args = [self.plain(x) for x in value.args]
            result = self.bb.emit(relax.Call(value.op, args, value.attrs, value.ty_args)), None
        self.env[var] = result

    def match_cast(self, binding) -> None:
        """Re-emitted as a match_cast, in NCHW: it defines the symbolic dims of a shape known only at run time (a
        Squeeze's axes input, nonzero's count), which a plain binding would leave undefined for VMShapeLower."""
        value = binding.value
        if isinstance(value, relax.Call):
            value = relax.Call(value.op, [self.plain(x) for x in value.args], value.attrs, value.ty_args)
        self.env[binding.var] = (self.bb.match_cast(self.plain(value), binding.ty), None)

    def run(self) -> tvm.IRModule:
        """Every Relax function rewritten (a batch-range library has one per batch size); the integer report is
        `main`'s, since the others run the same model at other batch sizes."""
        names = [gv.name_hint for gv, func in self.mod.functions.items() if isinstance(func, relax.Function)]
        for name in names:
            self.integer = IntegerRewrites(self, self.spec.int8, self.mod[name])
            self.constants.next_function()
            self._rewrite_function(name)
            if name == "main":
                self.report = self.integer.report
        built = self.bb.get()
        kept = {gv: f for gv, f in built.functions.items() if gv.name_hint not in names
                and not gv.name_hint.startswith(_STAGED)}
        result = tvm.IRModule(kept)
        for name in names:
            result[name] = built[_STAGED + name].with_attr("global_symbol", name)
        return result

    def _rewrite_function(self, name: str) -> None:
        function = self.mod[name]
        with self.bb.function(_STAGED + name, list(function.params),
                              attrs=dict(function.attrs) if function.attrs else None):
            with self.bb.dataflow():
                for block in function.body.blocks:
                    for binding in block.bindings:
                        if isinstance(binding, relax.MatchCast):
                            self.match_cast(binding)
                        else:
                            self.bind(binding.var, binding.value)
                output = self.bb.emit_output(self.plain(function.body.body))
            self.bb.emit_func_output(output)
