"""The artifact's manifest as types: what was built, from what, for which target, and how.

`Manifest.to_json` is what `manifest.json` holds and `Manifest.from_json` reads it back; the records
inside (build, integer kernels, quantization) are typed the same way. Nothing here imports a compiler.
"""

from __future__ import annotations

import collections
import enum
import math
from dataclasses import dataclass, field
from typing import Any

from kiln.compiler.graph import MAX_DIM, DimRange, FrozenInput, Provenance, SequenceValue, TensorSpec
from kiln.dtypes import EXTENDED
from kiln.errors import InputError
from kiln.targets.isa import Int8Isa
from kiln.targets.presets import Preset

SCHEMA_VERSION = 2


class Precision(str, enum.Enum):
    FP32 = "fp32"
    INT8 = "int8"


class Backend(str, enum.Enum):
    TVM = "tvm"
    TL2CGEN = "tl2cgen"


@dataclass(frozen=True)
class FileEntry:
    """A file of the artifact, by name relative to the artifact folder, with its sha256."""

    file: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> "FileEntry":
        if not isinstance(data["file"], str) or not isinstance(data["sha256"], str):
            raise ValueError(f"file entry {data} has no text file name and sha256")
        return cls(data["file"], data["sha256"])


@dataclass(frozen=True)
class BuildRecord:
    """The build's fingerprint (see compiler.fingerprint) and, for TVM builds, how many kernels each
    schedule rule built ("tuned": from records)."""

    fingerprint: str
    schedules: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, **({} if self.schedules is None else {"schedules": self.schedules})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BuildRecord":
        return cls(data["fingerprint"], data.get("schedules"))


