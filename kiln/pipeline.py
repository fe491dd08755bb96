"""The one sequence every verb runs, in this order:

    load (frontend) -> graph passes (every precision) -> [quantize] -> backend build -> write artifact

`compile_model` runs all of it, and before writing checks the built artifact against ONNX Runtime
(kiln.verification); `quantize_model` stops after quantizing and writes the QDQ model; `tune_model` tunes
the graph's kernels; `inspect_path` describes a model or an artifact; `verify_artifact` re-runs the check.
Each returns a typed result; the command line only prints them.
"""

from __future__ import annotations

from collections import Counter
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.arrays import random_feed
from kiln.calibration.datasets import CalibData, open_dataset
from kiln.compiler import artifact
from kiln.compiler.backends.tvm.schedules import ScheduleMode
from kiln.compiler.fingerprint import fingerprint
from kiln.compiler.frontends import ImportOptions, SourceFormat, detect_format, load_graph
from kiln.compiler.batching import DEFAULT_RANGE, chunk_sizes, length_buckets, ranged
from kiln.compiler.graph import DimRange, Graph, GraphKind, Provenance, TensorSpec
from kiln.compiler.manifest import Backend, BuildRecord, IntegerKernels, Manifest, Precision, Verification
from kiln.compiler.onnx_graph import SharedWeights
from kiln.compiler.passes import run_passes
from kiln.errors import InputError, SettingError, TargetError, UnsupportedOpError
from kiln.progress import QUIET, Progress
from kiln.quantization.config import QuantizeOptions
from kiln.quantization.quantizer import Quantized, quantize_graph, requantize, save_model
from kiln.quantization.report import Report
from kiln.settings import boolean, group, setting
from kiln.targets.presets import Preset
from kiln.verification import (ReferenceUnavailable, VerificationError, calibration_feed, given_feed, padding_check,
                               verify)

if TYPE_CHECKING:
    import numpy as np

    from kiln.remote.session import Remote


def _target(spec: str) -> Preset:
    from kiln.targets import resolve

    if not isinstance(spec, str):
        raise ValueError("give a preset name, `host`, or a TVM target as JSON")
    return resolve(spec)


@dataclass(frozen=True)
class CompileOptions:
    """What `kiln compile` builds, and where. Each keyed field (its groups' included) is also a `kiln compile`
    option and, but for output, a kiln.toml key (see kiln.settings)."""

    target: Preset = setting(key="target", short="-t", parse=_target, raw_default="x86-64",
                             help="Target preset (see `kiln targets`), `host`, or a TVM target as JSON.")
    # Where to write, not what to build: not in the fingerprint. kiln.toml names it from output_dir.
    output: Path = setting(key="output", short="-o", parse=Path, path=True, build=False, toml=False,
                           help="Artifact directory to write [default: MODEL's name + .kiln in the current folder].")
    imports: ImportOptions = group(ImportOptions)
    precision: Precision = setting(
        Precision.FP32, key="precision", parse=Precision, flag="--int8", switch=Precision.INT8.value,
        help="Quantize to INT8 (neural graphs: calibrated QDQ; trees: threshold quantization).")
    # Calibration data (.npz/.npy/CSV/folder): drives INT8 ranges, and branch annotation for trees.
    calib: Path | None = setting(
        None, key="calib", parse=Path, path=True,
        help="Calibration data (.npz, .npy, CSV or a folder of them): INT8 ranges, tree branch statistics.")
    quantize: QuantizeOptions = group(QuantizeOptions)  # neural INT8: observers, exclusions, report, gate
    schedule: ScheduleMode = setting(
        ScheduleMode.DEFAULT, key="schedule", parse=ScheduleMode,
        help="Neural CPU builds: kiln's schedules (NCHWc layout, vectorized and parallel kernels), or none: "
             "TVM's plain loops (slow; for debugging a schedule).")
    records: Path | None = setting(
        None, key="records", parse=Path, path=True,
        help="A `kiln tune` records folder: tuned kernels are used where they beat the default schedules.")
    verify: bool = setting(
        True, key="verify", parse=boolean, kind="flag",
        help="Neural models: before writing the artifact, run it and ONNX Runtime on the same inputs (a batch of "
             "--calib data, else seeded random ones) and refuse it (exit 3, nothing written) if they differ: FP32 "
             "beyond 1e-4 of the largest output, INT8 by more than one output step of kiln's own QDQ model.")


