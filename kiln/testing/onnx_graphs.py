"""GraphBuilder: the one way kiln's tests and benchmarks write ONNX graphs by hand.

    b = GraphBuilder("relu_case", opset=13)
    b.input("x", ["batch", 4])
    y = b.node("Relu", ["x"], name="relu")   # output named by a counter: relu1
    b.output(y, ["batch", 4])
    b.save(tmp_path / "relu.onnx", check=True)

Initializers hold the arrays given, with their dtypes; random weights come from the caller's own
generator, so each model draws its numbers in the order it always did.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

FLOAT = 1  # onnx.TensorProto.FLOAT
Shape = Sequence[int | str]  # str: a symbolic dimension


class GraphBuilder:
    def __init__(self, name: str = "graph", *, opset: int = 17, ir_version: int | None = None):
        """ir_version None: the installed onnx's own."""
        self.name, self.opset, self.ir_version = name, opset, ir_version
        self.inputs: list = []
        self.outputs: list = []
        self.initializers: list = []
        self.nodes: list = []
        self._count = 0

    def fresh(self, prefix: str) -> str:
        """A name not used before: prefix + a counter that initializers and node outputs share."""
        self._count += 1
        return f"{prefix}{self._count}"

    def input(self, name: str, shape: Shape, dtype: int = FLOAT) -> str:
        from onnx import helper

        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def output(self, name: str, shape: Shape | None = None, dtype: int = FLOAT) -> str:
        """A graph output; shape None leaves its type for model(infer_shapes=True) to fill in."""
        import onnx
        from onnx import helper

        self.outputs.append(onnx.ValueInfoProto(name=name) if shape is None
                            else helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def const(self, value: np.ndarray, name: str | None = None) -> str:
        """An initializer holding `value` as given; named `name`, or a fresh c<N>."""
        from onnx import numpy_helper

        name = name or self.fresh("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str | None = None, *, name: str | None = None,
             **attributes) -> str:
        """Append one node; returns its output, named `output` or a fresh <op in lower case><N>."""
        from onnx import helper

        output = output or self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=name, **attributes))
        return output

    def model(self, *, check: bool = False, infer_shapes: bool = False) -> onnx.ModelProto:
        import onnx
        from onnx import helper

        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        if self.ir_version is not None:
            model.ir_version = self.ir_version
        if check:
            onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model) if infer_shapes else model

    def save(self, path: Path, *, check: bool = False, infer_shapes: bool = False) -> Path:
        import onnx

        onnx.save(self.model(check=check, infer_shapes=infer_shapes), str(path))
        return path
