"""Calibration data from files: .npz/.npy, a folder of them, a folder of images, or CSV.

Whatever the source, a `Dataset` yields batches of arrays keyed by model input name, in a
deterministic order (files sorted by name, rows in file order), after seeded sampling of
`samples` rows. Everything is checked against the model's inputs before any model runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from kiln.arrays import read_arrays
from kiln.calibration.images import IMAGE_SUFFIXES, ImageSpec, load_image
from kiln.compiler.graph import TensorSpec
from kiln.dtypes import as_declared, convert_hint, is_float
from kiln.errors import InputError, SettingError
from kiln.files import folder_sha256
from kiln.settings import setting

ARRAY_SUFFIXES = frozenset({".npz", ".npy"})
CSV_SUFFIXES = frozenset({".csv"})


def _image_spec(path) -> ImageSpec:
    return ImageSpec.from_toml(Path(path))


@dataclass(frozen=True)
class Sampling:
    """Which calibration samples are used, and how a folder of images becomes inputs. Each field is also a
    `kiln compile`/`kiln quantize` option and a kiln.toml key (see kiln.settings)."""

    samples: int | None = setting(None, key="calib_samples", parse=int,
                                  help="Use this many calibration samples, chosen with --calib-seed [default: all].")
    seed: int = setting(0, key="calib_seed", parse=int, help="Seed for choosing --calib-samples.")
    images: ImageSpec | None = setting(
        None, key="image_spec", parse=_image_spec, path=True,
        help="TOML preprocessing for a --calib folder of images: resize, crop, scale, mean, std, layout (NCHW/NHWC), "
             "channels (RGB/BGR/L).")

    def __post_init__(self):
        if self.samples is not None and self.samples < 1:
            raise SettingError(Sampling, f"{{samples}} {self.samples}: give a positive number")

    def to_json(self) -> dict:
        return {"samples": self.samples, "seed": self.seed,
                "images": self.images.to_json() if self.images else None}


@dataclass(frozen=True)
class CalibData:
    """Where calibration samples come from and which of them to take."""

    path: Path
    sampling: Sampling = Sampling()
    allow_nan: bool = False  # NaN marks a missing value (tree models), not bad data


class Dataset:
    """Validated calibration samples: `count` rows per input, served in batches."""

    def __init__(self, names: tuple[str, ...], count: int, digest: str):
        self.names = names
        self.count = count
        self.digest = digest  # sha256 of the source files and preprocessing, for the calibration cache

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError


class ArrayDataset(Dataset):
    def __init__(self, arrays: dict[str, np.ndarray], digest: str):
        super().__init__(tuple(arrays), len(next(iter(arrays.values()))), digest)
        self._arrays = arrays

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.count, size):
            yield {name: np.ascontiguousarray(a[start:start + size]) for name, a in self._arrays.items()}


class ImageDataset(Dataset):
    """Images are decoded one batch at a time, so a large folder is never held in memory."""

    def __init__(self, files: list[Path], spec: ImageSpec, input_spec: TensorSpec, digest: str):
        super().__init__((input_spec.name,), len(files), digest)
        self._files, self._spec, self._input_spec = files, spec, input_spec

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, self.count, size):
            chunk = self._files[start:start + size]
            yield {self.names[0]: np.concatenate([self.image(f) for f in chunk])}

    def image(self, file: Path) -> np.ndarray:
        """One image as a batch of one, checked against the input: an image of another size can come out of the
        spec's preprocessing in another shape."""
        image = load_image(file, self._spec)[None].astype(self._input_spec.dtype)
        _check_array(file, self._input_spec, image)
        return image


def open_dataset(data: CalibData, inputs: tuple[TensorSpec, ...]) -> Dataset:
    """The calibration samples in `data`, checked against the model's `inputs`."""
    files = _source_files(data.path)
    suffixes = {f.suffix.lower() for f in files}
    digest = _digest(data.path, files, data.sampling.images)
    if suffixes <= IMAGE_SUFFIXES:
        return _image_dataset(data, files, inputs, digest)
    if data.sampling.images is not None:
        raise SettingError(Sampling, f"{{images}} is given but {data.path} holds no images "
                                                f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    if suffixes <= CSV_SUFFIXES:
        arrays = _read_csv(files, inputs)
    else:
        arrays = _read_array_files(files, inputs)
    arrays = check_arrays(data.path, arrays, inputs, data.allow_nan)
    rows = _select(data, len(next(iter(arrays.values()))))
    return ArrayDataset({name: a[rows] for name, a in arrays.items()}, digest)


def _source_files(path: Path) -> list[Path]:
    if not path.exists():
        raise InputError(f"calibration data {path}: no such file or folder")
    known = ARRAY_SUFFIXES | CSV_SUFFIXES | IMAGE_SUFFIXES
    if path.is_file():
        if path.suffix.lower() not in known:
            raise InputError(f"calibration data {path}: unknown kind; use .npz, .npy, .csv, images, or a folder of them")
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in known)
    if not files:
        raise InputError(f"calibration folder {path} is empty: it holds no .npz, .npy, .csv or image "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))}) files")
    kinds = {kind for kind, suffixes in (("arrays", ARRAY_SUFFIXES), ("CSV", CSV_SUFFIXES), ("images", IMAGE_SUFFIXES))
             if any(f.suffix.lower() in suffixes for f in files)}
    if len(kinds) > 1:
        raise InputError(f"calibration folder {path} mixes {' and '.join(sorted(kinds))}; keep one kind per folder")
    return files


