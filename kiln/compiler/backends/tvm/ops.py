"""Which ONNX ops the TVM Relax importer can convert."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

# Handled by the importer itself rather than through its converter table.
_BUILTIN_OPS = frozenset({"Constant", "If"})


@functools.lru_cache(maxsize=1)
def supported_ops() -> frozenset[str]:
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map()) | _BUILTIN_OPS


def unsupported_ops(model: "onnx.ModelProto") -> dict[str, list[str]]:
    """Every op the importer lacks, with the names of the nodes using it (all of them, one scan)."""
    found: dict[str, list[str]] = {}
    supported = supported_ops()
    for index, node in enumerate(model.graph.node):
        qualified = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if qualified not in supported:
            found.setdefault(qualified, []).append(node.name or f"#{index}")
    return found
