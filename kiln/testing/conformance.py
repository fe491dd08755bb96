"""ONNX's node conformance suite against kiln and ONNX Runtime (benchmarks/onnx_conformance.py and its test).

The suite is onnx's own (`onnx.backend.test.loader.load_node_model_tests()`: one small model per case, built in
memory, with its inputs and expected outputs). `write_suite` writes it out once in onnx's on-disk layout
(NAME/model.onnx, NAME/test_data_set_0/input_J.pb, output_J.pb) with an index, so that later runs read one case
at a time instead of building all 1,884 (about 10 s). `Worker` runs cases in a long-lived child process (TVM is
imported once) under a time limit: a case that hangs or crashes it is recorded and the child restarted. Outputs
are compared as onnx's backend runner does (`Runner.assert_similar_outputs`: shapes, dtypes, then
`assert_allclose` at the case's rtol 1e-3, atol 1e-7).
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import json
import os
import re
import shutil
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

INDEX = "index.json"
ENGINES = ("kiln", "onnxruntime")


class Status(enum.Enum):
    """One engine's outcome on one case; the table's rows, in order."""

    PASS = "pass"
    PASS_FROZEN = "pass, parameter inputs frozen (--freeze)"
    WRONG = "wrong answer, no error"
    UNSUPPORTED = "clean unsupported (exit 4)"
    CLEAN_ERROR = "other clean error (exit 3)"
    INTERNAL = "internal error (exit 1, traceback)"
    TIMEOUT = "hung (over the time limit)"
    CRASH = "crashed the process"


PASSES = (Status.PASS, Status.PASS_FROZEN)
FAILURES = (Status.WRONG, Status.INTERNAL, Status.TIMEOUT, Status.CRASH)  # what a test may not end in


@dataclass(frozen=True)
class Case:
    """One node case as indexed: its folder, the op it tests, and the tolerances onnx's runner uses."""

    name: str
    folder: Path
    op: str  # the tested node's op_type (domain-qualified outside ai.onnx); an expanded case's function op
    expanded: bool  # the op's function body (several nodes) rather than the op itself
    rtol: float
    atol: float

    @property
    def label(self) -> str:
        return f"{self.op} (expanded)" if self.expanded else self.op


@dataclass(frozen=True)
class Outcome:
    status: Status
    detail: str = ""  # the first line of the error or of the mismatch
    error: str = ""  # the exception's type
    component: str = ""  # where it was raised: TVM importer, kiln pass, legalization, schedule, runtime, ...
    exit_code: int | None = None
    seconds: float = 0.0

    @property
    def reason(self) -> str:
        """What the failure is, without the case's particulars: grouped on in the report."""
        if self.status in PASSES:
            return ""
        where = f" in {self.component}" if self.component else ""
        what = f"{self.error}{where}: " if self.error else ""
        return f"{what}{_generic(self.detail)}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.name}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Outcome":
        return cls(**{**data, "status": Status[data["status"]]})


def _generic(text: str) -> str:
    """A message with its numbers, long quoted names and shapes blurred, so that cases failing alike group."""
    text = re.sub(r"'[^']*\d[^']*'|'[^']{40,}'", "'…'", text)
    text = re.sub(r"\(\d+(, ?\d+)*,?\)|\[\d+(, ?\d+)*\]", "(…)", text)
    return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", text)[:140]


# ---- the suite on disk ---------------------------------------------------------------------------

def suite_folder() -> Path:
    """Where the suite of the installed onnx is written out (in the tests' cache folder)."""
    import onnx

    from kiln.testing.paths import TEST_CACHE

    return TEST_CACHE / f"onnx-{onnx.__version__}-node-suite"


