"""Which ONNX ops the TVM Relax importer can convert."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.compat.tvm import onnx_importer_ops

if TYPE_CHECKING:
    import onnx


def unsupported_ops(model: "onnx.ModelProto") -> dict[str, list[str]]:
    """Every op the importer lacks, with the names of the nodes using it (all of them, one scan)."""
    found: dict[str, list[str]] = {}
    supported = onnx_importer_ops()
    for index, node in enumerate(model.graph.node):
        qualified = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if qualified not in supported:
            found.setdefault(qualified, []).append(node.name or f"#{index}")
    return found
