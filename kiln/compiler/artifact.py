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

from kiln.compiler.graph import Graph
from kiln.compiler.manifest import Backend, FileEntry, Manifest, Precision
from kiln.errors import InputError
from kiln.files import sha256_file
from kiln.targets.presets import Family, Preset

MANIFEST = "manifest.json"

# Each backend's predictor, imported only when an artifact of that backend is loaded.
_PREDICTORS = {
    Backend.TVM: "kiln.compiler.backends.tvm.runner:TVMPredictor",
    Backend.TL2CGEN: "kiln.compiler.backends.tree_runner:TreePredictor",
}
_DEPENDENCIES = {
    Backend.TVM: ("apache-tvm", "apache-tvm-ffi", "onnx", "numpy"),
    Backend.TL2CGEN: ("treelite", "tl2cgen", "numpy"),
}


def dependency_versions(backend: Backend) -> dict[str, str]:
    versions = {"kiln-ml": version("kiln-ml")}
    versions.update({name: version(name) for name in _DEPENDENCIES[backend]})
    return versions


def version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def content_addressed(library: Path) -> Path:
    """Rename a staged library to model-<sha256 prefix>.so and return its new path. The dynamic loader keeps a
    library mapped under its path: a process that loaded an earlier build of the same artifact would get the
    old code back for the same name, and gets the new code for a new one."""
    named = library.with_name(f"model-{sha256_file(library)[:16]}{library.suffix}")
    library.rename(named)
    return named


def file_entry(path: Path) -> FileEntry:
    return FileEntry(path.name, sha256_file(path))


def make_manifest(graph: Graph, preset: Preset, backend: Backend, library: Path, *,
                  precision: Precision = Precision.FP32, files: dict[str, Path] | None = None,
                  **records: Any) -> Manifest:
    """The manifest for a staged artifact; files are recorded by name, relative to the artifact directory.
    `records` are the Manifest's optional fields (build, tree, integer_kernels, quantization)."""
    return Manifest(versions=dependency_versions(backend), source=graph.provenance, target=preset, backend=backend,
                    precision=precision, inputs=graph.signature.inputs, outputs=graph.signature.outputs,
                    frozen_inputs=graph.signature.frozen, sequence_inputs=graph.signature.sequence_inputs,
                    sequence_outputs=graph.signature.sequence_outputs, library=file_entry(library),
                    files={role: file_entry(path) for role, path in sorted((files or {}).items())}, **records)


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
    remove_abandoned_stages(output)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.{os.getpid()}.", suffix=".staging", dir=output.parent))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it private; an artifact is an ordinary folder
    try:
        yield stage
        _fsync_tree(stage)
        _move_into_place(stage, output)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_abandoned_stages(output: Path) -> None:
    """Delete staging folders left by builds that were killed (their process is gone)."""
    for stage in output.parent.glob(f".{output.name}.*.staging"):
        pid = stage.name[len(output.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not ended: a killed worker whose parent died too stays a zombie until
    init reaps it, and a zombie stages nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_manifest(folder: Path, manifest: Manifest) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")


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


def read_manifest(path: Path) -> Manifest:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InputError(f"{path} is not a kiln artifact (no {MANIFEST}); build one with `kiln compile`")
    try:
        data = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest_path}: not valid JSON ({exc}); rebuild the artifact") from exc
    try:
        return Manifest.from_json(data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def verified_file(path: Path, entry: FileEntry) -> Path:
    """The artifact file named by a manifest entry, after checking that it lies in the artifact folder and
    has the recorded sha256."""
    file = path / entry.file
    if entry.file != Path(entry.file).name or entry.file in ("", ".", "..") or file.is_symlink():
        raise InputError(f"{path}: the manifest names {entry.file!r}, which is not a file of the artifact folder "
                         "(kiln writes plain names, never paths or links); the manifest was edited. Rebuild it.")
    if not file.is_file():
        raise InputError(f"{path}: {entry.file} named by the manifest is missing; rebuild the artifact")
    actual = sha256_file(file)
    if actual != entry.sha256:
        raise InputError(f"{path}: {entry.file} has sha256 {actual[:12]}..., the manifest says "
                         f"{entry.sha256[:12]}...; the artifact was modified or corrupted. Rebuild it.")
    return file


_ELF_MACHINES = {Family.X86: 62, Family.CUDA: 62, Family.AARCH64: 183}  # EM_X86_64, EM_AARCH64; CUDA: x86 host code


def check_library_machine(library: Path, preset: Preset) -> None:
    """Refuse, before loading it, a library that is not a 64-bit little-endian ELF shared object for the
    target's machine: loading one fails inside the dynamic loader, or crashes."""
    with open(library, "rb") as stream:
        header = stream.read(20)
    expected = _ELF_MACHINES[preset.family]
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1 or header[16] != 3:
        raise InputError(f"{library}: not a 64-bit ELF shared library; the artifact is corrupt. Rebuild it.")
    machine = int.from_bytes(header[18:20], "little")
    if machine != expected:
        raise InputError(f"{library}: an ELF library for machine {machine}, but the manifest's target "
                         f"{preset.name} needs machine {expected}; the artifact is inconsistent. Rebuild it.")


def checked_library(path: Path) -> tuple[Manifest, Path]:
    """An artifact's manifest and its library, after the checks that need no device: the library is the one the
    manifest names, unmodified, and built for the target's machine."""
    manifest = read_manifest(path)
    library = verified_file(path, manifest.library)
    check_library_machine(library, manifest.target)
    return manifest, library


def load(path: str | os.PathLike, threads: int | None = None):
    """Load an artifact and return its predictor (`.predict(inputs)`, `.inputs`, `.outputs`)."""
    import importlib

    from kiln.targets.host import check_can_run

    path = Path(path)
    manifest, library = checked_library(path)
    check_can_run(manifest.target)
    module_name, class_name = _PREDICTORS[manifest.backend].split(":")
    predictor_class = getattr(importlib.import_module(module_name), class_name)
    from kiln.compiler.batching import BatchedPredictor, chunk_functions, pinned

    functions = chunk_functions(manifest)
    if not functions:
        predictor = predictor_class(library, manifest.target, manifest.inputs, manifest.outputs, threads=threads)
    else:
        chunks = {key: predictor_class(library, manifest.target, tuple(pinned(s, *key) for s in manifest.inputs),
                                       tuple(pinned(s, *key) for s in manifest.outputs), threads=threads,
                                       function=function)
                  for key, function in functions.items()}
        predictor = BatchedPredictor(chunks, manifest.inputs, manifest.outputs)
    return predictor.taking(manifest)
