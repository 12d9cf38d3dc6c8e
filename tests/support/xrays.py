"""The committed real chest X-rays (tests/fixtures/images) and their re-encodings as JPEG and PNG files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURE_IMAGES = Path(__file__).resolve().parents[1] / "fixtures" / "images"
NORMAL_IMAGES = sorted((FIXTURE_IMAGES / "NORMAL").glob("*.jpeg"))
PNEUMONIA_IMAGES = sorted((FIXTURE_IMAGES / "PNEUMONIA").glob("*.jpeg"))
ALL_IMAGES = NORMAL_IMAGES + PNEUMONIA_IMAGES


def gray(source: Path) -> np.ndarray:
    """A real fixture image as a (height, width) uint8 grayscale array."""
    with Image.open(source) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def jpeg_bytes(source: Path) -> bytes:
    """The original JPEG bytes of a fixture image."""
    return source.read_bytes()


def png_bytes(source: Path, mode: str = "L") -> bytes:
    """A real image re-encoded as PNG: ``mode`` "L" (8-bit), "RGB", or "I;16" (16-bit gray)."""
    pixels = gray(source)
    if mode == "L":
        image = Image.fromarray(pixels, mode="L")
    elif mode == "RGB":
        image = Image.fromarray(np.stack([pixels] * 3, axis=-1), mode="RGB")
    elif mode == "I;16":
        image = Image.fromarray(pixels.astype(np.uint16) * 257)
        assert image.mode == "I;16", image.mode
    else:
        raise ValueError(mode)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def twelve_bit(source: Path) -> np.ndarray:
    """A real image scaled from 8 to 12 bits (0..4095) as uint16: the stored values of a MONOCHROME2 DICOM."""
    return np.round(gray(source).astype(np.float64) * 4095.0 / 255.0).astype(np.uint16)


def write_png(source: Path, dest: Path, mode: str = "L") -> Path:
    """Write ``source`` re-encoded as PNG to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(png_bytes(source, mode))
    return dest


def write_jpeg(source: Path, dest: Path) -> Path:
    """Copy a fixture JPEG's bytes to ``dest`` (permissions not copied: the copy is writable)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(jpeg_bytes(source))
    return dest


def distinct_pngs(folder: Path, count: int, *, prefix: str = "x", start: int = 0) -> list[Path]:
    """``count`` PNGs of real chest X-rays named prefix-NNNN.png, each with different pixels (one flipped).

    Contents depend only on the number (``start`` up to ``start + count``), so calls with
    overlapping numbers make the same contents.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sources = [gray(source) for source in ALL_IMAGES]
    paths = []
    for i in range(start, start + count):
        pixels = sources[i % len(sources)].copy()
        pixels.flat[i // len(sources)] ^= 0xFF
        path = folder / f"{prefix}-{i:04d}.png"
        Image.fromarray(pixels, mode="L").save(path, format="PNG")
        paths.append(path)
    return paths
