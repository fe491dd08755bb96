"""Record on each integer input the rows of the constant tables it indexes (token ids into an embedding), so
that the artifact refuses an out-of-range index at run time as ONNX Runtime does, instead of reading past the
table."""

from __future__ import annotations

import dataclasses

from kiln.compiler.graph import Graph

# Ops that pass an index through unchanged in value, between an input and the Gather that reads it
_VALUE_PRESERVING = frozenset({"Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def index_bounds(graph: Graph) -> Graph:
    bounds = _bounds(graph.body)
    if not bounds:
        return graph
    inputs = tuple(dataclasses.replace(spec, index_bound=bounds[spec.name]) if spec.name in bounds else spec
                   for spec in graph.signature.inputs)
    return dataclasses.replace(graph, signature=dataclasses.replace(graph.signature, inputs=inputs))


def _bounds(model) -> dict[str, int]:
    """Input name -> the fewest rows of any table a Gather indexes with it (through value-preserving ops)."""
    tables = {t.name: tuple(t.dims) for t in model.graph.initializer}
    integer_inputs = {i.name for i in model.graph.input if i.name not in tables}
    origin = {name: name for name in integer_inputs}  # value name -> the input it carries
    bounds: dict[str, int] = {}
    for node in model.graph.node:  # topologically ordered, as ONNX requires
        if node.op_type in _VALUE_PRESERVING and node.input and node.input[0] in origin:
            origin[node.output[0]] = origin[node.input[0]]
        elif node.op_type == "Gather" and len(node.input) > 1 and node.input[0] in tables \
                and node.input[1] in origin:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            rows = tables[node.input[0]][axis]
            source = origin[node.input[1]]
            bounds[source] = min(bounds.get(source, rows), rows)
    return bounds
