"""Raster decoding: JPEG, PNG, TIFF and GIF through Pillow, to a grayscale image in [0, 1]."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pneumoscan.imaging.errors import PILLOW_DAMAGED, Rejected, codec
from pneumoscan.imaging.image import DecodedImage, resize, scaled_gray, stretch, too_large
from pneumoscan.imaging.kinds import GIF, JPEG, PNG, TIFF

_PILLOW_FORMAT = {JPEG: "JPEG", PNG: "PNG", TIFF: "TIFF", GIF: "GIF"}
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def decode_raster(data: bytes, kind: str, size: tuple[int, int] | None, max_pixels: int) -> DecodedImage:
    """Decode a raster file of ``kind`` (as ``detect_kind`` named it) to ``size``; None keeps its own size.

    One frame only: an animated GIF or a multi-page TIFF is rejected. A JPEG is decoded at reduced
    scale straight from its DCT when ``size`` allows.
    """
    try:
        with codec(kind, PILLOW_DAMAGED):
            # Only the plugin of the detected format parses the bytes; open() reads the header alone.
            image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[kind]])
    except Image.DecompressionBombError as exc:
        raise Rejected(f"image too large: {exc}") from None
    if error := too_large(image.width, image.height, max_pixels):
        raise error
    with codec(kind, PILLOW_DAMAGED):
        frames = int(getattr(image, "n_frames", 1))  # TIFF and GIF seek through the file to count
    if frames > 1:
        what = "animated GIF" if kind == GIF else f"multi-page {kind.upper()}"
        raise Rejected(f"{what} with {frames} frames: not a single radiograph")
    with codec(kind, PILLOW_DAMAGED):
        if kind == JPEG and size is not None:
            # Decode at reduced scale straight from the DCT; never smaller than the target.
            image.draft("L", (size[1], size[0]))
        image.load()
    if image.mode in _DEEP_MODES:
        with codec(kind, PILLOW_DAMAGED):
            values = np.asarray(image, dtype=np.float64)
        # 16-bit and 32-bit gray keep their values, and have no window to apply: stretch the stored range.
        return DecodedImage(resize(stretch(values, robust=False), size), kind)
    with codec(kind, PILLOW_DAMAGED):
        # Palette, CMYK, RGB(A), YCbCr, bilevel: Pillow's luma.
        gray = image if image.mode == "L" else image.convert("L")
    return DecodedImage(scaled_gray(gray, size), kind)
