"""Observers: streaming statistics of one tensor that end in a validated `TensorRange`.

Every observer has the same interface, `update(values)` per batch and `result()` at the end.
`MinMaxObserver` keeps two floats. `HistogramObserver` keeps a fixed histogram of the non-zero
|x| over [0, amax] (amax known from a first min/max pass; exact zeros, as Relu makes in bulk, are
represented exactly by any range, so they are not counted), `bins` int64 counters, so its memory
does not grow with the number of samples; percentile, entropy (KL divergence, as TensorRT and MXNet) and
MSE choose a clipping threshold from it.
"""

from __future__ import annotations

import abc
import enum
import math
from dataclasses import dataclass

import numpy as np

from kiln.errors import InputError, SettingError
from kiln.settings import setting


class CalibMethod(str, enum.Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"


@dataclass(frozen=True)
class ObserverSettings:
    method: CalibMethod = setting(CalibMethod.ENTROPY, key="calib_method", parse=CalibMethod,
                                  help="How activation ranges are chosen from the calibration data.")
    percentile: float = setting(99.99, key="percentile", parse=float,
                                help="For --calib-method percentile: the share of |activation| values kept in "
                                     "range, in percent.")
    bins: int = 2048  # histogram bins per tensor (PERCENTILE, ENTROPY, MSE)

    def __post_init__(self):
        if not 50.0 < self.percentile <= 100.0:
            raise SettingError(ObserverSettings, f"{{percentile}} {self.percentile}: give a value in (50, 100], "
                                                 "e.g. 99.99")
        if self.bins < 256:
            raise SettingError(ObserverSettings, f"{{bins}} {self.bins}: use at least 256 histogram bins")

    def to_json(self) -> dict:
        return {"method": self.method.value, "bins": self.bins,
                **({"percentile": self.percentile} if self.method is CalibMethod.PERCENTILE else {})}


@dataclass(frozen=True)
class TensorRange:
    """The real-valued range [lo, hi] a tensor is quantized over; always finite and contains 0."""

    lo: float
    hi: float

    def __post_init__(self):
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise InputError(f"non-finite activation range [{self.lo}, {self.hi}]: the model produced NaN or inf "
                             "on the calibration data; check the data's scaling")
        if not self.lo <= 0.0 <= self.hi:
            raise ValueError(f"range [{self.lo}, {self.hi}] must contain 0")

    @property
    def one_sided(self) -> bool:
        return self.lo == 0.0

    def union(self, other: "TensorRange") -> "TensorRange":
        return TensorRange(min(self.lo, other.lo), max(self.hi, other.hi))

    def to_json(self) -> list[float]:
        return [self.lo, self.hi]


class Observer(abc.ABC):
    @abc.abstractmethod
    def update(self, values: np.ndarray) -> None:
        """Fold one batch of the tensor's values into the statistics."""

    @abc.abstractmethod
    def result(self) -> TensorRange | None:
        """The chosen range, None when the tensor held NaN or inf (such a tensor is never quantized: an attention
        mask's -inf, say); call after the last update."""


class MinMaxObserver(Observer):
    def __init__(self):
        self.lo, self.hi = 0.0, 0.0

    def update(self, values: np.ndarray) -> None:
        if values.size:  # a NaN makes both NaN for good, which result() reports
            low, high = float(values.min()), float(values.max())
            self.lo = low if math.isnan(low) else min(self.lo, low)
            self.hi = high if math.isnan(high) else max(self.hi, high)

    def result(self) -> TensorRange | None:
        return TensorRange(self.lo, self.hi) if math.isfinite(self.lo) and math.isfinite(self.hi) else None


class HistogramObserver(Observer):
    def __init__(self, bounds: TensorRange, settings: ObserverSettings):
        self.bounds, self.settings = bounds, settings
        self.amax = max(-bounds.lo, bounds.hi)
        self.counts = np.zeros(settings.bins, dtype=np.int64)

    def update(self, values: np.ndarray) -> None:
        if self.amax == 0.0 or not values.size:
            return
        magnitudes = np.abs(values.ravel())
        magnitudes = magnitudes[magnitudes != 0]  # exact zeros (Relu) quantize exactly: they never choose a range
        index = np.minimum((magnitudes * (self.settings.bins / self.amax)).astype(np.int64), self.settings.bins - 1)
        self.counts += np.bincount(index, minlength=self.settings.bins)

    def result(self) -> TensorRange | None:
        if self.amax == 0.0 or not self.counts.any():
            return self.bounds
        edges = np.linspace(0.0, self.amax, self.settings.bins + 1)
        method = self.settings.method
        if method is CalibMethod.PERCENTILE:
            threshold = percentile_threshold(self.counts, edges, self.settings.percentile)
        elif method is CalibMethod.ENTROPY:
            threshold = entropy_threshold(self.counts, edges, 255 if self.bounds.one_sided else 128)
        elif method is CalibMethod.MSE:
            threshold = mse_threshold(self.counts, edges, 255 if self.bounds.one_sided else 127.5)
        else:
            raise AssertionError(method)
        return TensorRange(max(self.bounds.lo, -threshold), min(self.bounds.hi, threshold))


def make_observer(settings: ObserverSettings, bounds: TensorRange | None) -> Observer:
    """A min/max observer for the first pass (`bounds` None), or the method's for the second."""
    if bounds is None or settings.method is CalibMethod.MINMAX:
        return MinMaxObserver()
    return HistogramObserver(bounds, settings)


def percentile_threshold(counts: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    cdf = np.cumsum(counts) / counts.sum()
    index = int(np.searchsorted(cdf, percentile / 100.0))
    return float(edges[min(index + 1, len(counts))])


def entropy_threshold(counts: np.ndarray, edges: np.ndarray, levels: int, candidates: int = 256) -> float:
    """The threshold whose `levels`-level quantization loses the least information (min KL(P||Q))."""
    bins = len(counts)
    if bins <= levels:
        return float(edges[-1])
    stride = max(1, (bins - levels) // candidates)
    best, best_kl = bins, math.inf
    hist = counts.astype(np.float64)
    for stop in range(levels, bins + 1, stride):
        reference = hist[:stop].copy()
        reference[-1] += hist[stop:].sum()  # outliers are clipped into the last bin
        group = (np.arange(stop) * levels) // stop
        nonzero = hist[:stop] != 0
        sums = np.bincount(group, weights=hist[:stop], minlength=levels)
        used = np.bincount(group, weights=nonzero, minlength=levels)
        expanded = np.where(nonzero, sums[group] / np.maximum(used[group], 1), 0.0)
        kl = _kl_divergence(reference, expanded)
        if kl < best_kl:
            best, best_kl = stop, kl
    return float(edges[best])


def _kl_divergence(reference: np.ndarray, candidate: np.ndarray) -> float:
    p = reference / reference.sum()
    q = candidate / max(candidate.sum(), 1e-12)
    mask = p > 0
    q = np.where(mask & (q == 0), 1e-9, q)  # smoothing: a bin Q left empty costs, but finitely
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def mse_threshold(counts: np.ndarray, edges: np.ndarray, steps: float, candidates: int = 256) -> float:
    """The threshold minimising expected squared error: rounding (step²/12) inside, clipping outside."""
    centers = (edges[:-1] + edges[1:]) / 2
    picks = np.unique(np.linspace(1, len(counts), candidates).astype(np.int64))
    thresholds = edges[picks][:, None]
    step = thresholds / steps
    inside = centers[None, :] <= thresholds
    error = np.where(inside, step ** 2 / 12.0, (centers[None, :] - thresholds) ** 2) @ counts.astype(np.float64)
    return float(thresholds[int(np.argmin(error)), 0])
