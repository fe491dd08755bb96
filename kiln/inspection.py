"""`kiln inspect`: what a model or artifact contains, and what kiln cannot compile in it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from kiln.compiler import artifact
from kiln.compiler.frontends import ImportOptions, load_graph
from kiln.compiler.graph import Graph, GraphKind


def inspect_path(path: Path, imports: ImportOptions) -> dict[str, Any]:
    if path.is_dir():
        return inspect_artifact(path)
    return inspect_graph(load_graph(path, imports))


def inspect_graph(graph: Graph) -> dict[str, Any]:
    report: dict[str, Any] = {
        "kind": graph.kind.value,
        "source": graph.provenance.to_json(),
        "inputs": [spec.to_json() for spec in graph.signature.inputs],
        "outputs": [spec.to_json() for spec in graph.signature.outputs],
    }
    if graph.kind is GraphKind.NEURAL:
        report.update(_neural_details(graph))
    if graph.kind is GraphKind.TREE:
        from kiln.compiler.frontends.trees import summarize

        report["tree"] = summarize(graph.body).to_json()
    return report


def _neural_details(graph: Graph) -> dict[str, Any]:
    from kiln.compiler.backends.tvm.ops import unsupported_ops
    from kiln.compiler.frontends.onnx import opset_of

    model = graph.body
    ops = Counter(node.op_type for node in model.graph.node)
    parameters = sum(_numel(t.dims) for t in model.graph.initializer)
    return {
        "opset": opset_of(model),
        "nodes": len(model.graph.node),
        "parameters": parameters,
        "ops": dict(sorted(ops.items(), key=lambda item: (-item[1], item[0]))),
        "unsupported": unsupported_ops(model),
    }


def _numel(dims) -> int:
    count = 1
    for d in dims:
        count *= d
    return count


def inspect_artifact(path: Path) -> dict[str, Any]:
    manifest = artifact.read_manifest(path)
    return {"kind": "artifact", "path": str(path), **manifest}
