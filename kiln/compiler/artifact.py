"""The artifact: a directory NAME.kiln/ with manifest.json, the library, and supporting files.

Artifacts are staged in a hidden sibling directory and moved into place only when complete, so a
failed or interrupted build leaves the previous artifact (or nothing) at the output path.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from kiln.compiler.graph import Graph, TensorSpec, sha256_file
from kiln.errors import InputError
from kiln.targets.presets import Preset

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

# Each backend's predictor, imported only when an artifact of that backend is loaded.
_PREDICTORS = {
    "tvm": "kiln.compiler.backends.tvm.runner:TVMPredictor",
    "tl2cgen": "kiln.compiler.backends.tree_runner:TreePredictor",
}
_DEPENDENCIES = {
    "tvm": ("apache-tvm", "apache-tvm-ffi", "onnx", "numpy"),
    "tl2cgen": ("treelite", "tl2cgen", "numpy"),
}


def dependency_versions(backend: str) -> dict[str, str]:
    versions = {"kiln-ml": _version("kiln-ml")}
    versions.update({name: _version(name) for name in _DEPENDENCIES[backend]})
    return versions


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def make_manifest(graph: Graph, preset: Preset, backend: str, library: Path, *, precision: str = "fp32",
                  files: dict[str, Path] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest for a staged artifact; paths are recorded relative to the artifact directory."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "versions": dependency_versions(backend),
        "source": graph.provenance.to_json(),
        "target": preset.to_json(),
        "backend": backend,
        "precision": precision,
        "inputs": [spec.to_json() for spec in graph.signature.inputs],
        "outputs": [spec.to_json() for spec in graph.signature.outputs],
        "library": {"file": library.name, "sha256": sha256_file(library)},
        "files": {role: {"file": p.name, "sha256": sha256_file(p)} for role, p in sorted((files or {}).items())},
    }
    manifest.update(extra or {})
    return manifest


def check_output_path(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} exists and is not a directory; choose another -o path or remove it")
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST).is_file():
        raise InputError(f"output {output} is a non-empty directory that is not a kiln artifact; "
                         "refusing to replace it. Choose another -o path.")
    if not output.parent.is_dir():
        raise InputError(f"output folder {output.parent} does not exist; create it first")


@contextlib.contextmanager
def staging(output: Path) -> Iterator[Path]:
    """A fresh directory to build the artifact in; on success it replaces `output` atomically."""
    check_output_path(output)
    _remove_abandoned_stages(output)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.{os.getpid()}.", suffix=".staging", dir=output.parent))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it private; an artifact is an ordinary folder
    try:
        yield stage
        _fsync_tree(stage)
        _move_into_place(stage, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _remove_abandoned_stages(output: Path) -> None:
    """Delete staging folders left by builds that were killed (their process is gone)."""
    for stage in output.parent.glob(f".{output.name}.*.staging"):
        pid = stage.name[len(output.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as stream:
            os.fsync(stream.fileno())


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _move_into_place(stage: Path, output: Path) -> None:
    """Rename `stage` to `output`; an existing artifact is swapped out in one step, then deleted."""
    try:
        os.rename(stage, output)  # succeeds when output is absent or an empty directory
        return
    except OSError:
        if not output.is_dir():
            raise
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, bytes(stage), _AT_FDCWD, bytes(output), _RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"cannot replace {output}: {os.strerror(errno)}")
    # `stage` now holds the previous artifact; the caller removes it.


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InputError(f"{path} is not a kiln artifact (no {MANIFEST}); build one with `kiln compile`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest_path}: not valid JSON ({exc}); rebuild the artifact") from exc
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{path}: manifest schema {manifest.get('schema_version')!r}, this kiln reads "
                         f"{SCHEMA_VERSION}; rebuild the artifact with this kiln")
    return manifest


def verified_file(path: Path, entry: dict[str, str]) -> Path:
    """The artifact file named by a manifest entry, after checking its sha256."""
    file = path / entry["file"]
    if not file.is_file():
        raise InputError(f"{path}: {entry['file']} named by the manifest is missing; rebuild the artifact")
    actual = sha256_file(file)
    if actual != entry["sha256"]:
        raise InputError(f"{path}: {entry['file']} has sha256 {actual[:12]}..., the manifest says "
                         f"{entry['sha256'][:12]}...; the artifact was modified or corrupted. Rebuild it.")
    return file


def load(path: str | os.PathLike, threads: int | None = None):
    """Load an artifact and return its predictor (`.predict(inputs)`, `.inputs`, `.outputs`)."""
    import importlib

    from kiln.targets.host import check_can_run

    path = Path(path)
    manifest = read_manifest(path)
    library = verified_file(path, manifest["library"])
    preset = Preset.from_json(manifest["target"])
    check_can_run(preset)
    backend = manifest.get("backend")
    if backend not in _PREDICTORS:
        raise InputError(f"{path}: unknown backend {backend!r} in the manifest; is it from a newer kiln?")
    module_name, class_name = _PREDICTORS[backend].split(":")
    predictor_class = getattr(importlib.import_module(module_name), class_name)
    inputs = tuple(TensorSpec.from_json(s) for s in manifest["inputs"])
    outputs = tuple(TensorSpec.from_json(s) for s in manifest["outputs"])
    return predictor_class(library, preset, inputs, outputs, threads=threads)
