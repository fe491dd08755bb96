"""Reading and writing named arrays (.npz, .npy) at the command-line boundary."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from kiln.errors import InputError
from kiln.files import atomic_path


def read_arrays(path: Path, default_name: str | None = None) -> dict[str, np.ndarray]:
    """Arrays keyed by name from an .npz file, or one .npy array under `default_name`."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if path.suffix == ".npy":
            if default_name is None:
                raise InputError(f"{path}: an .npy file holds one unnamed array; this model has several "
                                 "inputs, so pass an .npz with one array per input name")
            return {default_name: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise InputError(f"{path}: expected an .npz archive of named arrays")
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: cannot read arrays ({exc}); write them with numpy.savez") from exc


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, **arrays)
