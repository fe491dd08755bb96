"""Frontends read a model file into kiln's common Graph; the format is detected from content."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from kiln.compiler.graph import Graph
from kiln.errors import InputError


class SourceFormat(str, enum.Enum):
    ONNX = "onnx"


@dataclass(frozen=True)
class ImportOptions:
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


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
    raise InputError(f"{path}: unrecognised model format; kiln reads ONNX (.onnx) models")


def load_graph(path: Path, options: ImportOptions) -> Graph:
    source_format = detect_format(path)
    if source_format is SourceFormat.ONNX:
        from kiln.compiler.frontends import onnx

        return onnx.load(path, options.input_shapes)
    raise AssertionError(source_format)
