"""Image preprocessing for calibration folders, declared in a small TOML spec.

    # spec.toml
    resize = 256            # shorter side, before cropping (omit to keep the size)
    crop = 224              # center crop, an int or [height, width]
    scale = 255.0           # pixel values are divided by this first
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    layout = "NCHW"         # or "NHWC"
    channels = "RGB"        # or "BGR", or "L" (grayscale, one channel)

Pillow decodes the images; it is imported only when a folder of images is used.
"""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from kiln.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})


class Layout(str, enum.Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


class Channels(str, enum.Enum):
    RGB = "RGB"
    BGR = "BGR"
    L = "L"


@dataclass(frozen=True)
class ImageSpec:
    resize: int | None = None
    crop: tuple[int, int] | None = None
    scale: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Layout = Layout.NCHW
    channels: Channels = Channels.RGB

    @classmethod
    def from_toml(cls, path: Path) -> "ImageSpec":
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InputError(f"image spec {path}: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise InputError(f"image spec {path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            crop = table.get("crop")
            spec = cls(
                resize=table.get("resize"),
                crop=(crop, crop) if isinstance(crop, int) else (tuple(crop) if crop else None),
                scale=float(table.get("scale", 255.0)),
                mean=tuple(float(v) for v in table.get("mean", (0.0,))),
                std=tuple(float(v) for v in table.get("std", (1.0,))),
                layout=Layout(table.get("layout", "NCHW")),
                channels=Channels(table.get("channels", "RGB")),
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"image spec {path}: {exc}; see `kiln quantize --help` for the format") from exc
        if any(s == 0 for s in spec.std) or spec.scale == 0:
            raise InputError(f"image spec {path}: std and scale must be non-zero")
        return spec

    def to_json(self) -> dict:
        return {f.name: (v.value if isinstance(v, enum.Enum) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}


def load_image(path: Path, spec: ImageSpec) -> np.ndarray:
    """One image as a float32 array in the spec's layout, without the batch axis."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if spec.channels is Channels.L else "RGB")
            if spec.resize:
                ratio = spec.resize / min(image.size)
                image = image.resize((round(image.width * ratio), round(image.height * ratio)), Image.BILINEAR)
            if spec.crop:
                height, width = spec.crop
                left, top = (image.width - width) // 2, (image.height - height) // 2
                if left < 0 or top < 0:
                    raise InputError(f"{path}: image {image.width}x{image.height} is smaller than crop "
                                     f"{width}x{height}; set resize in the image spec")
                image = image.crop((left, top, left + width, top + height))
            pixels = np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: cannot decode image ({exc})") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if spec.channels is Channels.BGR:
        pixels = pixels[:, :, ::-1]
    pixels = (pixels / spec.scale - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1) if spec.layout is Layout.NCHW else pixels)
