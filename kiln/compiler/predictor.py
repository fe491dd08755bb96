"""What `kiln.load` returns: a predictor over a compiled library, with its inputs checked."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from kiln.compiler.graph import DimRange, FrozenInput, SequenceValue, TensorSpec
from kiln.dtypes import as_declared, convert_hint
from kiln.errors import InputError


class Predictor:
    """Runs a compiled artifact. Subclasses implement `_execute` on validated arrays, in input order."""

    # Model inputs the artifact was compiled with values for (--freeze): accepted holding those values, and left out.
    frozen: tuple[FrozenInput, ...] = ()
    # ONNX sequence inputs and outputs, taken and given as lists of arrays (one input or output per element).
    sequence_inputs: tuple[SequenceValue, ...] = ()
    sequence_outputs: tuple[SequenceValue, ...] = ()

    def __init__(self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]):
        self.inputs = inputs
        self.outputs = outputs

    def run(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name, for inputs given by name (or as one array for single-input models)."""
        arrays = self._validate(inputs)
        outputs = dict(zip((spec.name for spec in self.outputs), self._execute(arrays)))
        return _grouped(outputs, self.sequence_outputs) if self.sequence_outputs else outputs

    def taking(self, manifest) -> "Predictor":
        """This predictor taking and giving what `manifest` (a kiln.compiler.manifest.Manifest) says its callers
        pass: frozen inputs, sequences as lists."""
        self.frozen = manifest.frozen_inputs
        self.sequence_inputs, self.sequence_outputs = manifest.sequence_inputs, manifest.sequence_outputs
        return self

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """Like `run`, but a single-output model returns its array directly."""
        outputs = self.run(inputs)
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def _validate(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        if not isinstance(inputs, Mapping):
            if len(self.inputs) != 1:
                raise InputError(f"this model has {len(self.inputs)} inputs "
                                 f"({', '.join(s.name for s in self.inputs)}); pass a dict by input name")
            inputs = {self.inputs[0].name: inputs}
        if self.frozen:
            inputs = _without_frozen(inputs, self.frozen)
        if self.sequence_inputs:
            inputs = _elements(inputs, self.sequence_inputs)
        expected = [spec.name for spec in self.inputs]
        unknown, missing = sorted(set(inputs) - set(expected)), [n for n in expected if n not in inputs]
        if unknown or missing:
            raise InputError(f"input names do not match the model: expected {', '.join(expected)}"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; unknown {', '.join(unknown)}" if unknown else ""))
        return [check_array(spec, inputs[spec.name]) for spec in self.inputs]


def _without_frozen(inputs: Mapping[str, Any], frozen: tuple[FrozenInput, ...]) -> dict[str, Any]:
    """`inputs` less those the artifact was compiled with values for; InputError where one holds other values."""
    names = {spec.name for spec in frozen}
    for spec in frozen:
        if spec.name in inputs and not np.array_equal(np.asarray(inputs[spec.name]).reshape(-1),
                                                      np.asarray(spec.values), equal_nan=True):
            raise InputError(f"input {spec.name!r} was frozen when compiling ({spec.describe()}); this artifact "
                             f"computes with those values only. Leave it out, or recompile with --freeze "
                             f"{spec.name}=<values>")
    return {name: value for name, value in inputs.items() if name not in names}


def _elements(inputs: Mapping[str, Any], sequences: tuple[SequenceValue, ...]) -> dict[str, Any]:
    """`inputs` with each sequence input's list of arrays given as its elements' inputs."""
    given = dict(inputs)
    for sequence in sequences:
        if sequence.name not in given:
            continue
        value = given.pop(sequence.name)
        if not isinstance(value, (list, tuple)) or len(value) != len(sequence.elements):
            got = f"a list of {len(value)} arrays" if isinstance(value, (list, tuple)) else type(value).__name__
            raise InputError(f"input {sequence.name!r} is a sequence of {len(sequence.elements)} arrays (as "
                             f"compiled with --sequence-shape); got {got}. Pass a list, or recompile for another "
                             "length")
        given.update(zip(sequence.elements, value))
    return given


def _grouped(outputs: dict[str, Any], sequences: tuple[SequenceValue, ...]) -> dict[str, Any]:
    """`outputs` with each sequence output's elements gathered into a list under its name, where its first
    element was."""
    first = {sequence.elements[0]: sequence for sequence in sequences if sequence.elements}
    inside = {name for sequence in sequences for name in sequence.elements}
    grouped: dict[str, Any] = {}
    for name, value in outputs.items():
        if name in first:
            grouped[first[name].name] = [outputs[element] for element in first[name].elements]
        elif name not in inside:
            grouped[name] = value
    return {**grouped, **{s.name: [] for s in sequences if not s.elements}}


def check_array(spec: TensorSpec, value: Any, accepted_dtypes: tuple[str, ...] = ()) -> np.ndarray:
    """The value as an array matching `spec` (string dims match any size), or an InputError saying how not."""
    array = np.asarray(value)
    dtypes = accepted_dtypes or (spec.dtype,)
    if array.dtype.type is np.void:  # a bfloat16 or float8 array read from a file (kiln.dtypes)
        array = as_declared(array, spec.dtype)
    if all(array.dtype != dtype for dtype in dtypes):  # not dtype.name: numpy computes it, ~3 us a call
        raise InputError(f"input {spec.name!r} has dtype {array.dtype.name}; the model takes "
                         f"{' or '.join(dtypes)} (convert with {convert_hint(dtypes[0])})")
    fits = [isinstance(want, str) or want == got or (isinstance(want, DimRange) and got in want)
            for want, got in zip(spec.shape, array.shape)]
    shape_ok = len(array.shape) == len(spec.shape) and all(fits)
    if not shape_ok and len(array.shape) == len(spec.shape) and isinstance(spec.shape[0], DimRange) \
            and not fits[0] and all(fits[1:]):
        batch = spec.shape[0]
        raise InputError(f"input {spec.name!r} has batch {array.shape[0]}; this artifact takes batches {batch}. "
                         f"Split the batch, or recompile with a wider range (--input-shape {spec.name}:"
                         f"{max(1, min(batch.low, array.shape[0]))}-{max(batch.high, array.shape[0])}x"
                         f"{'x'.join(map(str, spec.shape[1:]))})")
    if not shape_ok:
        outside = [(size, want) for size, want in zip(array.shape[1:], spec.shape[1:])
                   if isinstance(want, DimRange) and size not in want]
        if outside and len(array.shape) == len(spec.shape):
            size, lengths = outside[0]
            raise InputError(f"input {spec.name!r} has length {size}; this artifact takes lengths {lengths}. "
                             f"{'Cut' if size > lengths.high else 'Pad'} the input, or recompile with a wider "
                             f"range in --input-shape {spec.name}:...")
        got = "x".join(map(str, array.shape)) or "scalar"
        raise InputError(f"input {spec.name!r} has shape {got}; the model takes "
                         f"{'x'.join(map(str, spec.shape))}. To run another batch size, recompile with "
                         f"--input-shape {spec.name}:<dims>")
    if spec.index_bound is not None and array.size:
        low, high = int(array.min()), int(array.max())
        if low < -spec.index_bound or high >= spec.index_bound:
            raise InputError(f"input {spec.name!r} holds {high if high >= spec.index_bound else low}, outside the "
                             f"{spec.index_bound} rows of the table it indexes (valid: {-spec.index_bound} to "
                             f"{spec.index_bound - 1}); the compiled code would read past the table")
    return np.ascontiguousarray(array)
