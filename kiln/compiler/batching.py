"""Artifacts that take a batch range (`--input-shape input:1-64x3x224x224`): one library with a VM function compiled
for each batch size of CHUNK_SIZES the range reaches, and any batch in the range run as a sequence of them, largest
first (17 = 16 + 1, 3 = 2 + 1).

Chunks rather than kernels with a symbolic batch: kiln's schedules (NCHWc layouts, register tiles, packed
weights) need static loop extents. The functions share their weights (TVM's VM stores equal constants once), so
each size costs only its code, and powers of two keep every batch within a few calls of sizes near its own: a
batch runs at most log2(high) + 1 calls, and the largest carries most of the rows. Padding would cost up to half
a run.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import numpy as np

from kiln.compiler.graph import DimRange, TensorSpec
from kiln.compiler.predictor import Predictor
from kiln.errors import InputError

CHUNK_SIZES = (64, 32, 16, 8, 4, 2, 1)
DEFAULT_RANGE = DimRange(1, 64)  # a model's free batch when no --input-shape is given


def chunk_sizes(batch: DimRange) -> tuple[int, ...]:
    """The batch sizes to compile for a range, largest first: each of CHUNK_SIZES up to its high end."""
    return tuple(size for size in CHUNK_SIZES if size == 1 or size <= batch.high)


def split(batch: int, sizes: tuple[int, ...]) -> list[int]:
    """`batch` as a sum of `sizes` (largest first; they end with 1), taking the largest that fits each time."""
    parts = []
    for size in sizes:
        count, batch = divmod(batch, size)
        parts += [size] * count
    return parts


def pinned(spec: TensorSpec, batch: int) -> TensorSpec:
    """`spec` with its batch range replaced by `batch`."""
    if not spec.shape or not isinstance(spec.shape[0], DimRange):
        return spec
    return dataclasses.replace(spec, shape=(batch, *spec.shape[1:]))


def ranged(spec: TensorSpec, batch_range: DimRange) -> TensorSpec:
    """`spec` of a library compiled for one batch size, with its leading dim as the artifact's range."""
    return dataclasses.replace(spec, shape=(batch_range, *spec.shape[1:]))


class BatchedPredictor(Predictor):
    """Runs any batch in its inputs' range through predictors of fixed batch sizes (`chunks`, by size)."""

    def __init__(self, chunks: Mapping[int, Predictor], inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...]):
        super().__init__(inputs, outputs)
        self._chunks = dict(chunks)
        self._sizes = tuple(sorted(self._chunks, reverse=True))
        self._batched = [bool(spec.shape) and isinstance(spec.shape[0], DimRange) for spec in inputs]

    def _validate(self, inputs) -> list[np.ndarray]:
        arrays = super()._validate(inputs)
        batches = {array.shape[0] for array, batched in zip(arrays, self._batched) if batched}
        if len(batches) > 1:
            raise InputError(f"the inputs have different batch sizes ({', '.join(map(str, sorted(batches)))}); "
                             "give every input the same number of rows")
        return arrays

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        results = [self._chunks[size]._execute(piece) for size, piece in self._pieces(arrays)]
        return results[0] if len(results) == 1 else [np.concatenate(parts) for parts in zip(*results)]

    def _pieces(self, arrays: list[np.ndarray]) -> Iterator[tuple[int, list[np.ndarray]]]:
        """(chunk size, the inputs' rows for it) for each chunk the batch of `arrays` runs as, in order."""
        batch = next(array.shape[0] for array, batched in zip(arrays, self._batched) if batched)
        start = 0
        for size in split(batch, self._sizes):
            yield size, [array[start:start + size] if batched else array for array, batched in zip(arrays, self._batched)]
            start += size
