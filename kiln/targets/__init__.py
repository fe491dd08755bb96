"""Target presets and host detection."""

from kiln.targets.presets import PRESETS, Family, Preset, resolve

__all__ = ["PRESETS", "Family", "Preset", "resolve"]
