"""Decide what to quantize: which nodes, and the quantization parameters of every tensor they touch.

The result, a `Plan`, is pure annotation; `qdq.insert_qdq` applies it to the graph in one pass.
Weights (input 1 of Conv, ConvTranspose, Gemm, MatMul, when constant) are int8 symmetric per
output channel; biases int32 at input scale x weight scale; activations uint8 or int8 affine
per tensor, from the calibrated ranges. A Concat's inputs and output share one range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kiln.calibration.observers import TensorRange
from kiln.compiler.onnx_graph import is_onnx_op
from kiln.errors import InputError, SettingError
from kiln.quantization.config import ActivationType, KeepFloat, QuantizeOptions

if TYPE_CHECKING:
    import onnx

WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Not Mul, nor an Add of a constant but a bias: they have no integer kernel, so quantizing them would only add
# rounding, and chains of them (GELU's Div, Erf, Add, Mul, Mul) fused make an expression that grows with every quantize
QUANTIZABLE = WEIGHTED | {"Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip"}
BIASED = frozenset({"Conv", "MatMul"})  # weighted ops whose bias an exporter may write as a separate Add


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int
    dtype: ActivationType

    @classmethod
    def of(cls, bounds: TensorRange, dtype: ActivationType) -> "QParams":
        qmin, qmax = (0, 255) if dtype is ActivationType.UINT8 else (-128, 127)
        span = bounds.hi - bounds.lo
        if span <= 0.0:
            return cls(1.0, 0, dtype)
        scale = span / (qmax - qmin)
        return cls(scale, int(np.clip(round(qmin - bounds.lo / scale), qmin, qmax)), dtype)


@dataclass(frozen=True)
class Plan:
    nodes: frozenset[str]  # names of the nodes to quantize
    activations: dict[str, QParams]  # tensor name -> its quantization
    excluded: tuple[str, ...]  # quantizable nodes kept in float, in graph order
    reduce_range: bool  # 7-bit weights


def make_plan(model: "onnx.ModelProto", ranges: dict[str, TensorRange], options: QuantizeOptions,
              also_exclude: tuple[str, ...] = (), only: str | None = None) -> Plan:
    """The plan for `model` (options resolved `for_target`); `also_exclude` adds node names, `only`
    quantizes that one node alone."""
    activations = activation_tensors(model)
    passive = {name for name in ranges if name not in activations}
    ranges = {name: bounds for name, bounds in ranges.items() if name in activations}
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    constants = {t.name for t in model.graph.initializer}
    candidates = [node for node in model.graph.node if _quantizable(node, ranges, passive, producers, constants)]
    if not candidates:
        ops = sorted({node.op_type for node in model.graph.node})
        raise InputError(f"nothing to quantize: the model's ops ({', '.join(ops)}) include none of "
                         f"{', '.join(sorted(QUANTIZABLE))} with float inputs; compile it without --int8")
    kept = _excluded(model, candidates, options) | set(also_exclude)
    if only is not None:
        kept = {node.name for node in candidates} - {only}
    chosen = [node for node in candidates if node.name not in kept]
    if not chosen:
        raise SettingError(QuantizeOptions, f"nothing to quantize: {{exclude}}/{{keep_float}} keep all "
                                            f"{len(candidates)} quantizable nodes in float; exclude fewer")
    activations = _activation_ranges(model, chosen, ranges, constants)
    return Plan(frozenset(node.name for node in chosen),
                {name: QParams.of(bounds, options.activations) for name, bounds in activations.items()},
                tuple(node.name for node in candidates if node.name in kept), bool(options.reduce_range))


def activation_tensors(model: "onnx.ModelProto") -> set[str]:
    """The tensors that carry the data: computed from a float graph input or an embedding (a Gather from a float
    table). Others, such as an attention mask made from an integer input (0 and -inf, or 0 and float32's min), are
    not quantized: their range says nothing of the data's, and an op they feed stays float."""
    from onnx import TensorProto

    tables = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    carrying = {v.name for v in model.graph.input if v.name not in tables
                and v.type.tensor_type.elem_type == TensorProto.FLOAT}
    for node in model.graph.node:
        if any(name in carrying for name in node.input) or (node.op_type == "Gather" and node.input[0] in tables):
            carrying.update(name for name in node.output if name)
    return carrying


def _quantizable(node, ranges: dict[str, TensorRange], passive: set[str], producers: dict[str, str],
                 constants: set[str]) -> bool:
    if not is_onnx_op(node, *QUANTIZABLE) or any(name in passive for name in node.input):
        return False
    if node.op_type in WEIGHTED and node.input[1] not in constants:  # attention's Q.K^T: no integer kernel
        return False
    if node.op_type == "Add" and not all(name in ranges for name in node.input):  # an Add of a constant
        if not any(producers.get(name) in BIASED for name in node.input):
            return False
    activations = [name for name in node.input if name in ranges]
    return bool(activations) and all(name in ranges for name in node.output if name)


def _excluded(model, candidates: list, options: QuantizeOptions) -> set[str]:
    names = [node.name for node in candidates]
    kept: set[str] = set()
    all_names = [node.name for node in model.graph.node]
    op_types = {node.op_type for node in model.graph.node}
    for pattern in options.exclude:
        if pattern in op_types:
            matched = [node.name for node in candidates if node.op_type == pattern]
        elif pattern in all_names:
            matched = [pattern]
        else:
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise SettingError(QuantizeOptions, f"{{exclude}} {pattern!r}: not a node name, op type or valid "
                                                    f"regex ({exc})") from exc
            matched = [name for name in all_names if regex.fullmatch(name)]
        if not matched:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise SettingError(QuantizeOptions, f"{{exclude}} {pattern!r} matches no node name, op type or regex over "
                                                f"node names; quantizable nodes: {shown} (see `kiln inspect`)")
        kept.update(matched)
    weighted = [node.name for node in candidates if node.op_type in WEIGHTED]
    if weighted and KeepFloat.FIRST in options.keep_float:
        kept.add(weighted[0])
    if weighted and KeepFloat.LAST in options.keep_float:
        kept.add(weighted[-1])
    return kept


def _activation_ranges(model, chosen: list, ranges: dict[str, TensorRange],
                       constants: set[str]) -> dict[str, TensorRange]:
    """Ranges of the float inputs and outputs of the chosen nodes.

    A Concat's tensors share one range; a MaxPool's output keeps its input's range (the max of
    quantized values is one of them); a weighted node or Add feeding only a chosen Relu or Clip
    (ReLU6) is not quantized between the two: the activation's output range covers both, as an
    integer kernel fuses it. Likewise a MatMul or Conv feeding only the chosen Add of a constant (a
    bias exported apart from its op): the kernel adds the bias in int32.
    """
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    names = {node.name for node in chosen}
    single = [node for node in chosen if node.output[0] not in outputs and len(consumers.get(node.output[0], [])) == 1]
    fused = {node.output[0] for node in single if node.op_type in WEIGHTED | {"Add"}
             and _fusable_activation(consumers[node.output[0]][0], names)}
    fused |= {node.output[0] for node in single if node.op_type in BIASED
              and _bias_add(consumers[node.output[0]][0], names, constants)}
    tensors: dict[str, TensorRange] = {}
    for node in chosen:
        for name in [*node.input, *node.output]:
            if name in ranges and name not in fused:
                tensors[name] = ranges[name]
    for node in chosen:
        if node.op_type == "MaxPool" and node.input[0] in tensors:
            tensors[node.output[0]] = tensors[node.input[0]]
    for node in chosen:
        if node.op_type == "Concat":
            members = [name for name in [*node.input, *node.output] if name in tensors]
            shared = tensors[members[0]]
            for name in members[1:]:
                shared = shared.union(tensors[name])
            tensors.update({name: shared for name in members})
    return tensors


def _fusable_activation(node, chosen: set[str]) -> bool:
    return node.op_type in ("Relu", "Clip") and node.name in chosen


def _bias_add(node, chosen: set[str], constants: set[str]) -> bool:
    return node.op_type == "Add" and node.name in chosen and any(name in constants for name in node.input)


def quantize_weight(weight: np.ndarray, axis: int, reduce_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """int8 values and float32 scales, symmetric in [-127, 127] ([-63, 63] reduced) per slice along `axis`."""
    qmax = 63 if reduce_range else 127
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    amax = np.abs(moved).max(axis=1)
    scales = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    values = np.clip(np.round(weight / scales.reshape(shape)), -qmax, qmax).astype(np.int8)
    return values, scales


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 values and float32 scales (input scale x weight scale per channel), zero point 0."""
    scales = (np.float32(input_scale) * weight_scales).astype(np.float32)
    info = np.iinfo(np.int32)
    return np.clip(np.round(bias / scales), info.min, info.max).astype(np.int32), scales