def write_suite(folder: Path) -> None:
    """Write every node case of the installed onnx under `folder`, then its index (written last, so a folder
    with an index is whole). Written beside and moved into place: safe when two processes race."""
    from onnx.backend.test.loader import load_node_model_tests

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case builders overflow casts on purpose
        cases = load_node_model_tests()
    ops = {case.name: _tested_op(case.model.graph.node[0]) for case in cases if len(case.model.graph.node) == 1}
    index = []
    for case in cases:
        _write_case(staging / case.name, case)
        base = re.sub(r"_expanded(_ver\d+)?$", "", case.name)
        expanded = base != case.name
        op = ops.get(base) or _tested_op(case.model.graph.node[0])
        index.append({"name": case.name, "op": op, "expanded": expanded, "rtol": case.rtol, "atol": case.atol})
    (staging / INDEX).write_text(json.dumps(index, indent=0))
    try:
        staging.rename(folder)
    except OSError:  # another process wrote it first
        shutil.rmtree(staging, ignore_errors=True)


def _tested_op(node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _write_case(folder: Path, case) -> None:
    """onnx's layout for one case (as onnx.backend.test.cmd_tools writes its data folder)."""
    data = folder / "test_data_set_0"
    data.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(case.model.SerializeToString())
    inputs, outputs = case.data_sets[0]
    for kind, values, infos in (("input", inputs, case.model.graph.input),
                                ("output", outputs, case.model.graph.output)):
        for j, (value, info) in enumerate(zip(values, infos)):
            (data / f"{kind}_{j}.pb").write_bytes(_to_proto(value, info).SerializeToString())


def _to_proto(value, info):
    from onnx import TensorProto, numpy_helper

    kind = info.type.WhichOneof("value")
    if kind == "sequence_type":
        return numpy_helper.from_list(value, info.name)
    if kind == "optional_type":
        return numpy_helper.from_optional(value, info.name)
    if kind == "map_type":
        return numpy_helper.from_dict(value, info.name)
    return value if isinstance(value, TensorProto) else numpy_helper.from_array(value, info.name)


def load_cases(folder: Path | None = None) -> list[Case]:
    """The indexed cases (writing the suite out first if it is not there yet), in onnx's order."""
    folder = folder or suite_folder()
    if not (folder / INDEX).exists():
        write_suite(folder)
    return [Case(entry["name"], folder / entry["name"], entry["op"], entry["expanded"], entry["rtol"],
                 entry["atol"]) for entry in json.loads((folder / INDEX).read_text())]


def read_data(case: Case) -> tuple[list[str], list[Any], list[str], list[Any]]:
    """The case's input names and values, and its output names and expected values (arrays, lists for
    sequences, None or a value for optionals), as onnx's runner reads them."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(case.folder / "model.onnx"))
    data = case.folder / "test_data_set_0"

    def read(kind: str, infos) -> list[Any]:
        values = []
        for j, info in enumerate(infos):
            path = data / f"{kind}_{j}.pb"
            if not path.exists():
                break
            kind_of = info.type.WhichOneof("value")
            proto = {"sequence_type": onnx.SequenceProto, "optional_type": onnx.OptionalProto,
                     "map_type": onnx.MapProto}.get(kind_of, onnx.TensorProto)()
            proto.ParseFromString(path.read_bytes())
            convert = {"sequence_type": numpy_helper.to_list, "optional_type": numpy_helper.to_optional,
                       "map_type": numpy_helper.to_dict}.get(kind_of, numpy_helper.to_array)
            values.append(convert(proto))
        return values

    inputs, outputs = read("input", model.graph.input), read("output", model.graph.output)
    return ([i.name for i in model.graph.input][:len(inputs)], inputs,
            [o.name for o in model.graph.output][:len(outputs)], outputs)


def sample(cases: list[Case], count: int, covering: frozenset[str] = frozenset()) -> list[Case]:
    """A deterministic sample of `count` cases: one per op in `covering` that the suite tests (the first by a
    hash of the names), then the rest by that hash; returned in the suite's order."""
    if count >= len(cases):
        return list(cases)
    ranked = sorted(cases, key=lambda case: hashlib.sha256(case.name.encode()).hexdigest())
    chosen: dict[str, Case] = {}
    covered: set[str] = set()
    for case in ranked:
        if case.op in covering and not case.expanded and case.op not in covered:
            chosen[case.name] = case
            covered.add(case.op)
    for case in ranked:
        if len(chosen) >= count:
            break
        chosen.setdefault(case.name, case)
    order = {case.name: i for i, case in enumerate(cases)}
    return sorted(list(chosen.values())[:count], key=lambda case: order[case.name])


def claimed_ops() -> frozenset[str]:
    """The ops kiln claims: those TVM's Relax importer converts, those ONNX defines as functions of other ops
    (compiled from their bodies where the importer has none: kiln.compiler.passes.function_expansion), and those
    kiln's passes rewrite into ops the importer converts (LSTM, GRU and RNN, Scan, the DFT family, ...), and
    those kiln converts itself (BitCast: kiln.compiler.backends.tvm.converters), and the sequence and optional ops
    and Loop, which the frontend carries out at compile time (kiln.compiler.frontends.sequences)."""
    import onnx

    from kiln.compat.tvm import onnx_importer_ops
    from kiln.compiler.backends.tvm.converters import CONVERTERS
    from kiln.compiler.frontends.sequences import SEQUENCE_OPS
    from kiln.compiler.passes.recurrent import RECURRENT_OPS

    functions = {schema.name for schema in onnx.defs.get_all_schemas()
                 if schema.domain == "" and (schema.has_function or schema.has_context_dependent_function)}
    return (onnx_importer_ops() | frozenset(functions) | RECURRENT_OPS | frozenset(CONVERTERS) | SEQUENCE_OPS
            | {"Loop", "Scan", "CumProd", "QLinearMatMul", "LpNormalization", "Col2Im", "TensorScatter",
               "ReverseSequence", "Det", "DFT", "STFT", "MelWeightMatrix", "TfIdfVectorizer",
               "ai.onnx.ml.TreeEnsemble", "QLinearConv", "ConvInteger"})


# ---- running one case ----------------------------------------------------------------------------

def run_case(case: Case, engine: str, workdir: Path) -> Outcome:
    """`engine` ("kiln" or "onnxruntime") on the case, compared with its expected outputs."""
    started = time.perf_counter()
    outcome = (_run_kiln if engine == "kiln" else _run_onnxruntime)(case, workdir)
    return Outcome(**{**asdict(outcome), "seconds": round(time.perf_counter() - started, 3)})


def _run_kiln(case: Case, workdir: Path) -> Outcome:
    import numpy as np

    import kiln
    from kiln.compiler.frontends.options import frozen_values
    from kiln.errors import KilnError, UnsupportedOpError

    names, inputs, _, expected = read_data(case)
    feed = dict(zip(names, inputs))
    shapes = {name: tuple(value.shape) for name, value in feed.items() if isinstance(value, np.ndarray)}
    sequences = {name: tuple(tuple(e.shape) for e in value) for name, value in feed.items() if isinstance(value, list)}
    output = workdir / f"{case.name}.kiln"
    shutil.rmtree(output, ignore_errors=True)
    stage, frozen = "compile", {}
    try:
        try:
            result = kiln.compile(case.folder / "model.onnx", _options(output, shapes, sequences, frozen))
        except UnsupportedOpError as exc:  # parameters given as inputs: compiled again with the case's values
            if not exc.freezable or not set(exc.freezable) <= set(shapes):
                raise
            frozen = {name: frozen_values(feed[name]) for name in exc.freezable}
            result = kiln.compile(case.folder / "model.onnx", _options(output, shapes, sequences, frozen))
        stage = "run"
        got = kiln.load(result.path).run(feed)
    except KilnError as exc:
        status = {4: Status.UNSUPPORTED, 1: Status.INTERNAL}.get(exc.exit_code, Status.CLEAN_ERROR)
        return Outcome(status, _first_line(exc), type(exc).__name__, component(exc, stage), exc.exit_code)
    except Exception as exc:  # anything kiln did not raise on purpose: a bug
        return Outcome(Status.INTERNAL, _first_line(exc), type(exc).__name__, component(exc, stage), 1)
    finally:
        shutil.rmtree(output, ignore_errors=True)
    outcome = _compare(case, expected, list(got.values()))
    if frozen and outcome.status is Status.PASS:
        return Outcome(Status.PASS_FROZEN, f"frozen: {', '.join(frozen)}")
    return outcome


def _options(output: Path, shapes: dict[str, tuple[int, ...]], sequences: dict[str, tuple[tuple[int, ...], ...]],
             frozen: dict[str, Any]):
    """A case's compile options: inputs pinned to the case's shapes (a sequence's to its elements' shapes),
    `frozen` ones given their values, verify off (the suite's outputs are the reference)."""
    import kiln

    imports = kiln.ImportOptions(shapes, frozen_inputs=frozen, sequence_shapes=sequences)
    return kiln.CompileOptions(kiln.target("host"), output, imports, verify=False)


def _run_onnxruntime(case: Case, workdir: Path) -> Outcome:
    """ONNX Runtime's column: NOT_IMPLEMENTED counts as a clean unsupported, its other errors as clean errors."""
    import onnxruntime as ort

    from kiln.onnxruntime_session import session_options

    names, inputs, _, expected = read_data(case)
    stage = "compile"
    try:
        session = ort.InferenceSession(str(case.folder / "model.onnx"), session_options(1),
                                       providers=["CPUExecutionProvider"])
        stage = "run"
        got = session.run(None, dict(zip(names, inputs)))
    except Exception as exc:
        kind = type(exc).__name__
        if type(exc).__module__.startswith("onnxruntime"):
            status = Status.UNSUPPORTED if kind == "NotImplemented" else Status.CLEAN_ERROR
            return Outcome(status, _first_line(exc), kind, f"onnxruntime {stage}")
        return Outcome(Status.INTERNAL, _first_line(exc), kind, f"onnxruntime {stage}")
    return _compare(case, expected, got)


def _compare(case: Case, expected: list[Any], got: list[Any]) -> Outcome:
    from onnx.backend.test.runner import Runner

    try:
        Runner.assert_similar_outputs(expected, got, rtol=case.rtol, atol=case.atol)
    except (AssertionError, TypeError, ValueError, AttributeError) as exc:
        return Outcome(Status.WRONG, _mismatch(exc))
    return Outcome(Status.PASS)


def _mismatch(exc: Exception) -> str:
    """numpy's assertion message in one line: which output and how (shape, dtype, how many elements, NaNs)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line.rstrip(":") for line in lines if line.startswith(
        ("Output", "(shapes", "Mismatched elements", "x and y", "nan location", "+inf location", "-inf location",
         "Unexpected type"))]
    if not said and lines and lines[0].startswith("Items are not equal"):  # a dtype or a count: short values
        said = [line[:60] for line in lines[:3]]
    return "; ".join(said[:3]) or (lines[0] if lines else type(exc).__name__)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return ""
    # TVM's errors put a C++ traceback first and the message last
    message = next((line for line in reversed(lines) if re.match(r"^[\w.]*(Error|Exception)?:? ", line)), lines[0])
    return message[:300]


# Where an error was raised, from the module paths of its traceback. The first rule a frame matches wins, frames
# read from the outermost in; kiln's and TVM's entry points are read past, so the last matching frame names it.
_COMPONENTS = (
    ("/tvm/relax/frontend/", "TVM importer"),
    ("/kiln/compiler/frontends/", "kiln frontend"),
    ("/kiln/compiler/passes/", "kiln pass"),
    ("/kiln/compiler/backends/tvm/rewrite/", "kiln rewrite"),
    ("/tvm/relax/transform/legalize_ops/", "legalization"),
    ("/tvm/topi/", "legalization"),
    ("/kiln/compiler/backends/tvm/schedules/", "schedule"),
    ("/tvm/s_tir/", "schedule"),
    ("/kiln/compiler/backends/tvm/kernels/", "kiln kernel"),
    ("/kiln/compiler/backends/tvm/runner.py", "runtime"),
    ("/kiln/compiler/predictor.py", "runtime"),
    ("/tvm/runtime/", "runtime"),
    ("/tvm/contrib/", "TVM build (link)"),
    ("/tvm/driver/", "TVM build"),
    ("/tvm/relax/vm_build.py", "TVM build"),
    ("/kiln/compiler/backends/tvm/build.py", "kiln build"),
    ("/kiln/compiler/artifact.py", "kiln artifact"),
    ("/kiln/pipeline.py", "kiln pipeline"),
)
# TVM passes run in C++: their name in the message says which stage raised (the lowering passes are called from
# tvm/s_tir's Python, whose frames alone would name the schedule).
_PASS_COMPONENTS = (("LegalizeOps", "legalization"), ("FuseOps", "TVM build"), ("FoldConstant", "TVM build"),
                    ("VMShapeLower", "TVM build"), ("FlattenBuffer", "TVM lowering"),
                    ("LowerOpaqueBlock", "TVM lowering"), ("StorageRewrite", "TVM lowering"),
                    ("VectorizeLoop", "TVM lowering"), ("MakePackedAPI", "TVM lowering"))


def component(exc: BaseException, stage: str) -> str:
    """Which part raised `exc`: the TVM importer, a kiln pass, legalization, a schedule, the runtime, ..."""
    found = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        path = frame.filename.replace(os.sep, "/")
        for pattern, name in _COMPONENTS:
            if pattern in path:
                if name in ("TVM importer", "kiln frontend", "kiln pass"):
                    return name  # everything under an importer or a pass is that step
                found = name
                break
    if found in ("kiln build", "TVM build", "schedule", ""):
        text = str(exc)
        found = next((name for key, name in _PASS_COMPONENTS if key in text), found)
    if stage == "run" and found in ("", "kiln artifact", "kiln pipeline"):
        return "runtime"
    return found or stage


# ---- a long-lived worker process -----------------------------------------------------------------

def _serve(connection, threads: int, quiet: bool) -> None:
    """The worker's loop: (case, engine) in, Outcome out, until None."""
    if quiet:  # TVM's importer and C++ warnings print; the outcomes carry what matters
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    warnings.simplefilter("ignore")
    for module in ("kiln.pipeline", "onnxruntime"):  # pay TVM's import once, before the first case's clock starts
        importlib.import_module(module)
    claimed_ops()
    with tempfile.TemporaryDirectory(prefix="kiln-conformance-") as workdir:
        connection.send("ready")
        while (task := connection.recv()) is not None:
            case, engine = task
            connection.send(run_case(case, engine, Path(workdir)))


class Worker:
    """One child process that runs cases, restarted after a case hangs or crashes it."""

    def __init__(self, timeout: float = 120.0, threads: int = 1, quiet: bool = True, start_timeout: float = 600.0):
        self.timeout, self.threads, self.quiet, self.start_timeout = timeout, threads, quiet, start_timeout
        self._process = self._connection = None

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, case: Case, engine: str) -> Outcome:
        if self._process is None:
            self._start()
        started = time.perf_counter()
        self._connection.send((case, engine))
        if not self._connection.poll(self.timeout):
            self._kill()
            return Outcome(Status.TIMEOUT, f"no result within {self.timeout:.0f} s", seconds=self.timeout)
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            self._process.join(5)
            code = self._process.exitcode
            self._kill()
            detail = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
            return Outcome(Status.CRASH, f"the worker died: {detail}", seconds=round(time.perf_counter() - started, 3))

    def _start(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no TVM or ORT threads forked
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self.threads, self.quiet), daemon=True)
        self._process.start()
        child.close()
        try:
            ready = self._connection.poll(self.start_timeout) and self._connection.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._process.exitcode
            self._kill()
            raise RuntimeError(f"the conformance worker did not start within {self.start_timeout:.0f} s "
                               f"(exit status {code})")

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
            self._connection.close()
        self._process = self._connection = None

    def close(self) -> None:
        if self._process is not None:
            try:
                self._connection.send(None)
                self._process.join(10)
            except (OSError, BrokenPipeError):
                pass
            self._kill()
