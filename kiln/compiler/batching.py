"""Artifacts that take a batch range (`--input-shape input:1-64x3x224x224`): one library with a VM function compiled
for each batch size of CHUNK_SIZES the range reaches, and any batch in the range run as a sequence of them, largest
first (17 = 16 + 1, 3 = 2 + 1).

Chunks rather than kernels with a symbolic batch: kiln's schedules (NCHWc layouts, register tiles, packed
weights) need static loop extents. The functions share their weights (TVM's VM stores equal constants once), so
each size costs only its code, and powers of two keep every batch within a few calls of sizes near its own: a
batch runs at most log2(high) + 1 calls, and the largest carries most of the rows. Padding would cost up to half
a run.

A sequence's length cannot be split so: attention mixes all its positions. An artifact whose inputs give their
later dims a range (`input_ids:1-8x16-256`) has functions for the length buckets (LENGTH_BUCKETS: the range's
ends and the powers of two between them) times the batch chunks; an input is padded with zeros to the bucket at
or above its length, and the outputs' length dims cut back. That is exact only for a model whose outputs at the
real positions ignore the padding (a transformer with an attention mask, where a 0 masks a position; causal
attention): compiling checks it (kiln.pipeline), and refuses a model that does not.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, Optional

import numpy as np

from kiln.compiler.graph import DimRange, TensorSpec
from kiln.compiler.manifest import Manifest
from kiln.compiler.predictor import Predictor
from kiln.errors import InputError

CHUNK_SIZES = (64, 32, 16, 8, 4, 2, 1)
DEFAULT_RANGE = DimRange(1, 64)  # a model's free batch when no --input-shape is given


def chunk_sizes(batch: DimRange) -> tuple[int, ...]:
    """The batch sizes to compile for a range, largest first: each of CHUNK_SIZES up to its high end."""
    return tuple(size for size in CHUNK_SIZES if size == 1 or size <= batch.high)


def length_buckets(length: DimRange) -> tuple[int, ...]:
    """The lengths to compile for a range, shortest first: its ends and the powers of two between them."""
    powers = (2 ** exponent for exponent in range(length.high.bit_length()))
    return tuple(sorted({length.low, length.high, *(size for size in powers if length.low < size < length.high)}))


def split(batch: int, sizes: tuple[int, ...]) -> list[int]:
    """`batch` as a sum of `sizes` (largest first; they end with 1), taking the largest that fits each time."""
    parts = []
    for size in sizes:
        count, batch = divmod(batch, size)
        parts += [size] * count
    return parts


def pinned(spec: TensorSpec, batch: int, length: int | None = None) -> TensorSpec:
    """`spec` with its batch range replaced by `batch` and its length ranges by `length`."""
    return dataclasses.replace(spec, shape=tuple((batch if index == 0 else length) if isinstance(dim, DimRange)
                                                 else dim for index, dim in enumerate(spec.shape)))


def ranged(spec: TensorSpec, batch_range: DimRange | None, length_range: DimRange | None = None,
           length_dims: tuple[int, ...] = ()) -> TensorSpec:
    """`spec` of a library compiled for one batch size (and length), with its leading dim as the artifact's batch
    range (where one is given) and its `length_dims` as its length range."""
    shape = list(spec.shape)
    if batch_range is not None:
        shape[0] = batch_range
    for index in length_dims:
        shape[index] = length_range
    return dataclasses.replace(spec, shape=tuple(shape))


def length_dims(spec: TensorSpec) -> tuple[int, ...]:
    """The dims of `spec` after the first that are a range: a sequence's length."""
    return tuple(index for index, dim in enumerate(spec.shape) if index and isinstance(dim, DimRange))


Key = tuple[int, Optional[int]]  # a chunk: (batch size, length bucket or None)


def chunk_functions(manifest: Manifest) -> dict[Key, str]:
    """The VM function of each chunk of a ranged artifact (none for a fixed-shape one)."""
    if manifest.length_functions:
        return {(size, length): function for length, functions in manifest.length_functions.items()
                for size, function in functions.items()}
    return {(size, None): function for size, function in manifest.batch_functions.items()}