@dataclass(frozen=True)
class CompileResult:
    path: Path
    manifest: Manifest
    report: Report | None = None  # neural INT8: per-layer SQNR and accuracy (also report.json in the artifact)


@dataclass(frozen=True)
class QuantizeResult:
    output: Path
    quantized: Quantized


@dataclass(frozen=True)
class ModelSummary:
    """`kiln inspect` of a model file: its signature and, for neural graphs, its ops and what kiln cannot compile;
    for tree ensembles, the trees."""

    kind: GraphKind
    source: Provenance
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # neural: opset, nodes, parameters, ops, unsupported (an MXNet symbol that does not convert: its own ops and
    # the unsupported ones); trees: {"tree": summary}
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "source": self.source.to_json(),
                "inputs": [spec.to_json() for spec in self.inputs],
                "outputs": [spec.to_json() for spec in self.outputs], **self.details}


def load(model: Path, imports: ImportOptions, progress: Progress = QUIET) -> Graph:
    """Steps 1 and 2: the model file as a Graph, after the graph passes."""
    progress.step(f"importing {model}")
    return run_passes(load_graph(model, imports))


def compile_model(model: Path, options: CompileOptions, progress: Progress = QUIET) -> CompileResult:
    artifact.check_output_path(options.output)
    build = BuildRecord(fingerprint(model, options))
    progress.step(f"importing {model}")
    batch, length = options.imports.batch_range(), options.imports.length_range()
    if (batch or length) and detect_format(model) is not SourceFormat.ONNX:
        raise SettingError(ImportOptions, "a batch or length range in {input_shapes} needs an ONNX model; compile "
                                          "one artifact per shape")
    source = load_graph(model, options.imports.pinned(BATCH, LENGTH) if batch or length else options.imports)
    if source.kind is GraphKind.TREE:
        return _compile_tree(source, model, options, build, progress)
    batch = batch or _default_batch(source, progress)
    if batch is None and length is None:
        return _compile_neural(source, options, build, progress)
    return _compile_ranges(source, model, batch, length, options, build, progress)


BATCH, LENGTH = "batch", "length"  # the names ranged dims get in the reference ONNX model


def _default_batch(source: Graph, progress: Progress) -> DimRange | None:
    """DEFAULT_RANGE when the inputs' only free dims are their first ones (a free batch), else None."""
    free = [(spec, index) for spec in source.signature.inputs for index, dim in enumerate(spec.shape)
            if not isinstance(dim, int)]
    if not free or any(index != 0 or spec.dtype == "unknown" for spec, index in free):
        return None  # other free dims, or an input that is no tensor (a sequence, an optional): refused later
    progress.step(f"the batch is free: compiling for batches {DEFAULT_RANGE} (pin one size with --input-shape "
                  f"{free[0][0].name}:1x..., or give another range)")
    return DEFAULT_RANGE


def _compile_neural(source: Graph, options: CompileOptions, build: BuildRecord, progress: Progress) -> CompileResult:
    import onnx

    graph = _prepared(source, options)
    with artifact.staging(options.output) as stage:
        reference = stage / "model.onnx"
        onnx.save_model(source.body, str(reference))
        built = _build_library([_Entry(MAIN, graph, reference, stage)], stage / "model.so", options, progress)
        manifest = _neural_manifest(graph, options, build, built, {"onnx": reference, **built.files})
        artifact.write_manifest(stage, manifest)
    progress.step(f"wrote {options.output}")
    return CompileResult(options.output, manifest, built.quantized.report if built.quantized else None)


MAIN = "main"  # the VM function of a fixed-shape library; in a ranged one, that of batch 1 at the longest length


def _function(size: int | None, length: int | None, main: tuple[int | None, int | None]) -> str:
    if (size, length) == main:
        return MAIN
    return "main" + (f"_b{size}" if size else "") + (f"_l{length}" if length else "")


