"""Reading and writing named arrays (.npz, .npy) at the command-line boundary, and seeded random ones."""

from __future__ import annotations

import math
import tokenize
import zipfile
from pathlib import Path

import numpy as np

from kiln.compiler.graph import DimRange, TensorSpec
from kiln.dtypes import is_float, numpy_dtype
from kiln.errors import InputError
from kiln.files import atomic_path

SEED = 0


def read_arrays(path: Path, default_name: str | None = None) -> dict[str, np.ndarray]:
    """Arrays keyed by name from an .npz file, or one .npy array under `default_name`."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        if path.suffix == ".npy":
            if default_name is None:
                raise InputError(f"{path}: an .npy file holds one unnamed array; this model has several "
                                 "inputs, so pass an .npz with one array per input name")
            with open(path, "rb") as stream:
                _check_size(path, default_name, stream, path.stat().st_size)
            return {default_name: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise InputError(f"{path}: expected an .npz archive of named arrays")
            for name in archive.files:
                member = archive.zip.getinfo(f"{name}.npy" if f"{name}.npy" in archive.zip.namelist() else name)
                with archive.zip.open(member) as stream:
                    _check_size(path, name, stream, member.file_size)
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, tokenize.TokenError) as exc:  # numpy tokenizes headers
        raise InputError(f"{path}: cannot read arrays ({exc}); write them with numpy.savez") from exc


def _check_size(path: Path, name: str, stream, stored: int) -> None:
    """Refuse an array whose header claims more data than the file holds: numpy allocates the claimed size before
    reading, so a corrupt shape in a small file would exhaust memory."""
    from numpy.lib import format as npy

    version = npy.read_magic(stream)
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = read_header(stream)
    claimed = math.prod(shape) * dtype.itemsize
    if min(shape, default=0) < 0 or claimed > stored - stream.tell():
        raise InputError(f"{path}: array {name!r} claims shape {shape} of {dtype} ({claimed:,} bytes), but the file "
                         f"holds {stored - stream.tell():,} bytes of it; the file is corrupt. Write it again with "
                         "numpy.savez")


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        np.savez(stream, **arrays)


def random_feed(specs: tuple[TensorSpec, ...], batch: int | None = None,
                length: int | None = None) -> dict[str, np.ndarray]:
    """Seeded inputs for `specs` (symbolic dims and batch ranges: `batch`, or 1; length ranges: `length`, or their
    longest): floats from a standard normal; integers that index tables within their rows (token ids within the
    vocabulary), else 0 or 1; booleans at random."""
    rng = np.random.default_rng(SEED)
    feed = {}
    for spec in specs:
        dtype = numpy_dtype(spec.dtype)
        shape = [d if isinstance(d, int) else (length or d.high) if index and isinstance(d, DimRange)
                 else (batch or 1) for index, d in enumerate(spec.shape)]
        if is_float(dtype):
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feed[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feed[spec.name] = rng.integers(0, spec.index_bound or 2, shape).astype(dtype)
    return feed
