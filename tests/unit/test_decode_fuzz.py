"""Property: whatever the bytes, decode returns a valid image or rejects them; damage is never an internal error."""

from __future__ import annotations

import io

import helpers
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support import dicoms, xrays

from pneumoscan.imaging import DecodedImage, Rejected, decode

SOURCE = xrays.PNEUMONIA_IMAGES[1]
SMALL = xrays.gray(SOURCE)[80:144, 80:144]  # 64x64 real pixels keep each example fast


def _seeds() -> list[bytes]:
    """Valid files of every kind the decoder reads, to be mutated."""
    def pillow(image: Image.Image, fmt: str) -> bytes:
        out = io.BytesIO()
        image.save(out, format=fmt)
        return out.getvalue()

    small = Image.fromarray(SMALL)
    seeds = [pillow(small, "JPEG"), pillow(small, "PNG"), pillow(small, "GIF"), pillow(small, "TIFF"),
             pillow(Image.fromarray(SMALL.astype(np.uint16) * 257), "PNG")]
    stored = SMALL.astype(np.uint16) * 16
    for syntax in ("explicit-le", "explicit-be", "deflated", "rle", "jpeg-lossless-sv1", "jpeg-extended",
                   "jpeg-ls-lossless", "j2k-lossless"):
        seeds.append(dicoms.dicom_bytes(SOURCE, stored=stored, syntax=syntax, **dicoms.IDENTITY_WINDOW_12))
    seeds.append(dicoms.dicom_bytes(SOURCE, stored=stored, syntax="implicit-le", preamble=False, file_meta=False))
    return seeds


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid file with a few bytes overwritten, a run inserted or removed, and maybe truncated."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data) - 1))
        del data[at:at + draw(st.integers(1, 64))]
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=1024), mutated()))
def test_damaged_bytes_decode_to_an_image_or_are_rejected(data: bytes) -> None:
    # Nothing but Rejected may escape: an InternalError here means a codec raised a type that decode
    # does not count as damage (so the file would be retried forever), or our own code broke on the bytes.
    try:
        image = decode(data, (32, 32), helpers.policy(max_pixels=4_000_000))
    except Rejected as exc:
        assert exc.reason and "\n" not in exc.reason and "Traceback" not in exc.reason
        return
    assert isinstance(image, DecodedImage)
    assert image.pixels.shape == (32, 32) and image.pixels.dtype == np.float32
    assert np.isfinite(image.pixels).all()
    assert float(image.pixels.min()) >= 0.0 and float(image.pixels.max()) <= 1.0
