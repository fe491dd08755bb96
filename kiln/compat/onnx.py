"""What kiln relies on inside onnx beyond its public API.

- `external_data_helper._get_all_tensors(model)`: every tensor of a model (initializers and tensor
  attributes, in subgraphs too), the set `load_external_data_for_model` loads. kiln checks where each
  one's external data lives before letting onnx read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from kiln.compat import VersionRange

if TYPE_CHECKING:
    import onnx

ONNX = VersionRange("onnx", "1.17", "1.24", "onnx's private external_data_helper._get_all_tensors")


def check() -> None:
    ONNX.check()


def all_tensors(model: "onnx.ModelProto") -> Iterable["onnx.TensorProto"]:
    """Every tensor of `model` that can hold external data: initializers and tensor attributes, subgraphs included."""
    from onnx import external_data_helper

    check()
    return external_data_helper._get_all_tensors(model)
