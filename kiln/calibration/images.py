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

from kiln.errors import InputError, SettingError
from kiln.settings import as_keys, from_raw, keys, setting

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})


class Layout(str, enum.Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


class Channels(str, enum.Enum):
    RGB = "RGB"
    BGR = "BGR"
    L = "L"


def _crop(value) -> tuple[int, int]:
    height, width = (value, value) if isinstance(value, int) else value
    return int(height), int(width)


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ImageSpec:
    """The spec's keys are these fields' names; the module docstring shows them."""

    resize: int | None = setting(None, key="resize", parse=int)
    crop: tuple[int, int] | None = setting(None, key="crop", parse=_crop)
    scale: float = setting(255.0, key="scale", parse=float)
    mean: tuple[float, ...] = setting((0.0,), key="mean", parse=_floats)
    std: tuple[float, ...] = setting((1.0,), key="std", parse=_floats)
    layout: Layout = setting(Layout.NCHW, key="layout", parse=Layout)
    channels: Channels = setting(Channels.RGB, key="channels", parse=Channels)

    def __post_init__(self):
        if any(s == 0 for s in self.std) or self.scale == 0:
            raise SettingError(ImageSpec, "{std} and {scale} must be non-zero")

    @classmethod
    def from_toml(cls, path: Path) -> "ImageSpec":
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"image spec {path}: {exc}") from exc
        known = keys(cls)
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise InputError(f"image spec {path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return from_raw(cls, table)
        except SettingError as exc:
            raise InputError(f"image spec {path}: {as_keys(exc)}; see `kiln quantize --help` for the format") from exc

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
    # PIL raises ValueError and SyntaxError too for a corrupt file, and MemoryError when a chunk's length is
    # corrupt (it reads a chunk whole)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise InputError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    except Image.DecompressionBombError as exc:  # a header claiming billions of pixels
        raise InputError(f"{path}: {exc} Check the file, or resize it below that limit") from exc
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if spec.channels is Channels.BGR:
        pixels = pixels[:, :, ::-1]
    pixels = (pixels / spec.scale - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1) if spec.layout is Layout.NCHW else pixels)