def _compile_ranges(source: Graph, model: Path, batch: DimRange | None, length: DimRange | None,
                    options: CompileOptions, build: BuildRecord, progress: Progress) -> CompileResult:
    """One library with a VM function per chunk size of the batch range and length bucket of the length range
    (kiln.compiler.batching), each compiled from the model with those dims pinned and checked like a fixed-shape
    build; their weights are stored once. INT8 calibrates the batch-1, longest-length function. The manifest's
    inputs and outputs take the ranges; padding to a length bucket is checked not to change the outputs."""
    import gc
    import itertools
    import tempfile

    import onnx

    sizes, buckets = chunk_sizes(batch) if batch else (None,), length_buckets(length) if length else (None,)
    main_key = (sizes[-1], buckets[-1])
    with artifact.staging(options.output) as stage, tempfile.TemporaryDirectory(dir=stage) as scratch:
        entries, shared = {}, SharedWeights(Path(scratch))
        for size, bucket in itertools.product(sizes, buckets):
            pinned = load_graph(model, _pinned(source, options.imports, size, bucket))
            graph = _prepared(pinned, options)
            if size is not None:
                _check_batched_outputs(graph, size)
            function = _function(size, bucket, main_key)
            if function == MAIN:
                onnx.save_model(pinned.body, str(stage / "model.onnx"))
                entries[size, bucket] = _Entry(function, graph, stage / "model.onnx", stage)
            else:  # the others' files serve checks only; their models share one copy of the weights
                folder = Path(scratch) / function
                folder.mkdir()
                shared.save(pinned.body, f"{function}.onnx")
                entries[size, bucket] = _Entry(function, graph, shared.folder / f"{function}.onnx",
                                               folder).offloaded(shared)
            del pinned, graph
            gc.collect()  # the passes' models sit in reference cycles: freed now, not one per function at once
        progress.step("compiling " + ", ".join(filter(None, (
            batch and f"batch sizes {', '.join(map(str, sizes))} (of the range {batch})",
            length and f"lengths {', '.join(map(str, buckets))} (of the range {length})"))))
        built = _build_library(list(entries.values()), stage / "model.so", options, progress)
        main = entries[main_key].graph
        files = {"onnx": stage / "model.onnx"}
        onnx.save_model(source.body, str(files["onnx"]))  # the model as given, with its free dims
        outputs = _output_length_dims(entries, buckets) if length else {}
        signature = dataclasses.replace(
            main.signature,
            inputs=tuple(ranged(spec, batch if spec.name in _batched_inputs(source) else None, length,
                                _length_dims(source, spec.name)) for spec in main.signature.inputs),
            outputs=tuple(ranged(spec, batch, length, outputs.get(spec.name, ())) for spec in main.signature.outputs))
        functions = {key: entry.function for key, entry in entries.items()}
        manifest = dataclasses.replace(
            _neural_manifest(dataclasses.replace(main, signature=signature), options, build, built,
                             {**files, **built.files}),
            batch_functions={} if length else {size: function for (size, _), function in functions.items()},
            length_functions={bucket: {size or _fixed_batch(main): function for (size, b), function
                                       in functions.items() if b == bucket} for bucket in buckets} if length else {})
        artifact.write_manifest(stage, manifest)
        if length and options.verify:
            _check_padding(stage, buckets, options, progress)
    progress.step(f"wrote {options.output}")
    return CompileResult(options.output, manifest, built.quantized.report if built.quantized else None)


def _batched_inputs(source: Graph) -> set[str]:
    """The inputs whose first dim is the free batch (the source's other dims are pinned or LENGTH)."""
    return {spec.name for spec in source.signature.inputs if spec.shape and not isinstance(spec.shape[0], int)}


def _length_dims(source: Graph, name: str) -> tuple[int, ...]:
    spec = next(spec for spec in source.signature.inputs if spec.name == name)
    return tuple(index for index, dim in enumerate(spec.shape) if index and dim == LENGTH)


def _fixed_batch(graph: Graph) -> int:
    """The batch of a graph whose batch is pinned: its first input's first dim."""
    return next((spec.shape[0] for spec in graph.signature.inputs if spec.shape), 1)


