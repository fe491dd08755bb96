"""A seeded mutation fuzzer over every reader kiln has (issue 21): each case copies a seed file made by the real
library (the committed examples and tree models), mutates it (kiln.testing.fuzz_mutations) and reads it as the
`kiln` command would, in kiln's worker process under memory and CPU-time limits and a wall-clock bound.

A case passes when the reader succeeds or refuses the file with exit 3 or 4 (also 2 for settings files, and 5 for
an unknown target in kiln.toml or an artifact whose target this host cannot run); a traceback (exit 1), a worker
killed by a signal or a limit, or a time-out is a failure, reported with the seed and case number and the mutant
saved for reproduction:

    python -m kiln.testing.fuzz --reader onnx --cases 300 --seed 0 --json
    python -m kiln.testing.fuzz --reader onnx --seed 0 --case 17 --save failures/   # one case again

Cases are forked from this driver process, which must not run TVM code itself (TVM's thread pool does not survive a
fork): run it as its own process, never inside a test session that compiles.
"""

from __future__ import annotations

import argparse
import collections
import json
import mmap
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kiln.errors import KilnError
from kiln.isolation import Limits, run_isolated
from kiln.testing.fuzz_mutations import mutate
from kiln.testing.paths import DIGITS_CALIB, DIGITS_CNN, EXAMPLES, MXNET_DIGITS, TREE_MODELS as TREES
LIMITS = Limits(2 * 2**30, 10)
WALL_SECONDS = 30.0
_KINDS = {".onnx": "onnx", ".data": "bytes", ".json": "json", ".params": "binary", ".bin": "binary", ".ubj": "ubjson",
          ".txt": "text", ".skops": "zip", ".npz": "zip", ".toml": "text", ".csv": "text", ".png": "png"}


@dataclass(frozen=True)
class Reader:
    """One of kiln's readers: how to make its seed folders, which of their files to mutate, how to read a case
    folder (in the worker), and the exit codes that count as a clean refusal besides 3 and 4."""

    name: str
    seeds: Callable[[Path], None]  # writes one folder per seed under the given folder
    targets: tuple[str, ...]  # glob patterns of the files a case mutates
    read: Callable[[Path], Any]
    imports: tuple[str, ...]  # imported by the driver before forking, so that cases do not each import them
    clean_exits: frozenset[int] = frozenset({3, 4})


@dataclass
class Report:
    reader: str
    cases: int = 0
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_bytes: int = 0
    slowest: dict[str, Any] = field(default_factory=lambda: {"seconds": 0.0})

    def to_json(self) -> dict[str, Any]:
        return {"reader": self.reader, "cases": self.cases, "outcomes": dict(sorted(self.outcomes.items())),
                "failures": self.failures, "peak_rss_bytes": self.peak_rss_bytes, "slowest": self.slowest}


# --- seeds: the real libraries' files, and small ones written from them for formats without a committed example ----

def _copies(*files: Path) -> Callable[[Path], None]:
    """Seeds that are committed files, one folder each."""
    def write(folder: Path) -> None:
        for i, file in enumerate(files):
            (folder / str(i)).mkdir()
            shutil.copy(file, folder / str(i) / file.name)
    return write


def _mxnet_seed(folder: Path) -> None:
    (folder / "0").mkdir()
    for name in ("digits-symbol.json", "digits-0000.params"):
        shutil.copy(MXNET_DIGITS / name, folder / "0" / name)


def _onnx_external_seed(folder: Path) -> None:
    import onnx

    (folder / "0").mkdir()
    model = onnx.load(DIGITS_CNN)
    onnx.save_model(model, folder / "0" / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)


def _calibration_rows(count: int):
    import numpy as np

    return np.load(DIGITS_CALIB)["input"][:count]


def _csv_seeds(folder: Path) -> None:
    import numpy as np

    rows = _calibration_rows(40).reshape(40, -1)
    for i, header in enumerate(("", ",".join(f"f{j}" for j in range(rows.shape[1])))):
        (folder / str(i)).mkdir()
        np.savetxt(folder / str(i) / "calib.csv", rows, delimiter=",", header=header, comments="", fmt="%.6g")