@dataclass(frozen=True)
class IntegerKernels:
    """What the quantized ops of an INT8 TVM build became: int8 kernels (with the dot product they use),
    or float ops, each with its op, reason and, for convs, shape and strides."""

    isa: str | None  # the dot products used, comma-separated
    target_int8_isa: Int8Isa  # the target's int8 instruction set
    int8_ops: int
    int8_by_op: dict[str, int]
    float_ops: tuple[dict[str, Any], ...]

    @classmethod
    def of(cls, kernels: list[dict[str, Any]], target_int8_isa: Int8Isa) -> "IntegerKernels | None":
        """From the integer rewrite's per-op entries ({"kernel": "int8" | "float", "op", ...}); None when empty."""
        if not kernels:
            return None
        integer = [entry for entry in kernels if entry["kernel"] == "int8"]
        isas = {entry["isa"] for entry in integer if "isa" in entry}
        return cls(", ".join(sorted(isas)) or None, target_int8_isa, len(integer),
                   dict(collections.Counter(entry["op"] for entry in integer)),
                   tuple(entry for entry in kernels if entry["kernel"] == "float"))

    def to_json(self) -> dict[str, Any]:
        return {"isa": self.isa, "target_int8_isa": self.target_int8_isa.value, "int8_ops": self.int8_ops,
                "int8_by_op": self.int8_by_op, "float_ops": list(self.float_ops)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "IntegerKernels":
        return cls(data["isa"], Int8Isa(data["target_int8_isa"]), data["int8_ops"], data["int8_by_op"],
                   tuple(data["float_ops"]))


@dataclass(frozen=True)
class QuantizationSummary:
    """How a neural INT8 build was quantized: its settings (as quantization.config writes them), the calibration,
    which nodes were quantized and which stayed float, and float vs INT8 accuracy when evaluated."""

    settings: dict[str, Any]
    calibration: dict[str, Any]
    quantized_nodes: int
    float_nodes: tuple[str, ...]
    auto_excluded: tuple[str, ...]
    accuracy: dict[str, Any] | None

    _FIELDS = ("calibration", "quantized_nodes", "float_nodes", "auto_excluded", "accuracy")

    def to_json(self) -> dict[str, Any]:
        return {**self.settings, "calibration": self.calibration, "quantized_nodes": self.quantized_nodes,
                "float_nodes": list(self.float_nodes), "auto_excluded": list(self.auto_excluded),
                "accuracy": self.accuracy}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "QuantizationSummary":
        settings = {key: value for key, value in data.items() if key not in cls._FIELDS}
        return cls(settings, data["calibration"], data["quantized_nodes"], tuple(data["float_nodes"]),
                   tuple(data["auto_excluded"]), data["accuracy"])


@dataclass(frozen=True)
class Verification:
    """What was compared, and by how much the artifact's outputs differed from the reference's."""

    reference: str  # the engine and model file it ran
    inputs: str  # where the inputs came from
    worst_output: str
    difference: float  # the worst output's largest difference, in `unit`
    tolerance: float
    unit: str

    @property
    def passed(self) -> bool:
        return self.difference <= self.tolerance

    def describe(self) -> str:
        return (f"{self.worst_output} differs from {self.reference} by {self.difference:.3g} {self.unit} "
                f"(tolerance {self.tolerance:g}) on {self.inputs}")

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "inputs": self.inputs, "worst_output": self.worst_output,
                "difference": self.difference, "tolerance": self.tolerance, "unit": self.unit,
                "passed": self.passed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Verification":
        return cls(data["reference"], data["inputs"], data["worst_output"], data["difference"], data["tolerance"],
                   data["unit"])


@dataclass(frozen=True)
class Manifest:
    versions: dict[str, str]  # kiln's and its dependencies' versions at build time
    source: Provenance
    target: Preset
    backend: Backend
    precision: Precision
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    library: FileEntry
    files: dict[str, FileEntry] = field(default_factory=dict)  # by role: onnx, int8_onnx, report, ranges, model
    # An artifact whose inputs take a batch range: the VM function of `library` that runs each batch size, any
    # batch in the range run as a sequence of them (kiln.compiler.batching).
    batch_functions: dict[int, str] = field(default_factory=dict)
    # An artifact whose inputs take a length range: length bucket -> batch size -> VM function (the batch sizes
    # as batch_functions' for a batch range, else the one fixed batch); batch_functions is then empty.
    length_functions: dict[int, dict[int, str]] = field(default_factory=dict)
    build: BuildRecord | None = None
    tree: dict[str, Any] | None = None  # a tree build's summary (backends.treelite.TreeBuild)
    integer_kernels: IntegerKernels | None = None
    quantization: QuantizationSummary | None = None
    verification: Verification | None = None  # the check against ONNX Runtime at compile time, where it ran
    frozen_inputs: tuple[FrozenInput, ...] = ()  # model inputs given values at compile time (--freeze)
    sequence_inputs: tuple[SequenceValue, ...] = ()  # ONNX sequences taken and given as their elements
    sequence_outputs: tuple[SequenceValue, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "versions": self.versions,
            "source": self.source.to_json(),
            "target": self.target.to_json(),
            "backend": self.backend.value,
            "precision": self.precision.value,
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
            "library": self.library.to_json(),
            "files": {role: entry.to_json() for role, entry in sorted(self.files.items())},
        }
        for key, values in (("frozen_inputs", self.frozen_inputs), ("sequence_inputs", self.sequence_inputs),
                            ("sequence_outputs", self.sequence_outputs)):
            if values:
                data[key] = [value.to_json() for value in values]
        if self.batch_functions:
            data["batch_functions"] = {str(size): name for size, name in sorted(self.batch_functions.items())}
        if self.length_functions:
            data["length_functions"] = {str(length): {str(size): name for size, name in sorted(functions.items())}
                                        for length, functions in sorted(self.length_functions.items())}
        for key, record in (("build", self.build), ("integer_kernels", self.integer_kernels),
                            ("quantization", self.quantization), ("verification", self.verification)):
            if record is not None:
                data[key] = record.to_json()
        if self.tree is not None:
            data["tree"] = self.tree
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        """The manifest in `data`; InputError when it is of another schema or misses what kiln needs."""
        if data.get("schema_version") != SCHEMA_VERSION:
            raise InputError(f"manifest schema {data.get('schema_version')!r}, this kiln reads {SCHEMA_VERSION}; "
                             "rebuild the artifact with this kiln")
        try:
            backend = Backend(data["backend"])
        except (KeyError, ValueError):
            raise InputError(f"unknown backend {data.get('backend')!r} in the manifest; is it from a newer kiln? "
                             "Rebuild the artifact with this kiln") from None
        try:
            inputs = tuple(TensorSpec.from_json(s) for s in data["inputs"])
            outputs = tuple(TensorSpec.from_json(s) for s in data["outputs"])
            _check_specs(backend, inputs, outputs)
            target = Preset.from_json(data["target"])
            if not all(isinstance(feature, str) for feature in target.requires):
                raise ValueError(f"target {target.name!r} requires {list(target.requires)}, not CPU feature names")
            return cls(
                versions=data["versions"], source=Provenance.from_json(data["source"]),
                target=target, backend=backend, precision=Precision(data["precision"]),
                inputs=inputs, outputs=outputs,
                library=FileEntry.from_json(data["library"]),
                files={role: FileEntry.from_json(entry) for role, entry in data["files"].items()},
                batch_functions=_batch_functions(data.get("batch_functions", {}), backend),
                length_functions=_length_functions(data.get("length_functions", {}), backend),
                build=BuildRecord.from_json(data["build"]) if "build" in data else None,
                tree=data.get("tree"),
                integer_kernels=IntegerKernels.from_json(data["integer_kernels"]) if "integer_kernels" in data
                else None,
                quantization=QuantizationSummary.from_json(data["quantization"]) if "quantization" in data
                else None,
                verification=Verification.from_json(data["verification"]) if "verification" in data else None,
                frozen_inputs=tuple(FrozenInput.from_json(f) for f in data.get("frozen_inputs", ())),
                sequence_inputs=tuple(SequenceValue.from_json(s) for s in data.get("sequence_inputs", ())),
                sequence_outputs=tuple(SequenceValue.from_json(s) for s in data.get("sequence_outputs", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the manifest is incomplete or malformed ({type(exc).__name__}: {exc}); "
                             "rebuild the artifact") from None


_DTYPES = frozenset({"bool", "float16", "float32", "float64", *(f"{sign}int{bits}" for sign in ("", "u")
                                                                for bits in (8, 16, 32, 64)), *EXTENDED})


def _batch_functions(data: Any, backend: Backend) -> dict[int, str]:
    """batch size -> VM function name; ValueError unless sizes are positive and 1 is among them (every batch in a
    range is a sum of its sizes only if the smallest is 1), and only for TVM libraries (tree ones take any batch)."""
    functions = {int(size): name for size, name in dict(data).items()}
    if functions and backend is not Backend.TVM:
        raise ValueError("batch_functions in a tree artifact, whose library takes any batch")
    if functions and (1 not in functions or min(functions) < 1
                      or not all(isinstance(name, str) and name.isidentifier() for name in functions.values())):
        raise ValueError(f"batch_functions {data!r}: sizes from 1, each naming a function")
    return functions


def _length_functions(data: Any, backend: Backend) -> dict[int, dict[int, str]]:
    """length -> batch size -> VM function name; ValueError unless every length has the same batch sizes, as
    _batch_functions checks them where there are several (one is a fixed batch)."""
    functions = {int(length): {int(size): name for size, name in dict(sizes).items()}
                 for length, sizes in dict(data).items()}
    if functions and backend is not Backend.TVM:
        raise ValueError("length_functions in a tree artifact")
    if len({tuple(sorted(sizes)) for sizes in functions.values()}) > 1 or min(functions, default=1) < 1:
        raise ValueError(f"length_functions {data!r}: positive lengths, each with the same batch sizes")
    for sizes in functions.values():
        if len(sizes) > 1:
            _batch_functions(sizes, backend)
        elif not all(size >= 1 and isinstance(name, str) and name.isidentifier() for size, name in sizes.items()):
            raise ValueError(f"length_functions {data!r}: a positive batch size naming a function")
    return functions


def _check_specs(backend: Backend, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
    """ValueError unless the specs are what the predictors take as given: a numeric numpy dtype, every dim a size
    (at most MAX_DIM, and MAX_DIM elements in all) or a name, an output at least, and a tree artifact's one input and
    one output [batch, n]. The predictors allocate their tensors from these before the library is ever called."""
    for spec in (*inputs, *outputs):
        if not isinstance(spec.dtype, str) or spec.dtype not in _DTYPES:
            raise ValueError(f"{spec.name!r} has dtype {spec.dtype!r}, not a numeric numpy dtype")
        sizes = [d for d in spec.shape if not isinstance(d, (str, DimRange))]
        if not all(type(d) is int and 0 <= d <= MAX_DIM for d in sizes) or math.prod(sizes) > MAX_DIM:
            raise ValueError(f"{spec.name!r} has shape {list(spec.shape)}; dims are sizes up to {MAX_DIM} or names")
    if not outputs:
        raise ValueError("no outputs")
    if backend is Backend.TL2CGEN and not (len(inputs) == len(outputs) == 1
                                           and len(inputs[0].shape) == len(outputs[0].shape) == 2):
        raise ValueError("a tree artifact has one input and one output, each [batch, n]")
