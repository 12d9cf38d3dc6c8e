"""8-bit raster images are resampled first and scaled to [0, 1] after (issue 30: less work per large JPEG).

Resampling is linear, so this must give the pixels of the old order (scale to [0, 1], then resample) within
float32 rounding. Held here on the real fixture radiographs, upscaled to a scanner's size as the throughput
bench's inputs are, for grayscale JPEG (decoded at reduced scale from the DCT) and colour PNG alike.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.config import Settings
from pneumoscan.imaging import decode

FIXTURES = Path(__file__).parents[1] / "fixtures" / "test_images"
SIZE = (224, 224)


def _real_images() -> list[Image.Image]:
    files = sorted(p for p in FIXTURES.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    assert len(files) == 20
    images = []
    for path in files[::4]:
        with Image.open(path) as opened:
            images.append(opened.convert("L").resize((2000, 1700), Image.Resampling.BICUBIC))
    return images


def _scale_then_resample(data: bytes, fmt: str) -> np.ndarray:
    """The order of operations before issue 30, written out with Pillow alone."""
    image = Image.open(io.BytesIO(data))
    if fmt == "JPEG":
        image.draft("L", (SIZE[1], SIZE[0]))
    values = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    resized = Image.fromarray(values, mode="F").resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_resampling_before_scaling_gives_the_same_pixels(tmp_path: Path, fmt: str) -> None:
    policy = Settings(data_dir=tmp_path, patient_salt="test").decode_policy
    for gray in _real_images():
        out = io.BytesIO()
        (gray if fmt == "JPEG" else gray.convert("RGB")).save(out, format=fmt, **({"quality": 90} if fmt == "JPEG"
                                                                                   else {}))
        data = out.getvalue()
        pixels = decode(data, SIZE, policy).pixels
        assert pixels.shape == SIZE and pixels.dtype == np.float32
        np.testing.assert_allclose(pixels, _scale_then_resample(data, fmt), rtol=0, atol=1e-6)
        assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_an_image_already_at_the_model_size_is_only_scaled(tmp_path: Path) -> None:
    policy = Settings(data_dir=tmp_path, patient_salt="test").decode_policy
    gray = _real_images()[0].resize((SIZE[1], SIZE[0]))
    out = io.BytesIO()
    gray.save(out, format="PNG")
    expected = np.asarray(gray, dtype=np.float32) / 255.0
    np.testing.assert_array_equal(decode(out.getvalue(), SIZE, policy).pixels, expected)
    np.testing.assert_array_equal(decode(out.getvalue(), None, policy).pixels, expected)
