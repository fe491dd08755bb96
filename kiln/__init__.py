"""kiln: compile and quantize trained models into fast, verified artifacts.

The verbs, each running the one pipeline (`kiln.pipeline`) and returning a typed result:

    import kiln
    options = kiln.CompileOptions(kiln.target("host"), Path("digits.kiln"), kiln.ImportOptions({"input": (1, 1, 8, 8)}))
    result = kiln.compile("digits_cnn.onnx", options)      # CompileResult: path, manifest, INT8 report
    kiln.load(result.path).run({"input": x})                # {output name: array}

`load` needs only the runtime (numpy and TVM's or tl2cgen's runtime library); the other verbs import
the compiler when called.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.compiler.artifact import load
from kiln.progress import QUIET, Progress

if TYPE_CHECKING:
    from kiln.project.runner import BuildReport
    from kiln.compiler.backends.tvm.tuning import TuneReport
    from kiln.compiler.frontends import ImportOptions
    from kiln.compiler.manifest import Manifest, Verification
    from kiln.pipeline import CompileOptions, CompileResult, ModelSummary, QuantizeResult
    from kiln.quantization.config import QuantizeOptions
    from kiln.remote.session import Remote
    from kiln.targets.presets import Preset

__all__ = ["compile", "quantize", "tune", "inspect", "verify", "load", "build", "target", "CompileOptions", "ImportOptions",
           "QuantizeOptions", "Precision", "Progress"]

# Types exported by name, imported on first use so that `import kiln` stays light for `kiln.load`.
_LAZY = {
    "CompileOptions": "kiln.pipeline", "CompileResult": "kiln.pipeline", "ModelSummary": "kiln.pipeline",
    "QuantizeResult": "kiln.pipeline", "ImportOptions": "kiln.compiler.frontends",
    "QuantizeOptions": "kiln.quantization.config", "Precision": "kiln.compiler.manifest",
    "Manifest": "kiln.compiler.manifest",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")


def _needs_compiler(verb: str) -> None:
    if importlib.util.find_spec("kiln.pipeline") is None:
        from kiln.errors import UsageError

        raise UsageError(f"kiln.{verb} needs the compiler: this is kiln-runtime, which loads and runs artifacts. "
                         "Install kiln-ml where you compile.")


def target(name: str) -> "Preset":
    """A target preset by name (`kiln targets`), `host`, or a TVM target as JSON."""
    from kiln.targets import resolve

    return resolve(name)


def compile(model: str | os.PathLike, options: "CompileOptions", progress: Progress = QUIET) -> "CompileResult":
    """Import, run the graph passes, quantize when options.precision is INT8, build, and write the artifact."""
    _needs_compiler("compile")
    from kiln.pipeline import compile_model

    return compile_model(Path(model), options, progress)


def quantize(model: str | os.PathLike, calib: str | os.PathLike, output: str | os.PathLike, *,
             target: "Preset", options: "QuantizeOptions | None" = None, imports: "ImportOptions | None" = None,
             progress: Progress = QUIET) -> "QuantizeResult":
    """Quantize a neural model to a QDQ ONNX model at `output` for `target`'s int8 instructions."""
    _needs_compiler("quantize")
    from kiln.compiler.frontends import ImportOptions
    from kiln.pipeline import quantize_model
    from kiln.quantization.config import QuantizeOptions

    resolved = (options or QuantizeOptions()).for_target(target)
    return quantize_model(Path(model), Path(calib), resolved, imports or ImportOptions(), Path(output), progress)


def tune(model: str | os.PathLike, records: str | os.PathLike, *, target: "Preset", trials: int,
         imports: "ImportOptions | None" = None, progress: Progress = QUIET,
         remote: "Remote | None" = None) -> "TuneReport":
    """Search faster schedules for a neural model's kernels into a records folder, measured on this machine or on
    `remote`'s RPC servers (kiln.remote.session.Remote: one server, or a tracker's servers of a key, in parallel)."""
    _needs_compiler("tune")
    from kiln.compiler.frontends import ImportOptions
    from kiln.pipeline import tune_model

    return tune_model(Path(model), imports or ImportOptions(), target, Path(records), trials, progress, remote)


def inspect(path: str | os.PathLike, imports: "ImportOptions | None" = None) -> "Manifest | ModelSummary":
    """An artifact's Manifest, or a model file's summary (signature, ops, what kiln cannot compile)."""
    _needs_compiler("inspect")
    from kiln.compiler.frontends import ImportOptions
    from kiln.pipeline import inspect_path

    return inspect_path(Path(path), imports or ImportOptions())


def verify(artifact: str | os.PathLike, data: str | os.PathLike | None = None) -> "Verification":
    """Run a neural artifact and ONNX Runtime on `data` (.npz/.npy; default: seeded random inputs) and compare, as
    `compile` does before writing; raises kiln.verification.VerificationError when they differ."""
    _needs_compiler("verify")
    from kiln.pipeline import verify_artifact

    return verify_artifact(Path(artifact), Path(data) if data else None)


def build(config: str | os.PathLike = "kiln.toml", names: tuple[str, ...] = (), *, jobs: int = 1,
          check: bool = False, progress: Progress = QUIET) -> "BuildReport":
    """Build the artifacts a kiln.toml declares (or only `names`) that are out of date; with `check`, build
    nothing and report what is stale."""
    _needs_compiler("build")
    from kiln.project import runner

    return runner.run(Path(config), names, jobs=jobs, check=check, progress=progress)
