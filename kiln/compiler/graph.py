"""The common graph: what every frontend returns and every backend takes.

A neural graph's body is an ONNX ``ModelProto``; a tree graph's body is a ``treelite.Model``.
Both carry a signature (names, shapes, dtypes) and the provenance of the files they came from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from kiln.files import sha256_file

if TYPE_CHECKING:
    import onnx
    import treelite



@dataclass(frozen=True)
class DimRange:
    """A dim an artifact takes at any size from low to high: a batch (`--input-shape input:1-64x3x224x224`) or a
    sequence's length (`input_ids:1-8x16-256`)."""

    low: int
    high: int

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"

    def __contains__(self, size: int) -> bool:
        return self.low <= size <= self.high

    @classmethod
    def parse(cls, text: str) -> "DimRange | None":
        """"1-64" -> DimRange(1, 64); None unless both ends are dims (1 to MAX_DIM) in order."""
        low, sep, high = text.partition("-")
        ends = parse_dims(f"{low}x{high}") if sep else None
        return cls(*ends) if ends and ends[0] <= ends[1] else None


Dim = Union[int, str, DimRange]  # a size, a symbolic name (any size), or a range (a dynamic artifact's batch, length)


class GraphKind(str, enum.Enum):
    NEURAL = "neural"
    TREE = "tree"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str
    # An integer input that indexes constant tables (passes.index_bounds): their fewest rows. Valid values are
    # -index_bound .. index_bound - 1, as ONNX's Gather takes them.
    index_bound: int | None = None

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        shape = [str(d) if isinstance(d, DimRange) else d for d in self.shape]
        data = {"name": self.name, "shape": shape, "dtype": self.dtype}
        return data if self.index_bound is None else {**data, "index_bound": self.index_bound}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        shape = tuple(DimRange.parse(d) or d if isinstance(d, str) else d for d in data["shape"])
        return cls(data["name"], shape, data["dtype"], data.get("index_bound"))

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class FrozenInput:
    """A graph input given a value at compile time (`--freeze NAME=VALUES`, kiln.compiler.frontends.freeze): the
    artifact no longer takes it, and computes with this value."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    values: tuple[Any, ...]  # row-major

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "values": list(self.values)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FrozenInput":
        return cls(data["name"], data["dtype"], tuple(data["shape"]), tuple(data["values"]))

    def describe(self) -> str:
        shown = ", ".join(map(str, self.values[:8])) + (", ..." if len(self.values) > 8 else "")
        return f"{self.name} = [{shown}]"


@dataclass(frozen=True)
class SequenceValue:
    """An ONNX sequence input or output (kiln.compiler.frontends.sequences) that the artifact takes or gives as its
    elements' tensors, one input or output each: callers pass and get a list of arrays under `name`."""

    name: str
    elements: tuple[str, ...]  # the element tensors' names, in order

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "elements": list(self.elements)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SequenceValue":
        return cls(data["name"], tuple(data["elements"]))

    @staticmethod
    def element_name(name: str, index: int) -> str:
        return f"{name}.{index}"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    frozen: tuple[FrozenInput, ...] = ()
    sequence_inputs: tuple[SequenceValue, ...] = ()
    sequence_outputs: tuple[SequenceValue, ...] = ()


@dataclass(frozen=True)
class SourceFile:
    name: str
    sha256: str

    @classmethod
    def of(cls, path: Path) -> "SourceFile":
        return cls(path.name, sha256_file(path))


@dataclass(frozen=True)
class Provenance:
    source_format: str
    files: tuple[SourceFile, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.source_format,
            "files": [{"name": f.name, "sha256": f.sha256} for f in self.files],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Provenance":
        return cls(data["format"], tuple(SourceFile(f["name"], f["sha256"]) for f in data["files"]))


@dataclass(frozen=True)
class Graph:
    body: "onnx.ModelProto | treelite.Model" = field(repr=False)
    signature: Signature
    provenance: Provenance

    @property
    def kind(self) -> GraphKind:
        return GraphKind.TREE if type(self.body).__module__.startswith("treelite") else GraphKind.NEURAL


MAX_DIM = 2**31 - 1  # TVM indexes tensors with int32 by default: a larger dim overflows inside it


def parse_dims(text: str) -> tuple[int, ...] | None:
    """"1x3x224x224" -> (1, 3, 224, 224); None unless every dim is an integer from 1 to MAX_DIM."""
    try:
        dims = tuple(int(d) for d in text.split("x"))
    except ValueError:
        return None
    return dims if dims and all(0 < d <= MAX_DIM for d in dims) else None