def _image_seed(folder: Path) -> None:
    from PIL import Image

    images = folder / "0" / "images"
    images.mkdir(parents=True)
    for i, pixels in enumerate(_calibration_rows(4)):
        Image.fromarray((pixels[0] * 255 / max(float(pixels.max()), 1e-6)).astype("uint8"), "L").save(
            images / f"{i}.png")
    (folder / "0" / "spec.toml").write_text('channels = "L"\nscale = 255.0\nmean = [0.5]\nstd = [0.25]\n')


def _artifact_seeds(folder: Path) -> None:
    """A neural artifact (the digits CNN) and a tree artifact (an XGBoost model), compiled in a worker so that this
    process runs no TVM code."""
    def compile_both() -> None:
        import kiln
        from kiln.compiler.frontends import ImportOptions

        _quiet()
        for i, (model, shapes) in enumerate(((DIGITS_CNN, {"input": (1, 1, 8, 8)}),
                                             (TREES / "xgb_binary_nan.json", {}))):
            (folder / str(i)).mkdir()
            options = kiln.CompileOptions(kiln.target("x86-64"), folder / str(i) / "model.kiln",
                                          ImportOptions(shapes), verify=False)
            kiln.compile(model, options)

    run_isolated(compile_both, Limits(None, None), "compiling the fuzzer's seed artifacts")


# --- readers: as the `kiln` command calls them ----------------------------------------------------------------------

def _inspect(pattern: str, params: str | None = None, input_shapes: dict | None = None) -> Callable[[Path], Any]:
    def read(case: Path) -> Any:
        import kiln
        from kiln.compiler.frontends import ImportOptions

        options = ImportOptions(input_shapes=input_shapes or {}, params=case / params if params else None)
        return kiln.inspect(next(case.glob(pattern)), options).to_json()
    return read


def _read_calibration(spec: Any, images: bool = False) -> Callable[[Path], Any]:
    def read(case: Path) -> Any:
        from kiln.calibration.datasets import CalibData, Sampling, open_dataset
        from kiln.calibration.images import ImageSpec
        from kiln.compiler.graph import TensorSpec

        if images:
            data = CalibData(case / "images", Sampling(images=ImageSpec.from_toml(case / "spec.toml")))
        else:
            data = CalibData(next(p for p in case.iterdir() if p.suffix in (".npz", ".csv")))
        dataset = open_dataset(data, (TensorSpec("input", spec, "float32"),))
        return sum(len(batch["input"]) for batch in dataset.batches(16))
    return read


def _read_config(case: Path) -> Any:
    from kiln.project.config import read_config

    return [item.label for item in read_config(case / "kiln.toml")]


def _load_artifact(case: Path) -> Any:
    """Load the artifact and, where its inputs are small, run it once on zeros: a manifest that disagrees with its
    library must be refused, not run."""
    import math

    import numpy as np

    from kiln.compiler.artifact import load

    predictor = load(case / "model.kiln", threads=1)
    shapes = {spec.name: tuple(d if isinstance(d, int) else 1 for d in spec.shape) for spec in predictor.inputs}
    if all(math.prod(shape) <= 2**20 for shape in shapes.values()):
        feed = {spec.name: np.zeros(shapes[spec.name], spec.dtype if spec.dtype != "unknown" else "float32")
                for spec in predictor.inputs}
        return {name: np.asarray(value).shape for name, value in predictor.run(feed).items()}
    return None


_MODEL_IMPORTS = ("onnx", "onnx.checker", "onnx.shape_inference", "onnx.version_converter", "kiln.pipeline",
                  "kiln.compiler.frontends.onnx", "kiln.compiler.backends.tvm.ops", "tvm.relax.frontend.onnx")
_TREE_IMPORTS = ("treelite", "kiln.pipeline", "kiln.compiler.frontends.trees", "kiln.compiler.frontends.trees.validate",
                 "kiln.compiler.frontends.trees.validate_native", "kiln.compiler.frontends.trees.native")
_MXNET_IMPORTS = _MODEL_IMPORTS + ("kiln.compiler.frontends.mxnet.convert",)
_CALIBRATION_IMPORTS = ("numpy", "kiln.calibration.datasets", "PIL.Image", "PIL.PngImagePlugin")
_ONE_TREE_FILE = ("*.json", "*.ubj", "*.bin", "*.txt", "*.skops")
_DIGITS = ("N", 1, 8, 8)

