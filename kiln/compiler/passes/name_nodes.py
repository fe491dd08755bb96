"""Give every unnamed node a unique name, so exclusions, reports and manifests can name it."""

from __future__ import annotations

import dataclasses

from kiln.compiler.graph import Graph


def name_nodes(graph: Graph) -> Graph:
    import onnx

    if all(node.name for node in graph.body.graph.node):
        return graph
    model = onnx.ModelProto()
    model.CopyFrom(graph.body)
    taken = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return dataclasses.replace(graph, body=model)
