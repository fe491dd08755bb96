"""How a model file is read: `ImportOptions`, the settings every frontend takes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.compiler.graph import MAX_DIM, parse_dims
from kiln.settings import boolean, setting


def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`name:1x3x224x224` (one --input-shape) -> ("name", (1, 3, 224, 224))."""
    name, sep, dims = text.rpartition(":")
    shape = parse_dims(dims)
    if not sep or not name or shape is None:
        raise ValueError(f"{text!r} is not NAME:DIMS with positive integer dims (at most {MAX_DIM:,}), "
                         "e.g. input:1x3x224x224")
    return name, shape


def _input_shapes(value: Any) -> dict[str, tuple[int, ...]]:
    """--input-shape's (name, dims) pairs, or kiln.toml's table of name -> "1x3x224x224"."""
    if not isinstance(value, (dict, list, tuple)):
        raise ValueError('give a table of input name -> dims, e.g. { input = "1x3x224x224" }')
    shapes = {}
    for name, dims in (value.items() if isinstance(value, dict) else value):
        shape = dims if isinstance(dims, tuple) else parse_dims(str(dims))
        if shape is None:
            raise ValueError(f"{name} = {dims!r} is not dims like \"1x3x224x224\"")
        shapes[name] = shape
    return shapes


@dataclass(frozen=True)
class ImportOptions:
    """How to read a model file. Each keyed field is also an option of `kiln compile`, `inspect`, `tune` and
    `quantize` and a kiln.toml key (see kiln.settings)."""

    input_shapes: dict[str, tuple[int, ...]] = setting(
        default_factory=dict, key="input_shapes", flag="--input-shape", kind="multiple", parse=_input_shapes,
        item=input_shape, metavar="NAME:DIMS",
        help="Pin an input's shape, e.g. input:1x3x224x224 (repeat for several inputs). "
             "Needed when the model has symbolic dims such as a free batch size.")
    # The weights file of a model whose graph and weights are separate files (MXNet's .params).
    params: Path | None = setting(
        None, key="params", parse=Path, path=True,
        help="The weights of an MXNet model (its .params file); MODEL is then its symbol JSON.")
    # Pickle/joblib files run code when loaded: read them only when the user says they trust them.
    trust_pickle: bool = setting(
        False, key="trust_pickle", parse=boolean, kind="flag",
        help="Load pickle/joblib models (they run code while loading: only for files you trust), and skops files "
             "holding types kiln does not trust by default.")
