"""Typed quantization options; the CLI converts its strings into these."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path

from kiln.calibration.cache import DEFAULT_DIR
from kiln.calibration.datasets import Sampling
from kiln.calibration.observers import ObserverSettings
from kiln.errors import SettingError
from kiln.settings import group, setting
from kiln.targets.presets import Preset


class ActivationType(str, enum.Enum):
    """uint8 suits x86 (AVX2/VNNI multiply u8 x s8); int8 suits ARM sdot and CUDA dp4a (s8 x s8)."""

    UINT8 = "uint8"
    INT8 = "int8"


class KeepFloat(str, enum.Enum):
    FIRST = "first"
    LAST = "last"


def _strings(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _keep_float(value) -> frozenset[KeepFloat]:
    parts = [part.strip() for part in (value.split(",") if isinstance(value, str) else value) if part.strip()]
    if any(part not in {k.value for k in KeepFloat} for part in parts):
        raise ValueError("use first, last or first,last")
    return frozenset(KeepFloat(part) for part in parts)


@dataclass(frozen=True)
class QuantizeOptions:
    """Neural INT8 settings. Each keyed field is also a `kiln compile`/`kiln quantize` option (--KEY with dashes)
    and a kiln.toml key (see kiln.settings); the others are for library callers."""

    observers: ObserverSettings = group(ObserverSettings)
    sampling: Sampling = group(Sampling)
    exclude: tuple[str, ...] = setting(
        (), key="exclude", parse=_strings, kind="multiple",
        help="Keep nodes in float: a node name, an op type (e.g. Add), or a regex over node names. Repeat for several.")
    keep_float: frozenset[KeepFloat] = setting(
        frozenset(), key="keep_float", parse=_keep_float,
        help="Keep the first and/or last layer in float: first, last or first,last.")
    activations: ActivationType | None = None  # None: what the target's int8 instructions take
    reduce_range: bool | None = None  # 7-bit weights; None: when the target is x86 without VNNI
    eval: Path | None = setting(
        None, key="eval", parse=Path, path=True,
        help="Evaluation data (.npz: the inputs plus a `labels` array): float vs INT8 top-1 (classification) or RMSE "
             "(regression) in the report.")
    max_accuracy_drop: float | None = setting(
        None, key="max_accuracy_drop", parse=float,
        help="Fail (exit 6, nothing written) when INT8 loses more than this: top-1 points, or RMSE increase in "
             "percent. Needs --eval.")
    auto_exclude: bool = setting(
        False, key="auto_exclude", parse=bool, kind="flag",
        help="When the gate fails, keep the most sensitive layers in float, one at a time, until it passes (at most "
             "8); the manifest lists them.")
    auto_exclude_limit: int = 8  # most layers auto_exclude keeps in float
    allow_degenerate: bool = setting(
        False, key="allow_degenerate", parse=bool, kind="flag",
        help="Quantize even when the calibration data holds an input at one value, or leaves a tensor at exactly 0 "
             "on every sample (a ReLU that never fires): its INT8 range collapses, so kiln refuses by default.")
    # Where to work, not what to build (build=False: fingerprints leave it out). A str: the cache is a folder of
    # results, never an input.
    cache_dir: str = setting(
        DEFAULT_DIR, key="cache_dir", parse=str, path=True, build=False,
        help="Calibration cache folder: ranges by hash of model, data and settings; a rerun with the same key skips "
             "calibration.")

    def __post_init__(self):
        if self.max_accuracy_drop is not None and self.eval is None:
            raise SettingError(QuantizeOptions, "{max_accuracy_drop} needs labeled evaluation data: give {eval} "
                                                "DATA.npz (the model's inputs plus a `labels` array)")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise SettingError(QuantizeOptions, f"{{max_accuracy_drop}} {self.max_accuracy_drop}: give a "
                                                "non-negative number of points")
        if self.auto_exclude and self.max_accuracy_drop is None:
            raise SettingError(QuantizeOptions, "{auto_exclude} needs a gate to pass: give {max_accuracy_drop} "
                                                "POINTS and {eval} DATA.npz")

    def for_target(self, preset: Preset) -> "QuantizeOptions":
        """These options with the target-dependent choices made, as its int8 instruction set wants them
        (Int8Isa.activations, Int8Isa.reduce_range): uint8 activations on x86, int8 on ARM and CUDA; 7-bit
        weights on x86 without VNNI."""
        isa = preset.int8_isa
        activations = self.activations or ActivationType(isa.activations)
        reduce_range = isa.reduce_range if self.reduce_range is None else self.reduce_range
        return dataclasses.replace(self, activations=activations, reduce_range=reduce_range)

    def to_json(self) -> dict:
        return {
            **self.observers.to_json(),
            "samples": self.sampling.samples,
            "seed": self.sampling.seed,
            "activations": self.activations.value if self.activations else None,
            "weights": f"int8 symmetric per output channel, {'[-63, 63]' if self.reduce_range else '[-127, 127]'}",
            "exclude": list(self.exclude),
            "keep_float": sorted(k.value for k in self.keep_float),
            "max_accuracy_drop": self.max_accuracy_drop,
            "auto_exclude": self.auto_exclude,
        }

