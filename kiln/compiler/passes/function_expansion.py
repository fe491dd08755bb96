"""Replace each node TVM's importer cannot convert, where ONNX defines its op as a function of other ops, by that
function's body, so that the ops it is made of are compiled instead.

TVM 0.27's ONNX importer has no converter for RotaryEmbedding, NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss,
CenterCropPad, Swish, Celu, ..., converts com.microsoft's Attention in place of opset 23's, computes only the first
output of LayerNormalization and refuses RMSNormalization over every dim. ONNX defines each of them by a body of
ops (a schema function, or one built for the node's attributes and input types: a context-dependent function) that
the importer does convert. The bodies are ONNX's own: built by onnx.defs for the model's opset, bound to the node's
inputs, outputs and attributes by ONNX's inliner (onnx.inliner).

Expanded: a node of the main graph that the support check (kiln.compiler.backends.tvm.ops) refuses, whose op has a
function at the model's opset, and whose input types are known; then, in the same way, the nodes of its body that
the check refuses. The body's values and nodes are named under the node's name (`name/...`), unique in the graph.
Kept as it was, so that its own refusal stands: a node whose expansion, once fold_constants has folded it, still
holds a node the check refuses (a Pad by amounts computed from an input's values) or a Shape / Size (of a tensor
whose shape is not static: TVM takes shapes, axes and pads only as constants); one whose body holds an If / Loop
(nested graphs are not renamed here; a Scan's body is, where it reads the values around it, and
kiln.compiler.passes.scan unrolls it), an op of a domain the model does not import, or a node that does not fit its
op's definition at the model's opset (a body written for an older opset).

Runs before fold_constants, which folds what the bodies compute from shapes and constants.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from kiln.compiler.graph import Graph
from kiln.compiler.onnx_graph import ONNX_DOMAINS, graph_names, infer_shapes, is_onnx_op
from kiln.compiler.passes.fold_constants import fold_constants

if TYPE_CHECKING:
    import onnx

ROUNDS = 4  # function bodies inside function bodies (SoftmaxCrossEntropyLoss -> NegativeLogLikelihoodLoss)
_SUBGRAPH_OPS = frozenset({"If", "Loop"})
_SHAPE_READERS = frozenset({"Shape", "Size"})
_CALLED = ("kiln.expand", "body")  # the model-local function a node is rewritten to call, for ONNX's inliner


def expand_functions(graph: Graph) -> Graph:
    import onnx

    from kiln.compiler.backends.tvm.ops import refusals

    refused = {r.node for r in refusals(graph.body)}
    if not any(node.name in refused and _has_function(node, graph.body) for node in graph.body.graph.node):
        return graph
    model = onnx.ModelProto()
    model.CopyFrom(graph.body)
    originals: dict[str, onnx.NodeProto] = {}  # expanded node -> the node of the source graph it replaces
    for step in range(ROUNDS):
        model = infer_shapes(model)
        if step:
            refused = {r.node for r in refusals(model)}
        if not _expand_once(model, refused, originals):
            break
    if not originals:
        return graph
    while True:  # revert every expansion the check refuses once folded, until none is left
        folded = fold_constants(dataclasses.replace(graph, body=model)).body
        kept = _refused_roots(folded, originals, refusals(folded))
        if not kept:
            break
        _revert(model, originals, kept)
        if not originals:
            return graph
    return dataclasses.replace(graph, body=infer_shapes(model))


def _has_function(node: "onnx.NodeProto", model: "onnx.ModelProto") -> bool:
    schema = _schema(node, model)
    return schema is not None and (schema.has_function or schema.has_context_dependent_function)


def _schema(node: "onnx.NodeProto", model: "onnx.ModelProto"):
    """`node`'s op schema at the model's opset; None where onnx has none."""
    import onnx

    version = _opset(node, model)
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, version, "" if node.domain == "ai.onnx" else node.domain)
    except onnx.defs.SchemaError:
        return None


def _opset(node: "onnx.NodeProto", model: "onnx.ModelProto") -> int | None:
    """The version the model imports `node`'s domain at."""
    accepted = ONNX_DOMAINS if is_onnx_op(node) else (node.domain,)
    return next((o.version for o in model.opset_import if o.domain in accepted), None)


