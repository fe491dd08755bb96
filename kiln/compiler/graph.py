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

Dim = Union[int, str]


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
        data = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        return data if self.index_bound is None else {**data, "index_bound": self.index_bound}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(data["name"], tuple(data["shape"]), data["dtype"], data.get("index_bound"))

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


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