def _pinned(source: Graph, imports: ImportOptions, size: int | None, length: int | None) -> ImportOptions:
    """`imports` pinning every batched input of `source` to batch `size` and every LENGTH dim to `length`."""
    batched = _batched_inputs(source)
    shapes = {spec.name: tuple(size if index == 0 and spec.name in batched and size is not None
                               else length if index and dim == LENGTH else dim
                               for index, dim in enumerate(spec.shape))
              for spec in source.signature.inputs if spec.name in batched or LENGTH in spec.shape}
    return dataclasses.replace(imports, input_shapes={**imports.input_shapes, **shapes})


def _check_batched_outputs(graph: Graph, size: int) -> None:
    unbatched = [spec.describe() for spec in graph.signature.outputs if not spec.shape or spec.shape[0] != size]
    if unbatched:
        raise SettingError(ImportOptions, f"the outputs {', '.join(unbatched)} do not have the batch ({size}) as "
                                          "their first dim, so a batch cannot be run in pieces; pin one batch size "
                                          "with {input_shapes}")


def _output_length_dims(entries: dict, buckets: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Each output's dims that are the length (those that are the bucket in the shortest and longest functions
    alike); SettingError for a dim that changes with the length otherwise (it cannot be cut back)."""
    size = min(size or 0 for size, _ in entries) or None
    short, long = (entries[size, bucket].graph.signature.outputs for bucket in (buckets[0], buckets[-1]))
    dims = {}
    for first, last in zip(short, long):
        changed = [index for index, (a, b) in enumerate(zip(first.shape, last.shape)) if a != b]
        odd = [index for index in changed if (first.shape[index], last.shape[index]) != (buckets[0], buckets[-1])]
        if odd:
            raise SettingError(ImportOptions, f"output {first.name}'s dims {odd} change with the length otherwise "
                                              f"than as the length ({first.describe()} at length {buckets[0]}, "
                                              f"{last.describe()} at {buckets[-1]}): a padded input's outputs "
                                              "cannot be cut back; compile one length per artifact in "
                                              "{input_shapes}")
        if changed:
            dims[first.name] = tuple(changed)
    return dims


def _check_padding(stage: Path, buckets: tuple[int, ...], options: CompileOptions, progress: Progress) -> None:
    """SettingError unless inputs of the shortest length give the same outputs run padded to the longest: a model
    whose outputs at the real positions depend on the padding (no attention mask, or one where 0 does not mask)
    cannot take a length range."""
    import numpy as np

    from kiln.compiler.batching import pinned
    from kiln.targets.host import check_can_run

    try:
        check_can_run(options.target)
    except TargetError as exc:
        progress.step(f"padding not checked: {exc}")
        return
    predictor = artifact.load(stage)
    specs = tuple(pinned(spec, 1, buckets[0]) for spec in predictor.inputs)
    # integers that index no table (a mask, token types) all 1: random ones would mask every real position of a row
    feed = {name: np.ones_like(array) if array.dtype.kind in "biu" and spec.index_bound is None else array
            for spec, (name, array) in zip(specs, random_feed(specs).items())}
    checked = padding_check(predictor.run_padded(feed, buckets[0]), predictor.run_padded(feed, buckets[-1]),
                            options.precision, f"random inputs of length {buckets[0]} padded to {buckets[-1]}")
    if not checked.passed:
        raise SettingError(ImportOptions, f"padding changes this model's outputs: {checked.describe()}. A length "
                                          "range needs a model whose outputs at the real positions ignore zeros "
                                          "after them (an attention mask where 0 masks, or causal attention); "
                                          "compile one length per artifact in {input_shapes}")
    progress.step(f"padding checked: {checked.describe()}")


def _prepared(source: Graph, options: CompileOptions) -> Graph:
    """The graph after the passes, checked compilable for the options' target."""
    from kiln.compiler.backends.tvm.build import check_compilable, check_toolchain, uses_cpu_schedules

    check_toolchain(options.target)
    if options.records is not None and not uses_cpu_schedules(options.target, options.schedule):
        raise SettingError(CompileOptions, f"{{records}} applies kiln's CPU schedules, which do not build "
                                           f"{options.target.name} with {{schedule}} {options.schedule.value}: drop "
                                           "{records}, or use {schedule} default with an x86 or NEON aarch64 target")
    graph = run_passes(source)
    check_compilable(graph)  # after the passes: constant folding makes many parameters (axes, shapes) constants
    return graph


