"""The decoded image and the array steps every format shares: the size limit, the stretch, the resize."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pneumoscan.domain import DicomMeta
from pneumoscan.imaging.errors import Rejected


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: ``pixels`` is float32 (height, width) in [0, 1], 0 black, 1 white."""

    pixels: np.ndarray
    kind: str
    dicom: DicomMeta | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def too_large(width: int, height: int, max_pixels: int) -> Rejected | None:
    """The rejection for an image of ``width`` x ``height`` over ``max_pixels``, else None."""
    if width * height > max_pixels:
        return Rejected(f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels}")
    return None


def resize(pixels: np.ndarray, size: tuple[int, int] | None,
           box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Resample to ``size``; ``box`` (left, upper, right, lower) is the picture's extent in ``pixels``."""
    if size is None or (pixels.shape == size and box is None):
        return pixels.astype(np.float32, copy=False)
    height, width = size
    image = Image.fromarray(pixels.astype(np.float32, copy=False), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, box=box), dtype=np.float32)


def scaled_gray(image: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """An 8-bit gray (mode L) image resampled to ``size`` (None: as it is) and scaled to [0, 1].

    Resampling is linear, so scaling after it gives the pixels of scaling first (within float32 rounding,
    1.2e-7) for a fraction of the work on a large image.
    """
    if size is not None and image.size != (size[1], size[0]):
        image = image.convert("F").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def stretch(values: np.ndarray, *, robust: bool) -> np.ndarray:
    """Map values linearly onto [0, 1]: min-max, or the 0.5th-99.5th percentiles when ``robust``."""
    if robust:
        step = max(1, int(np.sqrt(values.size / 1_000_000)))  # about a million samples is plenty
        low, high = np.percentile(values[::step, ::step], (0.5, 99.5))
        if high <= low:
            low, high = float(values.min()), float(values.max())
    else:
        low, high = float(values.min()), float(values.max())
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        raise Rejected("blank image: all pixels have the same value")
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)

