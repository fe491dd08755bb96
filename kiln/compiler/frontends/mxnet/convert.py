"""MXNet frontend: symbol JSON + .params -> ONNX ModelProto -> kiln Graph, without importing MXNet."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from kiln.compiler.frontends.mxnet.attrs import Attrs, Unsupported
from kiln.compiler.frontends.mxnet.builder import GraphBuilder
from kiln.compiler.frontends.mxnet.ops import LABEL_INPUTS, OPS
from kiln.compiler.frontends.mxnet.params import DTYPES, read_params
from kiln.compiler.frontends.mxnet.symbol import Entry, Node, Symbol, read_symbol
from kiln.compiler.frontends.options import ImportOptions
from kiln.compiler.graph import Graph, Provenance, SourceFile, TensorSpec
from kiln.errors import InputError, SettingError, UnsupportedOpError


def load(symbol_path: Path, params_path: Path | None, input_shapes: dict[str, tuple[int, ...]]) -> Graph:
    from kiln.compiler.frontends.onnx import signature

    if params_path is None:
        raise SettingError(ImportOptions, f"{symbol_path}: an MXNet model needs its weights too: pass the .params "
                                          f"file with {{params}}{_params_hint(symbol_path)}")
    symbol, params = read_symbol(symbol_path), read_params(params_path)
    builder = convert(symbol, params, input_shapes)
    model = builder.model()
    model.graph.value_info.extend(_check_and_infer(builder.typed_model(), symbol_path).graph.value_info)
    provenance = Provenance("mxnet", (SourceFile.of(symbol_path), SourceFile.of(params_path)))
    return Graph(model, signature(model), provenance)


def describe(symbol_path: Path, params_path: Path, input_shapes: dict[str, tuple[int, ...]]
             ) -> tuple[Provenance, tuple[TensorSpec, ...], tuple[TensorSpec, ...], Counter[str]]:
    """What `kiln inspect` shows of a symbol that does not convert: its provenance, inputs, outputs (of unknown
    shape) and ops (MXNet's names) by count."""
    symbol, params = read_symbol(symbol_path), read_params(params_path)
    needed = sorted(_needed_nodes(symbol))
    variables = {symbol.nodes[i].name: symbol.nodes[i] for i in needed if symbol.nodes[i].is_variable}
    inputs = tuple(TensorSpec(name, input_shapes.get(name) or _declared_shape(v), _input_dtype(v).name)
                   for name, v in variables.items() if name not in params)
    outputs = tuple(TensorSpec(_output_name(symbol, head), ("?",), "unknown") for head in symbol.heads)
    ops = Counter(symbol.nodes[i].op for i in needed if not symbol.nodes[i].is_variable)
    provenance = Provenance("mxnet", (SourceFile.of(symbol_path), SourceFile.of(params_path)))
    return provenance, inputs, outputs, ops


def convert(symbol: Symbol, params: dict[str, np.ndarray], input_shapes: dict[str, tuple[int, ...]]) -> GraphBuilder:
    """Emit the ONNX graph of the nodes the outputs depend on; report every unsupported op at once."""
    needed = _needed_nodes(symbol)
    builder = GraphBuilder()
    _declare_variables(builder, symbol, needed, params, input_shapes)
    tensors: dict[Entry, str] = {Entry(i, 0): symbol.nodes[i].name
                                 for i in needed if symbol.nodes[i].is_variable}
    unsupported: dict[str, list[str]] = {}
    for index in sorted(needed):
        node = symbol.nodes[index]
        if node.is_variable:
            continue
        inputs = [tensors.get(entry) for entry in _used_inputs(node)]
        if node.op not in OPS:
            unsupported.setdefault(node.op, []).append(node.name)
            continue
        if None in inputs:  # an input was not converted: its own failure is already reported
            continue
        try:
            outputs = _convert_node(builder, node, inputs)
        except Unsupported as exc:
            unsupported.setdefault(f"{node.op}({exc})", []).append(node.name)
            continue
        except (IndexError, ValueError, ZeroDivisionError) as exc:  # attribute values that contradict the shapes
            raise InputError(f"{node.op} node {node.name!r}: attributes {node.attrs} do not fit its inputs "
                             f"({exc}); is the symbol file corrupted?") from exc
        tensors.update((Entry(index, i), name) for i, name in enumerate(outputs))
    if unsupported:
        raise UnsupportedOpError("MXNet", unsupported)
    builder.outputs = _outputs(builder, symbol, tensors)
    return builder


def _convert_node(builder: GraphBuilder, node: Node, inputs: list[str]) -> list[str]:
    builder.scope = node.name
    outputs = OPS[node.op](builder, inputs, Attrs(node.attrs, node.op, node.name))
    return [outputs] if isinstance(outputs, str) else outputs


def _used_inputs(node: Node) -> tuple[Entry, ...]:
    label = LABEL_INPUTS.get(node.op)
    return tuple(entry for i, entry in enumerate(node.inputs) if i != label)


def _needed_nodes(symbol: Symbol) -> set[int]:
    needed, stack = set(), [head.node for head in symbol.heads]
    while stack:
        index = stack.pop()
        if index not in needed:
            needed.add(index)
            stack.extend(entry.node for entry in _used_inputs(symbol.nodes[index]))
    return needed


def _declare_variables(builder: GraphBuilder, symbol: Symbol, needed: set[int], params: dict[str, np.ndarray],
                       input_shapes: dict[str, tuple[int, ...]]) -> None:
    """Parameters become initializers; the other variables are inputs and need a shape."""
    # MXNet binds variables by name: two variable nodes with one name are one argument.
    variables = list({symbol.nodes[i].name: symbol.nodes[i] for i in sorted(needed)
                      if symbol.nodes[i].is_variable}.values())
    names = {v.name for v in variables}
    unknown = sorted(set(input_shapes) - names)
    if unknown:
        inputs = [v.name for v in variables if v.name not in params]
        raise SettingError(ImportOptions, f"{{input_shapes}} names {', '.join(unknown)}, but the model's inputs "
                                          f"are {', '.join(inputs) or 'none'}")
    missing = []
    for variable in variables:
        if variable.name in input_shapes:
            builder.add_input(variable.name, input_shapes[variable.name], _input_dtype(variable))
        elif variable.name in params:
            builder.add_initializer(variable.name, params[variable.name])
        elif _declared_shape(variable):
            builder.add_input(variable.name, _declared_shape(variable), _input_dtype(variable))
        else:
            missing.append(variable.name)
    if missing:
        raise SettingError(ImportOptions, f"the symbol uses {', '.join(missing)}, found neither in the params "
                                          "file nor in {input_shapes}. Give each data input's shape with "
                                          "{input_shapes} NAME:DIMS (MXNet symbols do not record them), and check "
                                          "that the params file belongs to this symbol")


def _declared_shape(variable: Node) -> tuple[int, ...]:
    """The `__shape__` a variable was declared with, when it is complete (MXNet writes 0 for unknown dims)."""
    shape = Attrs(variable.attrs, "variable", variable.name).ints("__shape__", ())
    return shape if shape and all(d > 0 for d in shape) else ()


def _input_dtype(variable: Node) -> np.dtype:
    flag = Attrs(variable.attrs, "variable", variable.name).int("__dtype__", 0)
    if flag not in DTYPES:
        raise InputError(f"input {variable.name!r}: __dtype__ {flag} is not one kiln reads")
    return np.dtype(DTYPES[flag])


def _outputs(builder: GraphBuilder, symbol: Symbol, tensors: dict[Entry, str]) -> list:
    """One graph output per head, named as MXNet names them (`<node>_output`)."""
    from onnx import helper

    outputs = []
    for head in symbol.heads:
        node = symbol.nodes[head.node]
        if head not in tensors:
            raise UnsupportedOpError("MXNet", {f"{node.op} output {head.output}": [node.name]},
                                     "kiln converts the inference output of this op only")
        builder.scope = _output_name(symbol, head)
        name = builder.op("Identity", [tensors[head]])
        dtype = helper.np_dtype_to_tensor_dtype(builder.dtype(name))
        outputs.append(helper.make_tensor_value_info(name, dtype, builder.shape(name)))
    return outputs


def _output_name(symbol: Symbol, head: Entry) -> str:
    return f"{symbol.nodes[head.node].name}_output" + (str(head.output) if head.output else "")


def _check_and_infer(model, symbol_path: Path):
    """Check the graph (parameters declared by type, which is all the checks need) and infer its shapes."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:  # attribute values no valid graph can hold, such as kernel=(0, 0)
        raise InputError(f"{symbol_path}: the symbol's attributes do not make a valid graph: "
                         f"{str(exc).splitlines()[0]}") from exc
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError or plain RuntimeError from C++
        raise SettingError(ImportOptions, f"{symbol_path}: the converted graph is inconsistent: {exc}. Check "
                                          "{input_shapes} and that the params file belongs to this symbol") from exc


def _params_hint(symbol_path: Path) -> str:
    prefix = symbol_path.name.removesuffix(".json").removesuffix("-symbol")
    candidates = sorted(symbol_path.parent.glob(f"{prefix}-*.params"))
    return f", e.g. {{params}} {candidates[-1]}" if candidates else ""