@dataclass(frozen=True)
class _Entry:
    """One VM function of a library: the graph it runs (after the passes), the model as imported that checks it,
    and the folder its INT8 files go to."""

    function: str
    graph: Graph  # without its weights' data where they are `shared`
    reference: Path
    folder: Path
    shared: SharedWeights | None = None

    def offloaded(self, shared: SharedWeights) -> "_Entry":
        """This entry with its graph's weights in `shared`'s file: a range's functions, each holding a copy of the
        model until the build, held one per function at once (BERT-base: 0.44 GB each)."""
        body = shared.save(self.graph.body, f"{self.function}.prepared.onnx")
        return dataclasses.replace(self, graph=dataclasses.replace(self.graph, body=body), shared=shared)

    def weighted(self) -> Graph:
        """The graph with its weights (read back into a copy where they are shared)."""
        if self.shared is None:
            return self.graph
        return dataclasses.replace(self.graph, body=self.shared.loaded(self.graph.body))


@dataclass(frozen=True)
class _Built:
    """A built library, and what the manifest records of its `main` entry."""

    library: Path
    report: Any  # backends.tvm.build.BuildReport
    quantized: Quantized | None
    files: dict[str, Path]  # INT8: the QDQ model, report and ranges, in main's folder
    verification: Verification | None


def _build_library(entries: list[_Entry], library: Path, options: CompileOptions, progress: Progress) -> _Built:
    """Quantize (INT8: `main` calibrated, the others by its plan; each entry's files written into its folder), build
    `library` (renamed content-addressed), and check each entry against ONNX Runtime running its reference or, for
    INT8, its QDQ model."""
    from kiln.compiler.backends.tvm.build import build_library

    int8 = options.precision is Precision.INT8
    main = next(entry for entry in entries if entry.function == MAIN)
    calibrated = _quantize(main.graph, options, progress) if int8 else None
    quantized = {entry.function: requantize(entry.weighted(), calibrated) if calibrated and entry is not main
                 else calibrated for entry in entries}
    progress.step(f"compiling with TVM for {options.target.name}")
    report = build_library(((entry.function, quantized[entry.function].graph if int8 else entry.weighted())
                            for entry in entries),
                           options.target, library, options.schedule, options.records)
    library = artifact.content_addressed(library)
    files = {entry.function: quantized[entry.function].write(entry.folder) if int8 else {} for entry in entries}
    checked = {entry.function: _check_against_reference(entry, library, {"onnx": entry.reference,
                                                                         **files[entry.function]},
                                                        options, quantized[entry.function], progress)
               for entry in entries} if options.verify else {}
    return _Built(library, report, quantized[MAIN], files[MAIN], checked.get(MAIN))


def _neural_manifest(graph: Graph, options: CompileOptions, build: BuildRecord, built: _Built,
                     files: dict[str, Path]) -> Manifest:
    return artifact.make_manifest(
        graph, options.target, Backend.TVM, built.library, precision=options.precision, files=files,
        build=dataclasses.replace(build, schedules=built.report.schedules),
        integer_kernels=IntegerKernels.of(built.report.integer, options.target.int8_isa),
        quantization=built.quantized.summary() if built.quantized else None, verification=built.verification)


