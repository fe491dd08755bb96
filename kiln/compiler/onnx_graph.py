"""Chores on ONNX graphs that passes and quantization share."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import onnx

    from kiln.compiler.graph import Graph

    # what a pass writes in a node's place: the nodes, and the new constants they read by name
    Replacement = tuple[list[onnx.NodeProto], dict[str, np.ndarray]]

ONNX_DOMAINS = ("", "ai.onnx")  # the two names of ONNX's default operator set
WIDE_FLOATS = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16: the float types that are not narrow


def is_onnx_op(node: "onnx.NodeProto", *op_types: str) -> bool:
    """Whether `node` is an op of ONNX's default domain, and where op types are named, one of them."""
    return node.domain in ONNX_DOMAINS and (not op_types or node.op_type in op_types)


def drop_unused_initializers(model: "onnx.ModelProto") -> None:
    """Remove (in place) the initializers that no node, subgraph node or graph output reads."""
    graph = model.graph
    used = names_read(graph.node) | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def names_read(nodes: "Iterable[onnx.NodeProto]") -> set[str]:
    """Every name the nodes read, including those of their If/Loop/Scan bodies (which read outer names)."""
    names: set[str] = set()
    for node in nodes:
        names.update(node.input)
        for body in subgraphs(node):
            names |= names_read(body.node)
    return names


def subgraphs(node: "onnx.NodeProto") -> list["onnx.GraphProto"]:
    """The graphs `node`'s attributes hold: an If's branches, a Loop's or Scan's body."""
    return [graph for attribute in node.attribute
            for graph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)]


def all_nodes(graph: "onnx.GraphProto") -> "Iterable[onnx.NodeProto]":
    """`graph`'s nodes and, after each, the nodes of its subgraphs (recursively)."""
    for node in graph.node:
        yield node
        for body in subgraphs(node):
            yield from all_nodes(body)


def node_attributes(node: "onnx.NodeProto") -> dict:
    """`node`'s attributes by name, as Python values."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def node_attribute(node: "onnx.NodeProto", name: str, default=None):
    """One of `node`'s attributes as a Python value, `default` where it is not given."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def output_channel_axis(node: "onnx.NodeProto", weight_rank: int) -> int | None:
    """The axis of a Conv, ConvTranspose, Gemm or MatMul node's weight (input 1) that indexes its output
    channels; None for other ops.

    Conv [M, C/group, k...]: 0. ConvTranspose [C, M/group, k...]: 1 (the channels within a group).
    Gemm B: 1, or 0 with transB. MatMul [..., K, N]: the last.
    """
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
    if node.op_type == "MatMul":
        return weight_rank - 1
    return None


def graph_inputs(model: "onnx.ModelProto") -> list:
    """The main graph's inputs that are no initializers: what a caller feeds."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def graph_names(graph: "onnx.GraphProto") -> set[str]:
    """Every value and node name of the graph (not of its subgraphs): what a new name must not be."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info)} | {t.name for t in graph.initializer}
    return names | {name for node in graph.node for name in (node.name, *node.input, *node.output)}


