"""How a model file is read: `ImportOptions`, the settings every frontend takes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kiln.compiler.graph import MAX_DIM, Dim, DimRange, parse_dims
from kiln.dtypes import is_float
from kiln.errors import SettingError
from kiln.settings import boolean, setting


def parse_shape(text: str) -> tuple[Dim, ...] | None:
    """"1x3x224x224" -> (1, 3, 224, 224); "1-64x3x224x224" -> (DimRange(1, 64), 3, 224, 224); a range may stand
    for any dim (the batch first, a sequence's length after it). None when the text is not such dims."""
    dims = tuple(DimRange.parse(part) if "-" in part else parse_dims(part) for part in text.split("x"))
    if not dims or any(dim is None for dim in dims):
        return None
    return tuple(dim if isinstance(dim, DimRange) else dim[0] for dim in dims)


def input_shape(text: str) -> tuple[str, tuple[Dim, ...]]:
    """`name:1x3x224x224` (one --input-shape) -> ("name", (1, 3, 224, 224)); `name:1-64x3x224x224` gives a batch
    range, `name:1-8x16-256` a batch and a length range."""
    name, sep, dims = text.rpartition(":")
    shape = parse_shape(dims)
    if not sep or not name or shape is None:
        raise ValueError(f"{text!r} is not NAME:DIMS with positive integer dims (at most {MAX_DIM:,}) or LOW-HIGH "
                         "ranges, e.g. input:1x3x224x224, input:1-64x3x224x224 or input_ids:1-8x16-256")
    return name, shape


def _input_shapes(value: Any) -> dict[str, tuple[Dim, ...]]:
    """--input-shape's (name, dims) pairs, or kiln.toml's table of name -> "1x3x224x224"."""
    if not isinstance(value, (dict, list, tuple)):
        raise ValueError('give a table of input name -> dims, e.g. { input = "1x3x224x224" }')
    shapes = {}
    for name, dims in (value.items() if isinstance(value, dict) else value):
        shape = dims if isinstance(dims, tuple) else parse_shape(str(dims))
        if shape is None:
            raise ValueError(f"{name} = {dims!r} is not dims like \"1x3x224x224\" or \"1-64x3x224x224\"")
        shapes[name] = shape
    return shapes


def sequence_shape(text: str) -> tuple[str, tuple[tuple[int, ...], ...]]:
    """`name:2x3,2x3,4x3` (one --sequence-shape) -> ("name", ((2, 3), (2, 3), (4, 3))); `name:` is an empty
    sequence."""
    name, sep, elements = text.rpartition(":")
    shapes = tuple(parse_shape(part) for part in elements.split(",")) if elements else ()
    if not sep or not name or any(shape is None or not all(isinstance(d, int) for d in shape) for shape in shapes):
        raise ValueError(f"{text!r} is not NAME:DIMS,DIMS,... (each element's shape, positive integer dims), "
                         "e.g. seq:2x3,2x3,4x3, or NAME: for an empty sequence")
    return name, shapes


def _sequence_shapes(value: Any) -> dict[str, tuple[tuple[int, ...], ...]]:
    """--sequence-shape's (name, shapes) pairs, or kiln.toml's table of name -> "2x3,4x3" (or ["2x3", "4x3"])."""
    if not isinstance(value, (dict, list, tuple)):
        raise ValueError('give a table of sequence input name -> element shapes, e.g. { seq = "2x3,4x3" }')
    pairs = value.items() if isinstance(value, dict) else value
    return dict((name, shapes) if isinstance(shapes, tuple) else
                sequence_shape(f"{name}:{shapes if isinstance(shapes, str) else ','.join(map(str, shapes))}")
                for name, shapes in pairs)


def frozen_values(value: Any) -> tuple[Any, ...]:
    """One input's values as given: "1,2,-1" (the command line, kiln.toml), a number or a list (kiln.toml, Python)
    or an array (Python) -> a flat tuple of numbers. ValueError when they are not numbers."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")] if value.strip() else []
        try:
            return tuple(int(item) if _is_int(item) else float(item) for item in items)
        except ValueError:
            raise ValueError(f"{value!r} is not numbers separated by commas, e.g. 1,2 or 0.5") from None
    array = np.asarray(value)
    if not holds_numbers(array.dtype):
        raise ValueError(f"{value!r} is not numbers")
    return tuple(array.ravel().astype(np.float64 if array.dtype.kind == "V" else array.dtype).tolist())


def holds_numbers(dtype) -> bool:
    return dtype.kind in "biuf" or is_float(dtype)  # is_float: bfloat16 and the other ml_dtypes floats


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def frozen_input(text: str) -> tuple[str, tuple[Any, ...]]:
    """`axes=1,2` (one --freeze) -> ("axes", (1, 2))."""
    name, sep, values = text.partition("=")
    if not sep or not name:
        raise ValueError(f"{text!r} is not NAME=VALUES, e.g. axes=1,2 (an input and its values, comma-separated)")
    return name, frozen_values(values)


def _frozen_inputs(value: Any) -> dict[str, tuple[Any, ...]]:
    """--freeze's (name, values) pairs, or kiln.toml's table of name -> values ("1,2" or [1, 2])."""
    if not isinstance(value, (dict, list, tuple)):
        raise ValueError('give a table of input name -> values, e.g. { axes = [1, 2] }')
    return {name: frozen_values(values) for name, values in (value.items() if isinstance(value, dict) else value)}


@dataclass(frozen=True)
class ImportOptions:
    """How to read a model file. Each keyed field is also an option of `kiln compile`, `inspect`, `tune` and
    `quantize` and a kiln.toml key (see kiln.settings)."""

    input_shapes: dict[str, tuple[Dim, ...]] = setting(
        default_factory=dict, key="input_shapes", flag="--input-shape", kind="multiple", parse=_input_shapes,
        item=input_shape, metavar="NAME:DIMS",
        help="Pin an input's shape, e.g. input:1x3x224x224 (repeat for several inputs), or give its batch a range "
             "(input:1-64x3x224x224): the artifact then takes any batch in it; a sequence model may give its length "
             "one too (input_ids:1-8x16-256; shorter inputs are padded with zeros). Needed when the model has "
             "symbolic dims; a free batch alone defaults to the range 1-64.")
    # The weights file of a model whose graph and weights are separate files (MXNet's .params).
    params: Path | None = setting(
        None, key="params", parse=Path, path=True,
        help="The weights of an MXNet model (its .params file); MODEL is then its symbol JSON.")
    # Pickle/joblib files run code when loaded: read them only when the user says they trust them.
    trust_pickle: bool = setting(
        False, key="trust_pickle", parse=boolean, kind="flag",
        help="Load pickle/joblib models (they run code while loading: only for files you trust), and skops files "
             "holding types kiln does not trust by default.")
    frozen_inputs: dict[str, tuple[Any, ...]] = setting(
        default_factory=dict, key="freeze", kind="multiple", parse=_frozen_inputs, item=frozen_input,
        metavar="NAME=VALUES",
        help="Compile with an ONNX input fixed to these values, e.g. axes=1 or scales=1,1,2,2 (repeat for several "
             "inputs): for parameters such as axes, scales, sizes, shape, pads or K that the model takes as inputs "
             "and kiln needs as constants. The artifact no longer takes the input.")

    sequence_shapes: dict[str, tuple[tuple[int, ...], ...]] = setting(
        default_factory=dict, key="sequence_shapes", flag="--sequence-shape", kind="multiple",
        parse=_sequence_shapes, item=sequence_shape, metavar="NAME:DIMS,DIMS,...",
        help="Pin an ONNX sequence input (or an optional one holding a sequence): its elements' shapes in order, "
             "e.g. seq:2x3,2x3,4x3 (seq: for an empty one). The artifact takes it as a list of arrays; sequence "
             "ops are resolved at compile time.")

    def batch_range(self) -> DimRange | None:
        """The batch range the shapes give (every input given one must give the same), or None."""
        return self._shared_range([shape[0] for shape in self.input_shapes.values() if shape], "batch")

    def length_range(self) -> DimRange | None:
        """The range the shapes give their dims after the first (a sequence's length; every such range the same),
        or None."""
        return self._shared_range([dim for shape in self.input_shapes.values() for dim in shape[1:]], "length")

    def _shared_range(self, dims: list[Dim], role: str) -> DimRange | None:
        ranges = {dim for dim in dims if isinstance(dim, DimRange)}
        if len(ranges) > 1:
            raise SettingError(ImportOptions, f"{{input_shapes}} gives {role} ranges "
                                              f"{', '.join(sorted(map(str, ranges)))}; the inputs share one {role}, "
                                              "give them the same range")
        return next(iter(ranges), None)

    def pinned(self, batch: int | str, length: int | str | None = None) -> "ImportOptions":
        """These options with each batch range replaced by `batch` and each length range by `length`: sizes, or
        names that leave the dims free."""
        def pin(shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
            return tuple((batch if index == 0 else length) if isinstance(dim, DimRange) else dim
                         for index, dim in enumerate(shape))

        return dataclasses.replace(self, input_shapes={name: pin(shape) for name, shape in self.input_shapes.items()})