READERS = {reader.name: reader for reader in (
    Reader("onnx", _copies(DIGITS_CNN), ("*.onnx",), _inspect("*.onnx"),
           _MODEL_IMPORTS),
    Reader("onnx-external", _onnx_external_seed, ("model.onnx", "model.onnx.data"), _inspect("model.onnx"),
           _MODEL_IMPORTS),
    Reader("mxnet-symbol", _mxnet_seed, ("*-symbol.json",),
           _inspect("*-symbol.json", params="digits-0000.params", input_shapes={"data": (1, 1, 8, 8)}), _MXNET_IMPORTS),
    Reader("mxnet-params", _mxnet_seed, ("*.params",),
           _inspect("*-symbol.json", params="digits-0000.params", input_shapes={"data": (1, 1, 8, 8)}), _MXNET_IMPORTS),
    Reader("xgboost-json", _copies(*sorted(TREES.glob("xgb_*.json"))), ("*.json",), _inspect("*"), _TREE_IMPORTS),
    Reader("xgboost-ubjson", _copies(*sorted(TREES.glob("xgb_*.ubj"))), ("*.ubj",), _inspect("*"), _TREE_IMPORTS),
    Reader("xgboost-binary", _copies(*sorted(TREES.glob("xgb_*.bin"))), ("*.bin",), _inspect("*"), _TREE_IMPORTS),
    Reader("lightgbm", _copies(*sorted(TREES.glob("lgb_*.txt"))), ("*.txt",), _inspect("*"), _TREE_IMPORTS),
    Reader("skops", _copies(*sorted(TREES.glob("sk_*.skops"))), ("*.skops",), _inspect("*"),
           _TREE_IMPORTS + ("skops.io", "sklearn.ensemble")),
    Reader("kiln-toml", _copies(EXAMPLES / "kiln.toml"), ("kiln.toml",), _read_config, ("kiln.project.config",),
           frozenset({2, 3, 4, 5})),  # 5: an unknown target name, as on the command line
    Reader("calib-npz", _copies(DIGITS_CALIB), ("*.npz",),
           _read_calibration(_DIGITS), _CALIBRATION_IMPORTS),
    Reader("calib-csv", _csv_seeds, ("*.csv",), _read_calibration(("N", 64)), _CALIBRATION_IMPORTS),
    Reader("calib-images", _image_seed, ("images/*.png", "spec.toml"), _read_calibration(_DIGITS, images=True),
           _CALIBRATION_IMPORTS, frozenset({2, 3, 4})),
    Reader("manifest", _artifact_seeds, ("model.kiln/manifest.json",), _load_artifact,
           ("numpy", "kiln.compiler.artifact", "kiln.compiler.backends.tvm.runner",
            "kiln.compiler.backends.tree_runner", "kiln.targets.host"), frozenset({3, 4, 5})),
)}


# --- the driver -----------------------------------------------------------------------------------------------------