def _check_against_reference(entry: _Entry, library: Path, files: dict[str, Path], options: CompileOptions,
                             quantized: Quantized | None, progress: Progress) -> Verification | None:
    """The staged library's `entry` against ONNX Runtime (kiln.verification); None where this host cannot run it.
    INT8 builds are checked on the calibration samples the quantizer already read."""
    from kiln.compiler.backends.tvm.runner import TVMPredictor
    from kiln.targets.host import check_can_run

    graph = entry.graph
    try:
        check_can_run(options.target)
    except TargetError as exc:
        progress.step(f"not checked against ONNX Runtime: {exc} (run `kiln verify` where it runs)")
        return None
    feed, described = None, "random inputs (seed 0)"
    if options.calib is not None:
        try:
            dataset = (quantized.calibration.dataset if quantized else
                       open_dataset(CalibData(options.calib), graph.signature.inputs))
            feed, described = calibration_feed(graph.body, dataset), f"a batch of {options.calib}"
        except SettingError:  # fewer samples than the pinned batch: random inputs serve
            pass
    if feed is None:
        feed = random_feed(graph.signature.inputs)
    predictor = TVMPredictor(library, options.target, graph.signature.inputs, graph.signature.outputs,
                             function=entry.function)
    reference = files["int8_onnx" if options.precision is Precision.INT8 else "onnx"]
    try:
        checked = verify(predictor.run, reference, options.precision, feed, described)
    except ReferenceUnavailable as exc:
        progress.step(f"not checked: {exc}")
        return None
    if not checked.passed:
        raise VerificationError(
            f"the compiled artifact disagrees with its reference: {checked.describe()}. Nothing was written; please "
            "report this with the model (compile with --no-verify to write it anyway)")
    progress.step(f"checked against ONNX Runtime: {checked.describe()}")
    return checked


def _quantize(graph: Graph, options: CompileOptions, progress: Progress) -> Quantized:
    if options.calib is None:
        raise SettingError(CompileOptions, "INT8 needs calibration data for a neural model: add {calib} DATA "
                                           "(.npz/.npy keyed by input name, a folder of them, images, or CSV)")
    return quantize_graph(graph, options.calib, options.quantize.for_target(options.target), progress)


def _compile_tree(graph: Graph, model: Path, options: CompileOptions, build: BuildRecord,
                  progress: Progress) -> CompileResult:
    import shutil

    from kiln.compiler.backends.treelite import build_library, check_buildable

    check_buildable(options.target)
    calibration = _calibration_rows(options.calib, graph) if options.calib else None
    with artifact.staging(options.output) as stage:
        progress.step(f"compiling with tl2cgen for {options.target.name}")
        library = stage / "model.so"
        tree = build_library(graph, options.target, library, int8=options.precision is Precision.INT8,
                             calibration=calibration)
        library = artifact.content_addressed(library)
        source = stage / f"source{model.suffix}"
        shutil.copyfile(model, source)
        manifest = artifact.make_manifest(graph, options.target, Backend.TL2CGEN, library,
                                          precision=options.precision, files={"model": source}, build=build,
                                          tree=tree.to_json())
        artifact.write_manifest(stage, manifest)
    progress.step(f"wrote {options.output}")
    return CompileResult(options.output, manifest)


def _calibration_rows(path: Path, graph: Graph) -> "np.ndarray":
    """A tree model's calibration rows (.npz/.npy/CSV) as one float32 array, for branch annotation."""
    import numpy as np

    dataset = open_dataset(CalibData(path, allow_nan=True), graph.signature.inputs)
    name = graph.signature.inputs[0].name
    return np.concatenate([batch[name] for batch in dataset.batches(dataset.count)])


def quantize_model(model: Path, calib: Path, options: QuantizeOptions, imports: ImportOptions, output: Path,
                   progress: Progress = QUIET) -> QuantizeResult:
    """`kiln quantize`: the QDQ ONNX model of `model`, written to `output` only when it passes the gate.
    `options` must be resolved for the target (`QuantizeOptions.for_target`)."""
    if output.suffix != ".onnx":
        raise InputError(f"-o {output}: the quantized model is an ONNX file; name it *.onnx")
    if not output.parent.is_dir():
        raise InputError(f"output folder {output.parent} does not exist; create it first")
    graph = load(model, imports, progress)
    if graph.kind is not GraphKind.NEURAL:
        raise InputError(f"{model} is a {graph.kind.value} model; `kiln quantize` takes neural models "
                         "(ONNX, MXNet). Quantize trees with `kiln compile --int8`.")
    quantized = quantize_graph(graph, calib, options, progress)
    save_model(quantized, output)
    progress.step(f"wrote {output}")
    return QuantizeResult(output, quantized)