def _expand_once(model: "onnx.ModelProto", refused: set[str], originals: dict) -> bool:
    """Expand (in place) each refused node of the main graph that has a function; whether any was."""
    types = _value_types(model.graph)
    taken = graph_names(model.graph)
    nodes, expanded = [], False
    for node in model.graph.node:
        body = _body(node, model, types, taken) if node.name in refused and _has_function(node, model) else None
        if body is None:
            nodes.append(node)
            continue
        root = originals.pop(node.name, None) or _copy(node)
        for inner in body:
            originals[inner.name] = root
        nodes.extend(body)
        expanded = True
    if expanded:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        del model.graph.value_info[:]
    return expanded


def _body(node: "onnx.NodeProto", model: "onnx.ModelProto", types: dict, taken: set[str]) -> list | None:
    """The nodes of `node`'s function, bound to its inputs, outputs and attributes; None where it has none here."""
    import onnx.inliner
    from onnx import helper

    call = _with_defaults(node, model)
    function = _function(call, model, types)
    if function is None:
        return None
    # Called as a model-local function, so that ONNX's inliner binds the attributes and names and builds nothing
    # itself (it cannot type an omitted optional input)
    function.domain, function.name = _CALLED
    call.domain, call.op_type = _CALLED
    wrapped = helper.make_model(
        helper.make_graph([call], "expand", [types[name] for name in dict.fromkeys(node.input) if name],
                          [helper.make_value_info(name, onnx.TypeProto()) for name in node.output if name]),
        opset_imports=[*model.opset_import, helper.make_opsetid(_CALLED[0], 1)], ir_version=model.ir_version,
        functions=[function])
    try:
        body = list(onnx.inliner.inline_selected_functions(wrapped, [_CALLED]).graph.node)
    except Exception:  # noqa: BLE001 - C++ errors binding the body
        return None
    imported = {o.domain or "" for o in model.opset_import} | {"ai.onnx"}
    if (not body or any(inner.op_type in _SUBGRAPH_OPS or (inner.domain or "") not in imported for inner in body)
            or any(inner.op_type == "Constant" and not inner.attribute for inner in body)):
        return None
    for inner in body:
        if inner.op_type == "Constant":
            _as_tensor_constant(inner)
    outer = set(node.input) | set(node.output)
    renamed: dict[str, str] = {}
    for index, inner in enumerate(body):
        for field in (inner.input, inner.output):
            for position, name in enumerate(field):
                if name and name not in outer:
                    if name not in renamed:
                        renamed[name] = _unique(f"{node.name}/{re.sub(r'__[0-9]+$', '', name)}", taken)
                    field[position] = renamed[name]
        inner.name = _unique(f"{node.name}/{inner.op_type}_{index}", taken)
        for attribute in inner.attribute:
            if attribute.HasField("g"):
                _rename_reads(attribute.g, renamed)
    return body


def _rename_reads(graph: "onnx.GraphProto", renamed: dict[str, str]) -> None:
    """Rename (in place) the values a Scan's body reads from around it, as they were renamed there (ONNX's inliner
    made the body's own names unique); the nested graphs of its nodes are left as they are (the Scan is refused)."""
    for inner in graph.node:
        for position, name in enumerate(inner.input):
            if name in renamed:
                inner.input[position] = renamed[name]
    for value in graph.output:
        if value.name in renamed:
            value.name = renamed[value.name]


_SCALAR_CONSTANTS = {"value_float": (1, False), "value_floats": (1, True), "value_int": (7, False),
                     "value_ints": (7, True)}  # attribute -> (FLOAT or INT64, a list)


def _as_tensor_constant(node: "onnx.NodeProto") -> None:
    """Rewrite (in place) a Constant's value_float(s) / value_int(s) as the `value` tensor, the one form TVM's
    converter reads."""
    from onnx import helper

    attribute = node.attribute[0] if len(node.attribute) == 1 else None
    if attribute is None or attribute.name not in _SCALAR_CONSTANTS:
        return
    elem_type, is_list = _SCALAR_CONSTANTS[attribute.name]
    value = helper.get_attribute_value(attribute)
    tensor = helper.make_tensor("value", elem_type, [len(value)] if is_list else [], value if is_list else [value])
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("value", tensor))


