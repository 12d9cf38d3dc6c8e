"""Heatmaps: the one Grad-CAM overlay and the one caption, for the review pages, `explain` and the DICOM capture.

TensorFlow loads only when a heatmap is drawn (``render_overlay``); importing this module costs NumPy alone.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pneumoscan.domain import Label, label_at

if TYPE_CHECKING:
    from pneumoscan.config import DecodePolicy
    from pneumoscan.models.bundle import ModelBundle

DISPLAY_SIDE = 1024  # longest side of a picture shown to a person (review pages, Secondary Capture)
_CAPTION_COLOUR = (255, 255, 255)
_BAND_COLOUR = (0, 0, 0)


@dataclass(frozen=True)
class Heatmap:
    """A model heatmap drawn over an image: RGB uint8 pixels with the caption burnt in, and what it shows."""

    rgb: np.ndarray  # (height, width, 3) uint8, caption included
    caption: str
    probability: float  # the model's calibrated P(pneumonia) for the image, as the pipeline stores it
    label: Label  # at the threshold the caller passed (the site operating point), else the card's
    model_version: str


def caption(model_version: str, probability: float) -> str:
    """The caption every heatmap carries, so nobody mistakes it for the image or for a finding.

    It holds no label: the label depends on the site's operating point, which may be refitted after
    the picture was drawn and cached; the probability does not.
    """
    return f"MODEL HEATMAP (Grad-CAM), {model_version}: P(pneumonia) {probability:.2f}; not for diagnosis"


def render_overlay(bundle: ModelBundle, model_input: np.ndarray, *, display: np.ndarray | None = None,
                   threshold: float | None = None) -> Heatmap:
    """The bundle's Grad-CAM heatmap of ``model_input`` (a (size, size) image in [0, 1]), drawn over ``display``.

    ``display`` is the gray [0, 1] picture to draw on (any size; the heatmap is resized to it); None draws on
    the model input itself. ``threshold`` decides the label (the site operating point); None takes the card's.
    """
    from pneumoscan.models.explain import overlay

    batch = np.asarray(model_input, dtype=np.float32)[None]
    probability = float(bundle.predict(batch)[0])
    heatmap = bundle.explain(batch)[0]
    text = caption(bundle.version, probability)
    picture = overlay(batch[0] if display is None else display, heatmap)
    return Heatmap(rgb=draw_caption(picture, text), caption=text, probability=probability,
                   label=label_at(probability, bundle.threshold if threshold is None else threshold),
                   model_version=bundle.version)


def render_file(bundle: ModelBundle, data: bytes, policy: DecodePolicy, *, display_side: int | None = DISPLAY_SIDE,
                threshold: float | None = None) -> Heatmap:
    """The heatmap of a file's bytes: decoded for the model and, unless ``display_side`` is None, for display
    at its stored size scaled down to fit ``display_side``. Decoding errors (ImagingError) propagate."""
    from pneumoscan.imaging import decode

    model_input = decode(data, (bundle.input_size, bundle.input_size), policy).pixels
    display = None if display_side is None else fit_within(decode(data, None, policy).pixels, display_side)
    return render_overlay(bundle, model_input, display=display, threshold=threshold)


def fit_within(pixels: np.ndarray, side: int) -> np.ndarray:
    """A gray [0, 1] image scaled down (bilinear) so that its longest side is at most ``side``."""
    height, width = pixels.shape
    scale = min(1.0, side / max(height, width))
    if scale >= 1.0:
        return pixels
    from PIL import Image

    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def draw_caption(picture: np.ndarray, text: str) -> np.ndarray:
    """``picture`` (RGB uint8) with ``text`` in white on a black band at its top, wrapped to its width."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.ascontiguousarray(picture))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    line_height = int(font.getbbox("Ag")[3]) + 2
    lines = _wrap(text, image.width - 8, lambda line: draw.textlength(line, font=font))
    shown = lines[:max(1, (image.height - 4) // line_height)]  # a thumbnail keeps what fits
    draw.rectangle((0, 0, image.width, 4 + line_height * len(shown)), fill=_BAND_COLOUR)
    for n, line in enumerate(shown):
        draw.text((4, 2 + line_height * n), line, fill=_CAPTION_COLOUR, font=font)
    return np.asarray(image)


def _wrap(text: str, width: float, measure: Callable[[str], float]) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and measure(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of a gray [0, 1] image or an RGB uint8 one."""
    from PIL import Image

    if pixels.dtype != np.uint8:
        pixels = (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=3)
    return out.getvalue()


def heatmap_png(heatmap: Heatmap) -> bytes:
    """The heatmap as a PNG file's bytes (what the review pages serve and `explain` writes)."""
    return png_bytes(heatmap.rgb)