def element_types(graph: "onnx.GraphProto") -> dict[str, int]:
    """The ONNX element type of each input, initializer and value shape inference typed (0 where undeclared)."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info)}
    return {**types, **{t.name: t.data_type for t in graph.initializer}}


def declared_dims(graph: "onnx.GraphProto") -> dict[str, list[int | None]]:
    """The dims `graph` declares for its values (None where a dim is symbolic)."""
    found = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info]:
        if value.type.WhichOneof("value") == "tensor_type" and value.type.tensor_type.HasField("shape"):
            found.setdefault(value.name, [d.dim_value if d.HasField("dim_value") else None
                                          for d in value.type.tensor_type.shape.dim])
    return found


def static_shapes(graph: "onnx.GraphProto") -> dict[str, tuple[int, ...]]:
    """The shapes of the graph's inputs and inferred values whose every dim is known."""
    shapes = {}
    for value in (*graph.input, *graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes


def static_dims(graph: "onnx.GraphProto") -> dict[str, tuple[int, ...]]:
    """The dims of the graph's initializers and the static shapes of its inputs and inferred values (these where a
    name is both)."""
    return {**{t.name: tuple(t.dims) for t in graph.initializer}, **static_shapes(graph)}


def infer_shapes(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """`model` with the types and shapes ONNX infers for its values (value_info); as it is where inference fails."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - C++ errors and models over 2 GB: the shapes already known
        return model


def rewrite_nodes(graph: "Graph", replace: "Callable[[onnx.NodeProto], Replacement | None]",
                  default_opset: int | None = None) -> "Graph":
    """`graph` with a new body: a copy of its body with each node for which `replace(node)` gives a replacement
    replaced by it (replace_nodes); `graph` itself where `replace` gives none. `graph.body` stays as it is, so
    `replace` may read what it needs to know (types, shapes, constants) from it. A pass that writes ONNX's own ops
    in place of another domain's (ai.onnx.ml) gives `default_opset`: a model importing no default opset then
    imports that one."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(graph.body)
    if not replace_nodes(model, replace):
        return graph
    if default_opset is not None and not any(o.domain in ONNX_DOMAINS for o in model.opset_import):
        default = helper.make_opsetid("", default_opset)
        model.opset_import.append(default)
        model.ir_version = max(model.ir_version, helper.find_min_ir_version_for([default]))
    return dataclasses.replace(graph, body=model)


def replace_nodes(model: "onnx.ModelProto", replace: "Callable[[onnx.NodeProto], Replacement | None]") -> bool:
    """Replace (in place) each node for which `replace(node)` gives (nodes, {name: array of a new constant}),
    in its place in the order; whether any was. Initializers no node reads any more are dropped."""
    from onnx import numpy_helper

    nodes, constants, replaced = [], {}, False
    for node in model.graph.node:
        replacement = replace(node)
        nodes.extend(replacement[0] if replacement else [node])
        constants.update(replacement[1] if replacement else {})
        replaced = replaced or replacement is not None
    if not replaced:
        return False
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in constants.items())
    drop_unused_initializers(model)
    return True


class SharedWeights:
    """ONNX models saved into one folder whose initializers' data sit in one file, each distinct tensor once (ONNX
    external data): the functions of a range, whose models differ in their shapes only, take one copy of the
    weights on disk (BERT-base over twenty functions: 0.44 GB, where a file each took 17 GB)."""

    FILE = "weights.bin"
    MIN_BYTES = 1024  # smaller initializers stay in their model

    def __init__(self, folder: "Path"):
        self.folder = folder
        self.stored: dict[tuple, tuple[int, int]] = {}  # (type, dims, digest) -> (offset, length) in FILE

    def save(self, model: "onnx.ModelProto", name: str) -> "onnx.ModelProto":
        """`model` saved as `name` in the folder, its initializers' data moved into FILE (in place); what was saved,
        read back without that data (protobuf frees a message's memory only with the whole message)."""
        import hashlib
        import os

        import onnx

        with open(self.folder / self.FILE, "ab") as weights:
            weights.seek(0, os.SEEK_END)
            for tensor in model.graph.initializer:
                if not tensor.HasField("raw_data") or len(tensor.raw_data) < self.MIN_BYTES:
                    continue
                key = (tensor.data_type, tuple(tensor.dims), hashlib.sha1(tensor.raw_data).digest())
                if key not in self.stored:
                    self.stored[key] = (weights.tell(), len(tensor.raw_data))
                    weights.write(tensor.raw_data)
                offset, length = self.stored[key]
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
                del tensor.external_data[:]
                for key_name, value in (("location", self.FILE), ("offset", offset), ("length", length)):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key_name, str(value)
        onnx.save_model(model, str(self.folder / name))
        return onnx.load_model(str(self.folder / name), load_external_data=False)

    def loaded(self, model: "onnx.ModelProto") -> "onnx.ModelProto":
        """A copy of a model `save` returned, with its initializers' data."""
        import onnx
        from onnx.external_data_helper import load_external_data_for_model

        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        load_external_data_for_model(copy, str(self.folder))
        return copy