def _function(node: "onnx.NodeProto", model: "onnx.ModelProto", types: dict) -> "onnx.FunctionProto | None":
    """The function ONNX defines `node`'s op by at the model's opset (its schema's, or the one it builds for the
    node's attributes and input types), its body read at the model's opsets; None where there is none, or where an op
    of the body does not fit its definition at the model's opset."""
    import onnx

    schema, version = _schema(node, model), _opset(node, model)
    plain = [v for v in schema.function_opset_versions if v <= version] if schema.has_function else []
    built = ([v for v in schema.context_dependent_function_opset_versions if v <= version]
             if schema.has_context_dependent_function else [])
    if any(name and name not in types for name in node.input):
        built = []  # a context-dependent function is built from the input types
    try:
        if plain:
            data = schema.get_function_with_opset_version(max(plain))
        elif built:
            data = schema.get_context_dependent_function_with_opset_version(
                max(built), node.SerializeToString(),
                [(types[name].type if name else onnx.TypeProto()).SerializeToString() for name in node.input])
        else:
            return None
    except Exception:  # noqa: BLE001 - C++ errors building a body (types it does not take)
        return None
    function = onnx.FunctionProto()
    function.ParseFromString(data)
    if not all(_fits(inner, model) for inner in function.node):
        return None
    del function.opset_import[:]
    function.opset_import.extend(model.opset_import)
    return function


def _fits(node: "onnx.NodeProto", model: "onnx.ModelProto") -> bool:
    """Whether `node` is a node of its op as defined at the model's opset: the attributes it sets are declared and
    it has as many inputs as that takes. (ONNX gives an op a new function where the ops of its body changed: a body
    written for another opset than the model's is read at the model's. This catches, say, ReduceMean's axes
    attribute of opset 13, an input since 18.)"""
    schema = _schema(node, model)
    return (schema is not None and all(a.name in schema.attributes for a in node.attribute)
            and schema.min_input <= len(node.input) <= schema.max_input)


def _with_defaults(node: "onnx.NodeProto", model: "onnx.ModelProto") -> "onnx.NodeProto":
    """`node` with the attributes it leaves out set to their defaults: ONNX's inliner drops a body's references to
    unset attributes (a Constant whose value_int is the node's `periodic` is left with no value)."""
    copied = _copy(node)
    given = {a.name for a in node.attribute}
    for name, attribute in _schema(node, model).attributes.items():
        if name not in given and attribute.default_value.type:
            copied.attribute.append(attribute.default_value)
            copied.attribute[-1].name = name
    return copied


def _copy(node: "onnx.NodeProto") -> "onnx.NodeProto":
    import onnx

    copied = onnx.NodeProto()
    copied.CopyFrom(node)
    return copied


def _unique(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _value_types(inferred: "onnx.GraphProto") -> dict[str, "onnx.ValueInfoProto"]:
    """The values of the (shape-inferred) main graph whose tensor element type is known, as value infos."""
    from onnx import helper

    found = {v.name: v for v in (*inferred.input, *inferred.value_info, *inferred.output)
             if v.type.WhichOneof("value") == "tensor_type" and v.type.tensor_type.elem_type}
    for tensor in inferred.initializer:
        found.setdefault(tensor.name, helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    return found


def _refused_roots(folded: "onnx.ModelProto", originals: dict, found: list) -> set[str]:
    """The source nodes whose expansion, constants folded, holds a refused node, or a Shape / Size left unfolded
    (of a tensor whose shape is not static)."""
    roots = {root.name for name, root in originals.items() for r in found  # a Scan's body's nodes: name/body/...
             if r.node == name or r.node.startswith(name + "/")}
    roots |= {originals[node.name].name for node in folded.graph.node
              if node.name in originals and node.op_type in _SHAPE_READERS}
    return roots


def _revert(model: "onnx.ModelProto", originals: dict, roots: set[str]) -> None:
    """Put back (in place) the source nodes named `roots` in the place of their expansions."""
    nodes = []
    for node in model.graph.node:
        root = originals.get(node.name)
        if root is None or root.name not in roots:
            nodes.append(node)
        elif not nodes or nodes[-1] is not root:
            nodes.append(root)
    for name in [name for name, root in originals.items() if root.name in roots]:
        del originals[name]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
