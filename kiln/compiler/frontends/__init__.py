"""Frontends read a model file into kiln's common Graph; the format is detected from content."""

from __future__ import annotations

from pathlib import Path

from kiln.compiler.frontends.options import ImportOptions
from kiln.compiler.frontends.source_format import SourceFormat
from kiln.compiler.graph import Graph
from kiln.errors import InputError, SettingError


def detect_format(path: Path) -> SourceFormat:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a directory; pass the model file itself")
    with open(path, "rb") as stream:
        head = stream.read(64)
    if not head:
        raise InputError(f"{path}: file is empty")
    # ONNX has no magic number: a protobuf ModelProto starts with a field tag byte (ir_version = 0x08).
    if head[:1] == b"\x08":
        return SourceFormat.ONNX
    from kiln.compiler.frontends.mxnet import symbol, params

    if symbol.looks_like_symbol(head):
        return SourceFormat.MXNET
    if head[:8] == params.LIST_MAGIC.to_bytes(8, "little"):
        raise SettingError(ImportOptions, f"{path} is an MXNet .params file (weights only); pass the symbol JSON "
                                          "as the model and this file with {params}")
    from kiln.compiler.frontends.trees.formats import detect_tree_format

    tree_format = detect_tree_format(path)
    if tree_format is not None:
        return tree_format
    raise SettingError(ImportOptions, f"{path}: unrecognised model format; kiln reads ONNX (.onnx) models, MXNet "
                                      "symbol JSON, XGBoost (JSON, UBJSON, legacy binary), LightGBM text models and "
                                      "scikit-learn (skops, or pickle with {trust_pickle})")


def load_graph(path: Path, options: ImportOptions) -> Graph:
    source_format = detect_format(path)
    if source_format is SourceFormat.ONNX:
        from kiln.compiler.frontends import onnx

        return onnx.load(path, options.input_shapes, options.frozen_inputs, options.sequence_shapes)
    for given in ("frozen_inputs", "sequence_shapes"):
        if getattr(options, given):
            raise SettingError(ImportOptions, f"{{{given}}} applies to ONNX models; {path} is "
                                              f"{source_format.value}, whose inputs are all tensors")
    if source_format is SourceFormat.MXNET:
        from kiln.compiler.frontends.mxnet import convert

        return convert.load(path, options.params, options.input_shapes)
    from kiln.compiler.frontends import trees

    return trees.load(path, source_format, options.trust_pickle)
