"""Collects the ONNX nodes, inputs and initializers that the MXNet op converters emit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kiln.compiler.frontends.options import ImportOptions
from kiln.errors import SettingError

if TYPE_CHECKING:
    import onnx

OPSET = 17
# Constants up to this many elements take part in shape inference by value (shapes, axes, scalars).
_INFERENCE_VALUE_LIMIT = 64


class GraphBuilder:
    """Converters call `op` to add ONNX nodes; `shape`/`dtype` answer from ONNX shape inference."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inputs: list = []
        self.initializers: dict[str, np.ndarray] = {}
        self.outputs: list = []  # graph outputs (ValueInfoProto), set once every node is converted
        self.scope = "graph"  # the MXNet node being converted: names every ONNX node it emits
        self._taken: set[str] = set()
        self._types: dict[str, tuple[tuple[int, ...], np.dtype]] = {}

    def fresh(self, base: str) -> str:
        name, suffix = base, 1
        while name in self._taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        self._taken.add(name)
        return name

    def add_input(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> str:
        from onnx import helper

        self._taken.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape))
        return name

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        self._taken.add(name)
        self.initializers[name] = array
        return name

    def const(self, value, dtype="float32") -> str:
        return self.add_initializer(self.fresh(f"{self.scope}_const"), np.asarray(value, dtype=dtype))

    def const_like(self, value, tensor: str) -> str:
        """A constant with the element type of `tensor`, for scalar operands."""
        return self.const(value, self.dtype(tensor))

    def ints(self, values) -> str:
        return self.const(list(values), "int64")

    def cast(self, tensor: str, dtype) -> str:
        from onnx import helper

        return self.op("Cast", [tensor], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def array(self, tensor: str) -> np.ndarray | None:
        """The value of a parameter or constant, or None for a computed tensor."""
        return self.initializers.get(tensor)

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes) -> str | list[str]:
        from onnx import helper

        names = [self.fresh(self.scope if i == 0 else f"{self.scope}_out{i}") for i in range(outputs)]
        node_name = self.fresh(f"{self.scope}/{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, names, name=node_name, **attributes))
        return names[0] if outputs == 1 else names

    def shape(self, tensor: str) -> tuple[int, ...]:
        return self._type(tensor)[0]

    def dtype(self, tensor: str) -> np.dtype:
        return self._type(tensor)[1]

    def _type(self, tensor: str) -> tuple[tuple[int, ...], np.dtype]:
        if tensor in self.initializers:
            array = self.initializers[tensor]
            return array.shape, array.dtype
        if tensor not in self._types:
            self._infer()
        if tensor not in self._types:
            raise SettingError(ImportOptions, f"{self.scope}: the shape of {tensor!r} cannot be inferred; pass "
                                              "every input's shape with {input_shapes}")
        return self._types[tensor]

    def _infer(self) -> None:
        import onnx
        from onnx import helper

        try:
            model = onnx.shape_inference.infer_shapes(self.typed_model(), strict_mode=False, data_prop=True)
        except Exception as exc:  # onnx raises InferenceError or plain RuntimeError from C++
            raise SettingError(ImportOptions, f"{self.scope}: shapes cannot be inferred ({exc}); check "
                                              "{input_shapes}") from exc
        for value in list(model.graph.value_info) + list(model.graph.input):
            tensor_type = value.type.tensor_type
            dims = tensor_type.shape.dim
            if tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
                self._types[value.name] = (tuple(d.dim_value for d in dims), dtype)

    def typed_model(self) -> "onnx.ModelProto":
        """The graph so far for checks and shape inference: large parameters are declared by type, not copied."""
        from onnx import helper

        small = {n: a for n, a in self.initializers.items() if a.size <= _INFERENCE_VALUE_LIMIT}
        declared = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                    for n, a in self.initializers.items() if n not in small]
        return self._make_model(self.inputs + declared, self.outputs, small)

    def model(self) -> "onnx.ModelProto":
        return self._make_model(self.inputs, self.outputs, self.initializers)

    def _make_model(self, inputs: list, outputs: list, initializers: dict[str, np.ndarray]) -> "onnx.ModelProto":
        from onnx import helper, numpy_helper

        tensors = [numpy_helper.from_array(array, name) for name, array in initializers.items()]
        graph = helper.make_graph(self.nodes, "mxnet", inputs, outputs, tensors)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                 producer_name="kiln-mxnet-frontend")