class _WallClock(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _WallClock


def fuzz(reader: Reader, cases: int, seed: int, work: Path, save: Path | None = None, only: int | None = None,
         limits: Limits = LIMITS, wall_seconds: float = WALL_SECONDS) -> Report:
    """Run `cases` mutants of `reader`'s seeds (or only case number `only`), each in a worker under `limits` and
    `wall_seconds`; failing mutants are copied under `save`."""
    import importlib

    for module in reader.imports:
        importlib.import_module(module)
    seeds = work / "seeds" / reader.name
    seeds.mkdir(parents=True)
    reader.seeds(seeds)
    report = Report(reader.name)
    baseline = [_run(reader, folder, limits, wall_seconds) for folder in sorted(seeds.iterdir())]
    if any(outcome != "ok" for outcome, _, _, _ in baseline):
        raise RuntimeError(f"{reader.name}: an unmutated seed does not read cleanly: {baseline}")
    for case in ([only] if only is not None else range(cases)):
        folder, mutation = _mutant(reader, seeds, work / "case", seed, case)
        outcome, detail, seconds, rss = _run(reader, folder, limits, wall_seconds)
        report.cases += 1
        report.outcomes[outcome] += 1
        report.peak_rss_bytes = max(report.peak_rss_bytes, rss)
        if seconds > report.slowest["seconds"]:
            report.slowest = {"seconds": round(seconds, 3), "case": case, "mutation": mutation}
        if not _clean(reader, outcome):
            failure = {"reader": reader.name, "seed": seed, "case": case, "mutation": mutation, "outcome": outcome,
                       "detail": detail}
            if save is not None:
                kept = save / f"{reader.name}-seed{seed}-case{case}"
                shutil.rmtree(kept, ignore_errors=True)
                shutil.copytree(folder, kept)
                (kept / "failure.json").write_text(json.dumps(failure, indent=2) + "\n")
                failure["saved"] = str(kept)
            report.failures.append(failure)
        shutil.rmtree(folder)
    return report


def _clean(reader: Reader, outcome: str) -> bool:
    return outcome == "ok" or outcome.startswith("exit ") and int(outcome[5:]) in reader.clean_exits


def _mutant(reader: Reader, seeds: Path, folder: Path, seed: int, case: int) -> tuple[Path, str]:
    """The case folder: a copy of one seed with one to three mutations of one of its target files."""
    rng = random.Random(f"{seed}/{reader.name}/{case}")
    source = rng.choice(sorted(seeds.iterdir()))
    shutil.copytree(source, folder)
    target = rng.choice(sorted(p for pattern in reader.targets for p in folder.glob(pattern)))
    data, edits = target.read_bytes(), []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if data:
            data, edit = mutate(data, _KINDS.get(target.suffix, "bytes"), rng)
            edits.append(edit)
    target.write_bytes(data)
    return folder, f"{source.name}/{target.relative_to(folder)}: " + "; ".join(edits)


def _run(reader: Reader, folder: Path, limits: Limits, wall_seconds: float) -> tuple[str, str, float, int]:
    """(outcome, detail, seconds, peak RSS of the worker in bytes): outcome is ok, exit N (a KilnError's code; 1 for
    any other exception), "worker died: HOW" (a signal, the memory or CPU-time limit) or time-out."""
    peak = mmap.mmap(-1, 8)  # shared with the worker, which writes its own peak RSS there before it returns

    def work() -> Any:
        _quiet()
        try:
            reader.read(folder)
        finally:
            peak[:8] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024).to_bytes(8, "little")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, wall_seconds)
    started = time.monotonic()
    try:
        run_isolated(work, limits, f"reading {folder.name}")
        outcome, detail = "ok", ""
    except _WallClock:
        outcome, detail = "time-out", f"no result after {wall_seconds} s"
    except KilnError as exc:
        failed = getattr(exc, "worker_failed", "")
        outcome = f"worker died: {failed}" if failed else f"exit {exc.exit_code}"
        detail = str(exc)[:300]
    except Exception as exc:  # a bug: the head of the worker's traceback is the report
        outcome = "exit 1"
        notes = "".join(getattr(exc, "__notes__", ()))
        detail = f"{type(exc).__name__}: {str(exc)[:200]}\n" + "\n".join(notes.splitlines()[-12:])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return outcome, detail, time.monotonic() - started, int.from_bytes(peak[:8], "little")


def _quiet() -> None:
    """Silence this worker: native readers log every refusal, and the outcome is the report."""
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    warnings.simplefilter("ignore")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.testing.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reader", action="append", choices=sorted(READERS) + ["all"], required=True)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=int, default=None, help="run only this case number (to reproduce a failure)")
    parser.add_argument("--save", type=Path, default=None, help="copy failing mutants into this folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = sorted(READERS) if "all" in args.reader else args.reader
    reports = []
    with tempfile.TemporaryDirectory(prefix="kiln-fuzz-") as work:
        for name in names:
            reports.append(fuzz(READERS[name], args.cases, args.seed, Path(work) / name, args.save, args.case))
            if not args.json:
                print(format_report(reports[-1]), flush=True)
    if args.json:
        print(json.dumps([report.to_json() for report in reports], indent=1))
    return 1 if any(report.failures for report in reports) else 0


def format_report(report: Report) -> str:
    counts = ", ".join(f"{outcome}: {count}" for outcome, count in sorted(report.outcomes.items()))
    lines = [f"{report.reader}: {report.cases} cases ({counts}); {len(report.failures)} failures"]
    lines += [f"  FAIL case {f['case']} ({f['mutation']}): {f['outcome']}: {(f['detail'] or ' ').splitlines()[0]}"
              for f in report.failures]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
