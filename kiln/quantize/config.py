"""Typed quantization options; the CLI converts its strings into these."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from kiln.calibration.cache import DEFAULT_DIR
from kiln.calibration.images import ImageSpec
from kiln.calibration.observers import ObserverSettings
from kiln.errors import InputError
from kiln.targets.presets import Family, Preset


class ActivationType(str, enum.Enum):
    """uint8 suits x86 (AVX2/VNNI multiply u8 x s8); int8 suits ARM sdot and CUDA dp4a (s8 x s8)."""

    UINT8 = "uint8"
    INT8 = "int8"


class KeepFloat(str, enum.Enum):
    FIRST = "first"
    LAST = "last"


@dataclass(frozen=True)
class QuantizeOptions:
    observers: ObserverSettings = ObserverSettings()
    samples: int | None = None  # calibration samples to use (seeded choice); None: all
    seed: int = 0
    images: ImageSpec | None = None  # preprocessing of a folder of calibration images
    exclude: tuple[str, ...] = ()  # node names, op types or regular expressions over node names
    keep_float: frozenset[KeepFloat] = frozenset()
    activations: ActivationType | None = None  # None: what the target's int8 instructions take
    reduce_range: bool | None = None  # 7-bit weights; None: when the target is x86 without VNNI
    eval: Path | None = None  # labeled evaluation data (.npz with the inputs and `labels`)
    max_accuracy_drop: float | None = None  # top-1 points, or RMSE increase in percent
    auto_exclude: bool = False
    auto_exclude_limit: int = 8  # most layers --auto-exclude keeps in float
    # Where to run, not what to build; a str, not a Path, so that build fingerprints (which hash
    # the contents of every Path) do not hash the cache's contents.
    cache_dir: str = DEFAULT_DIR
    progress_bar: bool = False  # a progress bar on stderr during calibration

    def __post_init__(self):
        if self.max_accuracy_drop is not None and self.eval is None:
            raise InputError("--max-accuracy-drop needs labeled evaluation data: add --eval DATA.npz "
                             "(the model's inputs plus a `labels` array)")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise InputError(f"--max-accuracy-drop {self.max_accuracy_drop}: give a non-negative number of points")
        if self.auto_exclude and self.max_accuracy_drop is None:
            raise InputError("--auto-exclude needs a gate to pass: add --max-accuracy-drop POINTS and --eval DATA.npz")
        if self.samples is not None and self.samples < 1:
            raise InputError(f"--calib-samples {self.samples}: give a positive number")

    def for_target(self, preset: Preset) -> "QuantizeOptions":
        """These options with the target-dependent choices made.

        x86 multiplies u8 x s8, so activations are uint8 there and int8 elsewhere (ARM sdot, CUDA
        dp4a). Without VNNI, x86 sums pairs of u8 x s8 products in saturating int16 (vpmaddubsw),
        which ONNX Runtime's int8 kernels do; 7-bit weights keep those sums in range.
        """
        x86 = preset.family is Family.X86
        activations = self.activations or (ActivationType.UINT8 if x86 else ActivationType.INT8)
        reduce_range = self.reduce_range if self.reduce_range is not None else x86 and "vnni" not in preset.int8_isa
        return dataclasses.replace(self, activations=activations, reduce_range=reduce_range)

    def to_json(self) -> dict:
        return {
            **self.observers.to_json(),
            "samples": self.samples,
            "seed": self.seed,
            "activations": self.activations.value if self.activations else None,
            "weights": f"int8 symmetric per output channel, {'[-63, 63]' if self.reduce_range else '[-127, 127]'}",
            "exclude": list(self.exclude),
            "keep_float": sorted(k.value for k in self.keep_float),
            "max_accuracy_drop": self.max_accuracy_drop,
            "auto_exclude": self.auto_exclude,
        }


# The raw settings that the command line and kiln.toml share, by name, with their defaults.
RAW_DEFAULTS: dict[str, Any] = {
    "calib_method": "entropy", "percentile": 99.99, "calib_samples": None, "calib_seed": 0, "image_spec": None,
    "exclude": (), "keep_float": "", "eval": None, "max_accuracy_drop": None, "auto_exclude": False,
    "cache_dir": DEFAULT_DIR,
}


def quantize_options(raw: Mapping[str, Any], progress_bar: bool = False) -> QuantizeOptions:
    """Typed QuantizeOptions from raw settings named as in RAW_DEFAULTS (missing ones take the default)."""
    from kiln.calibration.observers import CalibMethod

    values = {**RAW_DEFAULTS, **raw}
    keep_float = values["keep_float"]
    keep = [part.strip() for part in (keep_float.split(",") if isinstance(keep_float, str) else keep_float)
            if part.strip()]
    if any(part not in {k.value for k in KeepFloat} for part in keep):
        raise InputError(f"--keep-float {keep_float!r}: use first, last or first,last")
    try:
        method = CalibMethod(values["calib_method"])
    except ValueError:
        raise InputError(f"calibration method {values['calib_method']!r}: use "
                         f"{', '.join(m.value for m in CalibMethod)}") from None
    return QuantizeOptions(
        observers=ObserverSettings(method, values["percentile"]),
        samples=values["calib_samples"], seed=values["calib_seed"],
        images=ImageSpec.from_toml(Path(values["image_spec"])) if values["image_spec"] else None,
        exclude=tuple(values["exclude"]), keep_float=frozenset(KeepFloat(k) for k in keep),
        eval=Path(values["eval"]) if values["eval"] else None, max_accuracy_drop=values["max_accuracy_drop"],
        auto_exclude=values["auto_exclude"], cache_dir=str(values["cache_dir"]), progress_bar=progress_bar)