def _digest(root: Path, files: list[Path], images: ImageSpec | None) -> str:
    preprocessing = json.dumps(images.to_json() if images else None, sort_keys=True)
    return hashlib.sha256(f"{folder_sha256(root, files)}\0{preprocessing}".encode()).hexdigest()


def _select(data: CalibData, available: int) -> np.ndarray:
    """Row indices: all of them, or `samples` of them chosen with `seed`, in ascending order."""
    if available == 0:
        raise InputError(f"calibration data {data.path} holds no samples")
    samples = data.sampling.samples
    if samples is None:
        return np.arange(available)
    if samples > available:
        raise SettingError(Sampling, f"{{samples}} {samples} asks for more samples than {data.path} holds "
                                     f"({available}); lower {{samples}} or add data")
    if samples == available:
        return np.arange(available)
    return np.sort(np.random.default_rng(data.sampling.seed).choice(available, samples, replace=False))


def _read_array_files(files: list[Path], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    single = inputs[0].name if len(inputs) == 1 else None
    parts = [read_arrays(f, single) for f in files]
    names = set(parts[0])
    for file, part in zip(files[1:], parts[1:]):
        if set(part) != names:
            raise InputError(f"{file} holds arrays {', '.join(sorted(part))} but {files[0]} holds "
                             f"{', '.join(sorted(names))}; every calibration file needs the same names")
    return {name: np.concatenate([p[name] for p in parts]) if len(parts) > 1 else parts[0][name] for name in parts[0]}


def _read_csv(files: list[Path], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        raise InputError("CSV calibration data fits models with one 2-D input [rows, features]; this model takes "
                         f"{', '.join(s.describe() for s in inputs)}. Use an .npz keyed by input name instead.")
    spec = inputs[0]
    tables = []
    for file in files:
        try:  # UnicodeDecodeError, for a file that is not text, is a ValueError too
            lines = file.read_text().splitlines()
            has_header = bool(lines) and not _is_numeric_row(lines[0])
            table = np.loadtxt(file, delimiter=",", skiprows=int(has_header), dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise InputError(f"{file}: not a numeric CSV ({exc}); write one row per sample, comma-separated") from exc
        tables.append(table)
    return {spec.name: np.concatenate(tables).astype(spec.dtype)}


def _is_numeric_row(line: str) -> bool:
    try:
        [float(cell) for cell in line.split(",")]
    except ValueError:
        return False
    return True


def check_arrays(source: Path, arrays: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...],
                 allow_nan: bool = False) -> dict[str, np.ndarray]:
    expected = [spec.name for spec in inputs]
    missing, unknown = [n for n in expected if n not in arrays], sorted(set(arrays) - set(expected))
    if missing or unknown:
        raise InputError(f"calibration data {source} has arrays {', '.join(sorted(arrays)) or '(none)'}, "
                         f"the model's inputs are {', '.join(expected)}"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; unknown {', '.join(unknown)}" if unknown else "")
                         + ". Save the arrays under the input names (numpy.savez(path, NAME=array)).")
    arrays = {**arrays, **{spec.name: as_declared(arrays[spec.name], spec.dtype) for spec in inputs}}  # bfloat16
    rows = {spec.name: _check_array(source, spec, arrays[spec.name], allow_nan) for spec in inputs}
    if len(set(rows.values())) > 1:
        raise InputError(f"calibration data {source}: inputs have different sample counts "
                         f"({', '.join(f'{n}: {r}' for n, r in rows.items())}); give every input the same rows")
    return {spec.name: arrays[spec.name] for spec in inputs}


def _check_array(source: Path, spec: TensorSpec, array: np.ndarray, allow_nan: bool = False) -> int:
    """Check dtype, per-sample shape and finiteness (NaN allowed if `allow_nan`); return the sample count."""
    where = f"calibration data {source}, input {spec.name!r}"
    if array.dtype.name != spec.dtype:
        raise InputError(f"{where}: dtype {array.dtype.name}, the model takes {spec.dtype}; "
                         f"convert with {convert_hint(spec.dtype)}")
    sample_dims = spec.shape[1:]
    fits = array.ndim == len(spec.shape) and all(
        isinstance(want, str) or want == got for want, got in zip(sample_dims, array.shape[1:]))
    if not fits:
        wanted = "x".join(["N"] + [str(d) for d in sample_dims])
        raise InputError(f"{where}: shape {'x'.join(map(str, array.shape)) or 'scalar'}, the model takes "
                         f"{wanted} (N samples along the first axis)")
    if not len(array):
        raise InputError(f"{where}: no samples (shape {'x'.join(map(str, array.shape))}); give at least one")
    if is_float(array.dtype):
        flat = array.reshape(len(array), -1)
        bad = (np.isinf(flat) if allow_nan else ~np.isfinite(flat)).any(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            what = "inf" if allow_nan else "NaN or inf"
            raise InputError(f"{where}: {len(rows)} samples hold {what} (first at row {rows[0]}); "
                             "clean the data or drop those rows")
    return len(array)


def _image_dataset(data: CalibData, files: list[Path], inputs: tuple[TensorSpec, ...], digest: str) -> Dataset:
    if data.sampling.images is None:
        raise SettingError(Sampling, f"calibration data {data.path} holds images; declare their preprocessing with "
                                     "{images} SPEC.toml (size, crop, mean, std, layout, channels)")
    if len(inputs) != 1:
        raise InputError(f"image calibration data fits single-input models; this one has {len(inputs)} inputs")
    chosen = [files[i] for i in _select(data, len(files))]
    dataset = ImageDataset(chosen, data.sampling.images, inputs[0], digest)
    dataset.image(chosen[0])  # the first is checked now, before any model runs
    return dataset
