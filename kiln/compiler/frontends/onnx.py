"""ONNX frontend: load, validate, pin shapes, infer shapes, and describe the signature."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.compat.onnx import all_tensors
from kiln.compiler.frontends.freeze import freeze_inputs
from kiln.compiler.frontends.options import ImportOptions
from kiln.compiler.frontends.sequences import resolve_sequences, take_sequence_inputs, uses_sequences
from kiln.compiler.graph import Graph, Provenance, Signature, SourceFile, TensorSpec
from kiln.compiler.onnx_graph import ONNX_DOMAINS, graph_inputs
from kiln.errors import InputError, SettingError, UnsupportedOpError

if TYPE_CHECKING:
    import onnx

# Below this opset the model is upgraded with onnx.version_converter before anything else.
MIN_OPSET = 11
UPGRADE_OPSET = 13
PROTOBUF_LIMIT = 2**31


def load(path: Path, input_shapes: dict[str, tuple[int | str, ...]] | None = None,
         frozen_inputs: dict[str, tuple] | None = None,
         sequence_shapes: dict[str, tuple[tuple[int, ...], ...]] | None = None) -> Graph:
    import onnx

    model = _read(path)
    _load_external_data(model, path)
    _check_tensor_sizes(model, path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise InputError(f"{path}: not a valid ONNX model: {_first_line(exc)}") from exc
    model = _upgrade_opset(model, path)
    sequence_inputs = take_sequence_inputs(model, sequence_shapes or {}, set(input_shapes or ()))
    if input_shapes:
        pin_input_shapes(model, input_shapes)
    frozen = freeze_inputs(model, frozen_inputs) if frozen_inputs else ()
    sequence_outputs = resolve_sequences(model, opset_of(model)) if uses_sequences(model) else ()
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError or plain RuntimeError from C++
        raise InputError(f"{path}: ONNX shape inference failed: {_first_line(exc)}") from exc
    for value in (*graph_inputs(model), *model.graph.output):
        if value.type.tensor_type.elem_type:  # 0: not declared, described as "unknown"
            _check_type(value.type.tensor_type.elem_type, f"{value.name!r}", path)
    return Graph(model, dataclasses.replace(signature(model), frozen=frozen, sequence_inputs=sequence_inputs,
                                            sequence_outputs=sequence_outputs),
                 Provenance("onnx", (SourceFile.of(path),)))


def _read(path: Path) -> "onnx.ModelProto":
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size >= PROTOBUF_LIMIT:
        raise InputError(f"{path}: {path.stat().st_size / 2**30:.1f} GiB, past protobuf's 2 GiB limit for one "
                         "message, so no ONNX reader can parse it; save the model with its weights as external "
                         "data (onnx.save_model(model, path, save_as_external_data=True), or "
                         "torch.onnx.export(..., external_data=True)) and compile that")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"{path}: not an ONNX model (protobuf decoding failed: {_first_line(exc)}); "
                         "is the file truncated or of another format?") from exc
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{path}: not an ONNX model (no graph inside); is it of another format?")
    broken = _first_non_text(model)
    if broken:
        raise InputError(f"{path}: {broken} is not valid UTF-8 text; the model is corrupt. Re-export it.")
    return model


def _first_non_text(message) -> str:
    """The first string field of `message` (nested messages included) that is not UTF-8, as "NodeProto.name", or
    "". protobuf hands such a proto2 string back as bytes, which every reader after this one takes for str. Doc
    strings are free text that nothing reads: an exporter's odd encoding there is no reason to refuse a model."""
    from google.protobuf.descriptor import FieldDescriptor

    for field in message.DESCRIPTOR.fields:
        # protobuf 7 dropped `label`; `is_repeated` is newer than the protobuf onnx still accepts
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if field.type == FieldDescriptor.TYPE_STRING and field.name != "doc_string":
            values = getattr(message, field.name) if repeated else [getattr(message, field.name)]
            if any(isinstance(value, bytes) for value in values):
                return f"{message.DESCRIPTOR.name}.{field.name}"
        elif field.type == FieldDescriptor.TYPE_MESSAGE and (repeated or message.HasField(field.name)):
            for child in (getattr(message, field.name) if repeated else [getattr(message, field.name)]):
                broken = _first_non_text(child)
                if broken:
                    return broken
    return ""


def _load_external_data(model: "onnx.ModelProto", path: Path) -> None:
    """Load tensors stored beside the model; refuse any that resolve outside the model's folder."""
    from onnx import external_data_helper

    folder = path.resolve().parent
    for tensor in all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if "\0" in location:
            raise InputError(f"{path}: tensor {tensor.name!r} names its external data file {location!r}, which holds a "
                             "NUL byte; the model is corrupt. Re-export it.")
        resolved = (folder / location).resolve()
        if os.path.isabs(location) or not resolved.is_relative_to(folder):
            raise InputError(f"{path}: tensor {tensor.name!r} stores its data at {location!r}, outside the "
                             f"model's folder {folder}; kiln reads external data only from beside the model. "
                             "Move the data file next to the model and re-save it.")
        if not resolved.is_file():
            raise InputError(f"{path}: external data file {location!r} of tensor {tensor.name!r} is missing")
    try:
        external_data_helper.load_external_data_for_model(model, str(folder))
    except Exception as exc:  # OSError, ValueError, and onnx's ValidationError for a hard-linked data file
        raise InputError(f"{path}: cannot read external data: {_first_line(exc).rstrip('.')}. If the data file is a link, "
                         "copy it in its place.") from exc


