"""Graph inputs frozen to values at compile time: `--freeze axes=1,2`.

kiln compiles for static shapes, so an input that decides a shape (a reduction's axes, Resize's scales or sizes,
Reshape's target, TopK's K, Pad's pads) must be known when compiling; models exported with such parameters as
graph inputs are refused ("axes must be constant"). Freezing one, as OpenVINO's `--input NAME->VALUE` does, makes
it an initializer that the graph passes fold like any constant. The artifact then takes the model's other inputs;
its predictors still accept the frozen one when it holds the frozen value (kiln.compiler.predictor).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from kiln.compiler.frontends.options import ImportOptions, frozen_values, holds_numbers
from kiln.compiler.graph import FrozenInput
from kiln.compiler.onnx_graph import graph_inputs
from kiln.errors import SettingError

if TYPE_CHECKING:
    import onnx


def freeze_inputs(model: "onnx.ModelProto", values: dict[str, tuple[Any, ...]]) -> tuple[FrozenInput, ...]:
    """Each named graph input of `model` made an initializer holding its values (in place), shaped as the input is
    declared (after --input-shape); SettingError for a name that is no input or values that do not fit it."""
    import numpy as np
    from onnx import helper, numpy_helper

    inputs = {v.name: v for v in graph_inputs(model)}
    unknown = sorted(set(values) - set(inputs))
    if unknown:
        raise SettingError(ImportOptions, f"{{frozen_inputs}} names {', '.join(unknown)}, but the model's inputs "
                                          f"are {', '.join(inputs)}")
    frozen = []
    for name, given in values.items():
        tensor_type = inputs[name].type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type) if tensor_type.elem_type else None
        if dtype is None or not holds_numbers(dtype):
            raise SettingError(ImportOptions, f"{{frozen_inputs}} {name}: the input holds "
                                              f"{dtype or 'an undeclared type'}, not numbers")
        shape = _shape(name, [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
                       if tensor_type.HasField("shape") else [None], len(given))
        array = np.asarray(given).astype(dtype).reshape(shape)
        if not np.array_equal(array.ravel().astype(np.float64), np.asarray(given, np.float64), equal_nan=True):
            raise SettingError(ImportOptions, f"{{frozen_inputs}} {name}: {list(given)} do not fit its type "
                                              f"{dtype.name}")
        model.graph.initializer.append(numpy_helper.from_array(array, name))
        model.graph.input.remove(inputs[name])
        frozen.append(FrozenInput(name, dtype.name, shape, frozen_values(array)))
    return tuple(frozen)


def _shape(name: str, dims: list[int | None], count: int) -> tuple[int, ...]:
    """The declared dims with one free dim sized to take `count` values; SettingError when none does."""
    known = math.prod(d for d in dims if d is not None)
    free = [i for i, d in enumerate(dims) if d is None]
    if len(free) == 1 and known and count % known == 0:
        dims[free[0]] = count // known
    if free and len(free) != 1 or math.prod(d or 0 for d in dims) != count:
        declared = "x".join("?" if d is None else str(d) for d in dims) or "a scalar"
        raise SettingError(ImportOptions, f"{{frozen_inputs}} {name}: {count} values, but the input is {declared}; "
                                          "give one value per element (pin its shape with {input_shapes})")
    return tuple(dims)