class BatchedPredictor(Predictor):
    """Runs any batch (and length) in its inputs' ranges through predictors of fixed shapes (`chunks`, by batch
    size and length bucket), padding inputs to the bucket and cutting the outputs back."""

    def __init__(self, chunks: Mapping[Key, Predictor], inputs: tuple[TensorSpec, ...],
                 outputs: tuple[TensorSpec, ...]):
        super().__init__(inputs, outputs)
        self._chunks = dict(chunks)
        self._sizes = tuple(sorted({size for size, _ in self._chunks}, reverse=True))
        self._buckets = tuple(sorted({bucket for _, bucket in self._chunks if bucket is not None}))
        self._batched = [bool(spec.shape) and isinstance(spec.shape[0], DimRange) for spec in inputs]
        self._input_lengths = [length_dims(spec) for spec in inputs]
        self._output_lengths = [length_dims(spec) for spec in outputs]

    def _validate(self, inputs) -> list[np.ndarray]:
        arrays = super()._validate(inputs)
        for role, sizes in (("batch sizes", {array.shape[0] for array, batched in zip(arrays, self._batched)
                                             if batched}),
                            ("lengths", {array.shape[d] for array, dims in zip(arrays, self._input_lengths)
                                         for d in dims})):
            if len(sizes) > 1:
                raise InputError(f"the inputs have different {role} ({', '.join(map(str, sorted(sizes)))}); give "
                                 f"every input the same")
        return arrays

    def _execute(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self._run(arrays)

    def run_padded(self, inputs: Mapping[str, np.ndarray], bucket: int) -> dict[str, np.ndarray]:
        """`run`, with the inputs padded to the length `bucket` (one of the artifact's) whatever their length."""
        return dict(zip((spec.name for spec in self.outputs), self._run(self._validate(inputs), bucket)))

    def _run(self, arrays: list[np.ndarray], bucket: int | None = None) -> list[np.ndarray]:
        results = [self._chunks[key]._execute(piece) for key, piece in self._pieces(arrays, bucket)]
        outputs = results[0] if len(results) == 1 else [np.concatenate(parts) for parts in zip(*results)]
        length = self._length(arrays)
        return [_cut(output, dims, length) for output, dims in zip(outputs, self._output_lengths)]

    def _length(self, arrays: list[np.ndarray]) -> int | None:
        return next((array.shape[dims[0]] for array, dims in zip(arrays, self._input_lengths) if dims), None)

    def _pieces(self, arrays: list[np.ndarray], bucket: int | None = None) -> Iterator[tuple[Key, list[np.ndarray]]]:
        """(chunk, the inputs' rows for it, padded to its length) for each chunk the batch of `arrays` runs as, in
        order; `bucket` overrides the length bucket (the padding check)."""
        length = self._length(arrays)
        if length is not None:
            bucket = bucket or next(size for size in self._buckets if size >= length)
            arrays = [_padded(array, dims, bucket) for array, dims in zip(arrays, self._input_lengths)]
        if not any(self._batched):
            yield (self._sizes[0], bucket), arrays
            return
        batch = next(array.shape[0] for array, batched in zip(arrays, self._batched) if batched)
        start = 0
        for size in split(batch, self._sizes):
            yield (size, bucket), [array[start:start + size] if batched else array
                                   for array, batched in zip(arrays, self._batched)]
            start += size


def _padded(array: np.ndarray, dims: tuple[int, ...], size: int) -> np.ndarray:
    """`array` with zeros after its values along `dims`, to `size`."""
    if not dims or all(array.shape[d] == size for d in dims):
        return array
    return np.pad(array, [(0, size - extent if d in dims else 0) for d, extent in enumerate(array.shape)])


def _cut(output: np.ndarray, dims: tuple[int, ...], length: int | None) -> np.ndarray:
    """`output` cut to `length` along its length `dims`."""
    if length is None or not dims:
        return output
    return output[tuple(slice(0, length) if d in dims else slice(None) for d in range(output.ndim))]
