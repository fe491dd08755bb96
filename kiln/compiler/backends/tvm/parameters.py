"""The graph inputs that set parameters TVM's importer takes only as constants (ops.REQUIRED_CONSTANT: a
reduction's axes, Resize's scales, TopK's K, ...): what `--freeze` (kiln.compiler.frontends.freeze) turns into
constants, named when such a node is refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.compiler.backends.tvm.ops import REQUIRED_CONSTANT
from kiln.compiler.onnx_graph import graph_inputs, is_onnx_op

if TYPE_CHECKING:
    import onnx

# Their outputs are known at compile time whatever their inputs hold (shapes are static when compiling).
_SHAPE_OPS = frozenset({"Shape", "Size"})


def parameter_inputs(model: "onnx.ModelProto") -> list[str]:
    """The main graph's inputs that a REQUIRED_CONSTANT input of some node is computed from, in input order."""
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output if output}
    pending = [node.input[index] for node in graph.node if is_onnx_op(node)
               for index, _ in REQUIRED_CONSTANT.get(node.op_type, ()) if index < len(node.input)]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        producer = producers.get(name)
        if producer is not None and producer.op_type not in _SHAPE_OPS:
            pending.extend(producer.input)
    return [v.name for v in graph_inputs(model) if v.name in seen]