def _check_tensor_sizes(model: "onnx.ModelProto", path: Path) -> None:
    """Refuse a tensor whose raw bytes do not fill its dims exactly (numpy would fail on it deep in the build)."""
    from onnx import helper

    for tensor in all_tensors(model):
        _check_type(tensor.data_type, f"tensor {tensor.name!r}", path)
        if not tensor.HasField("raw_data") or tensor.data_type in _VARIABLE_SIZE:
            continue
        bits = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize * 8
        bits = _PACKED_BITS.get(tensor.data_type, bits)
        expected = (math.prod(tensor.dims) * bits + 7) // 8
        if len(tensor.raw_data) != expected:
            raise InputError(f"{path}: tensor {tensor.name!r} has {len(tensor.raw_data)} bytes of data, but its "
                             f"dims {list(tensor.dims)} need {expected}; the model is corrupt. Re-export it.")


def _check_type(data_type: int, what: str, path: Path) -> None:
    from onnx import helper

    if data_type not in helper.get_all_tensor_dtypes():
        raise InputError(f"{path}: {what} has data type {data_type}, which is no ONNX tensor type; the model is "
                         "corrupt. Re-export it.")


_VARIABLE_SIZE = frozenset({8})  # STRING
_PACKED_BITS = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2}  # UINT4, INT4, FLOAT4E2M1, UINT2, INT2: packed sub-byte types


def _upgrade_opset(model: "onnx.ModelProto", path: Path) -> "onnx.ModelProto":
    from onnx import version_converter

    if opset_of(model) >= MIN_OPSET or not any(o.domain in ONNX_DOMAINS for o in model.opset_import):
        return model  # current, or no default-domain ops to upgrade (an ai.onnx.ml model: the backend says why)
    scans = [node.name or node.output[0] for node in model.graph.node if node.op_type == "Scan"]
    if opset_of(model) < 9 and scans:
        why = "Scan (opset 8, whose batch axis ONNX's version converter drops from the graph's inputs and outputs)"
        raise UnsupportedOpError("ONNX", {why: scans}, "re-export the model at opset 9 or later")
    try:
        return version_converter.convert_version(model, UPGRADE_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        raise InputError(f"{path}: opset {opset_of(model)} is older than {MIN_OPSET} and could not be "
                         f"upgraded to {UPGRADE_OPSET}: {_first_line(exc)}. Re-export with a newer opset.") from exc


def opset_of(model: "onnx.ModelProto") -> int:
    return next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), 1)


def pin_input_shapes(model: "onnx.ModelProto", input_shapes: dict[str, tuple[int | str, ...]]) -> None:
    """Overwrite the declared dims of the named inputs (in place); a str dim is left free, under that name."""
    inputs = {v.name: v for v in graph_inputs(model)}
    unknown = sorted(set(input_shapes) - set(inputs))
    if unknown:
        raise SettingError(ImportOptions, f"{{input_shapes}} names {', '.join(unknown)}, but the model's inputs "
                                          f"are {', '.join(inputs)}")
    declared = {name: [dim.dim_param for dim in inputs[name].type.tensor_type.shape.dim] for name in input_shapes}
    for name, shape in input_shapes.items():
        dims = inputs[name].type.tensor_type.shape.dim
        if len(dims) and len(dims) != len(shape):
            raise SettingError(ImportOptions, f"{{input_shapes}} {name}: gives {len(shape)} dims, the model "
                                              f"declares {len(dims)} ({_dims_text(dims)})")
        for dim, expected in zip(dims, shape):
            if dim.HasField("dim_value") and isinstance(expected, str):
                raise SettingError(ImportOptions, f"{{input_shapes}} {name}: dim {dim.dim_value} is fixed in the "
                                                  "model; it cannot take a range of sizes")
            if dim.HasField("dim_value") and dim.dim_value != expected:
                raise SettingError(ImportOptions, f"{{input_shapes}} {name}: dim {dim.dim_value} is fixed in "
                                                  f"the model; cannot set it to {expected}")
        del dims[:]
        for size in shape:
            if isinstance(size, str):
                dims.add().dim_param = size
            else:
                dims.add().dim_value = size
    _pin_named_dims(model, {name: inputs[name] for name in input_shapes}, declared)


def _pin_named_dims(model: "onnx.ModelProto", pinned: dict, declared: dict[str, list[str]]) -> None:
    """Give the outputs' and values' dims named as a pinned input's dim was (ONNX: one name, one size) its size,
    where every input pins that name to the same size: shape inference does not carry sizes through every op (an
    exported BERT's output kept its "batch")."""
    sizes: dict[str, set[int]] = {}
    for name, value in pinned.items():
        for old, dim in zip(declared[name], value.type.tensor_type.shape.dim):
            if old and dim.HasField("dim_value"):
                sizes.setdefault(old, set()).add(dim.dim_value)
    for value in (*model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and len(sizes.get(dim.dim_param, ())) == 1:
                dim.dim_value = next(iter(sizes[dim.dim_param]))


def signature(model: "onnx.ModelProto") -> Signature:
    return Signature(tuple(_spec(v) for v in graph_inputs(model)), tuple(_spec(v) for v in model.graph.output))


def _spec(value) -> TensorSpec:
    from onnx import helper

    tensor_type = value.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name if tensor_type.elem_type else "unknown"
    if not tensor_type.HasField("shape"):  # unknown rank: one unknown dim, so that it is never taken as static
        return TensorSpec(value.name, ("?",), dtype)
    return TensorSpec(value.name, tuple(_dim(d) for d in tensor_type.shape.dim), dtype)


def _dim(dim) -> int | str:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or "?"


def _dims_text(dims) -> str:
    return "x".join(str(_dim(d)) for d in dims)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