def tune_model(model: Path, imports: ImportOptions, preset: Preset, records: Path, trials: int,
               progress: Progress = QUIET, remote: Remote | None = None):
    """`kiln tune`: search faster schedules for a neural model's kernels into `records` (a TuneReport), measured
    here or on `remote`'s servers."""
    from kiln.compiler.backends.tvm import tuning
    from kiln.compiler.backends.tvm.build import check_compilable

    tuning.check_ffi()
    graph = load(model, imports, progress)
    if graph.kind is not GraphKind.NEURAL:
        raise InputError(f"{model} is a tree ensemble: tl2cgen compiles it with nothing to tune; "
                         "use kiln compile")
    check_compilable(graph)
    if remote is None:
        return tuning.tune_model(graph, preset, records, trials, progress)
    import tempfile

    from kiln.compiler.backends.tvm.build import check_toolchain
    from kiln.remote.measure import RemotePool

    check_toolchain(preset)  # candidates are linked here, for the servers' machine
    with tempfile.TemporaryDirectory(prefix="kiln-tune-") as folder, \
            RemotePool(remote, preset, tuning.REPEAT, Path(folder)) as pool:
        return tuning.tune_model(graph, preset, records, trials, progress, pool)


def inspect_path(path: Path, imports: ImportOptions) -> Manifest | ModelSummary:
    """An artifact's manifest, or a model file's summary: like an ONNX model with ops kiln cannot compile, an
    MXNet symbol with ops kiln cannot convert is summarized, its unsupported ops listed."""
    if path.is_dir():
        return artifact.read_manifest(path)
    try:
        graph = load_graph(path, imports)
    except UnsupportedOpError as exc:
        if detect_format(path) is not SourceFormat.MXNET:
            raise
        from kiln.compiler.frontends.mxnet.convert import describe

        source, inputs, outputs, ops = describe(path, imports.params, imports.input_shapes)
        details = {"ops": _most_used_first(ops), "unsupported": exc.unsupported}
        return ModelSummary(GraphKind.NEURAL, source, inputs, outputs, details)
    return summarize(graph)


def summarize(graph: Graph) -> ModelSummary:
    if graph.kind is GraphKind.TREE:
        from kiln.compiler.frontends.trees import summarize as summarize_trees

        details = {"tree": summarize_trees(graph.body).to_json()}
    else:
        details = _neural_details(graph)
    return ModelSummary(graph.kind, graph.provenance, graph.signature.inputs, graph.signature.outputs, details)


def _neural_details(graph: Graph) -> dict[str, Any]:
    import math

    from kiln.compiler.backends.tvm.ops import unsupported_ops
    from kiln.compiler.frontends.onnx import opset_of

    model = graph.body
    ops = Counter(node.op_type for node in model.graph.node)
    return {
        "opset": opset_of(model),
        "nodes": len(model.graph.node),
        "parameters": sum(math.prod(t.dims) for t in model.graph.initializer),
        "ops": _most_used_first(ops),
        "unsupported": unsupported_ops(run_passes(graph).body),  # what compiling refuses, after the same passes
    }


def _most_used_first(ops: Counter[str]) -> dict[str, int]:
    return dict(sorted(ops.items(), key=lambda item: (-item[1], item[0])))


def verify_artifact(path: Path, data: Path | None = None) -> Verification:
    """`kiln verify`: check a neural artifact against ONNX Runtime again, on `data` (.npz/.npy) or seeded random
    inputs; a VerificationError (exit 3) when they differ beyond the tolerance."""
    from kiln.arrays import read_arrays

    manifest = artifact.read_manifest(path)
    if manifest.backend is not Backend.TVM:
        raise InputError(f"{path} is a tree artifact; `kiln verify` checks neural artifacts against ONNX Runtime. "
                         "Compare a tree artifact with its own library: `kiln bench --vs native`")
    predictor = artifact.load(path)
    reference = artifact.verified_file(path, manifest.files["int8_onnx" if "int8_onnx" in manifest.files else "onnx"])
    single = manifest.inputs[0].name if len(manifest.inputs) == 1 else None
    if data:
        feed, described = given_feed(read_arrays(data, single), manifest.inputs, str(data))
    else:
        feed = random_feed(manifest.inputs)
        described = "random inputs (seed 0)"
    checked = verify(predictor.run, reference, manifest.precision, feed, described)
    if not checked.passed:
        raise VerificationError(f"{path} disagrees with its reference: {checked.describe()}")
    return checked
