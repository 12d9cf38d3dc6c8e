"""JPEG 2000 DICOM decoded at a reduced resolution level for the model: the same picture, far less work."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
from PIL import Image
from support import dicoms, xrays

from pneumoscan.imaging import DICOM, Rejected, decode
from pneumoscan.imaging.dicom import reduced
from pneumoscan.imaging.dicom.triage import check_codestream

SOURCE = xrays.PNEUMONIA_IMAGES[0]
MODEL = (224, 224)
ANY = frozenset[str]()


def _upscaled(source: Path, width: int, height: int, bits: int = 12) -> np.ndarray:
    """A real fixture X-ray upscaled (bicubic), as stored values of ``bits`` bits."""
    with Image.open(source) as image:
        big = np.asarray(image.convert("L").resize((width, height), Image.Resampling.BICUBIC), np.float64)
    if bits == 8:
        return big.astype(np.uint8)
    return np.round(big * 4095.0 / 255.0).astype(np.uint16)


@pytest.fixture(scope="module")
def large() -> bytes:
    """2000x1700, 16 bits allocated and 12 stored, JPEG 2000 lossless, identity window."""
    return dicoms.dicom_bytes(SOURCE, syntax="j2k-lossless", stored=_upscaled(SOURCE, 2000, 1700),
                               **dicoms.IDENTITY_WINDOW_12)


class _Calls:
    full = 0  # times pydicom decoded the whole pixel data


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Calls]]:
    """Counts the reads of pydicom's ``pixel_array``: the full decode, which the reduced one avoids."""
    from pydicom.dataset import Dataset

    original = Dataset.pixel_array

    def counted(ds: Any) -> np.ndarray:
        _Calls.full += 1
        return original.fget(ds)  # type: ignore[attr-defined,no-any-return]

    _Calls.full = 0
    monkeypatch.setattr(Dataset, "pixel_array", property(counted))
    yield _Calls


def _full(data: bytes, size: tuple[int, int] | None, **policy: Any) -> np.ndarray:
    """The decode as it was before the reduced path: pydicom's full decode, then the resize."""
    return decode(data, size, helpers.policy(reduced=False, **policy)).pixels


def _frame(data: bytes) -> tuple[Any, bytes]:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    frame = check_codestream(ds, 10**9)
    assert frame is not None
    return ds, frame


def test_a_large_file_decodes_reduced_and_shows_the_full_decodes_picture(
        large: bytes, calls: type[_Calls]) -> None:
    header = reduced.j2k_header(_frame(large)[1])
    assert header is not None and (header.width, header.height, header.precision) == (2000, 1700, 12)
    assert reduced.j2k_reduction(header, MODEL) == 2  # 500x425 covers 224x224; 250x213 would not

    image = decode(large, MODEL, helpers.POLICY)
    assert calls.full == 0, "the reduced path was not taken"
    assert image.kind == DICOM and image.pixels.shape == MODEL and image.pixels.dtype == np.float32
    assert image.notes == ()

    full = _full(large, MODEL)
    assert calls.full == 1
    error = np.abs(image.pixels.astype(np.float64) - full)
    # Measured before the blur was evened out (see the test below): mean 0.0005, max 0.019 (Pillow 13,
    # OpenJPEG 2.5.4); 0.0045 and 0.10 without the
    # alignment of the reduced image on the full one (``_reduced_box``).
    assert error.mean() < 0.005, error.mean()
    assert error.max() < 0.1, error.max()


@pytest.mark.parametrize("syntax", ["j2k-lossless", "j2k"])
def test_the_reduced_decode_is_given_the_full_decodes_blur(syntax: str) -> None:
    """The wavelet's low-pass (5/3 lossless: a little sharp; 9/7 lossy: a little smooth) is evened out
    by a 3-tap filter of the computed weight: closer to the full decode than without it."""
    data = dicoms.dicom_bytes(SOURCE, syntax=syntax, stored=_upscaled(SOURCE, 2000, 1700),
                               **dicoms.IDENTITY_WINDOW_12)
    header = reduced.j2k_header(_frame(data)[1])
    assert header is not None and header.reversible == (syntax == "j2k-lossless")
    weight = reduced.spread_weight(header, 2)
    assert (weight > 0) if header.reversible else (weight < 0)  # 0.078 and -0.072 at two levels
    full = _full(data, MODEL)
    evened = np.abs(decode(data, MODEL, helpers.POLICY).pixels - full).mean()
    plain_way = [reduced.JPEG2000Levels(even_blur=False)]
    plain = np.abs(decode(data, MODEL, helpers.POLICY, strategies=plain_way).pixels - full).mean()
    assert evened < 0.8 * plain, (evened, plain)


def test_high_throughput_jpeg_2000_decodes_reduced_too(calls: type[_Calls]) -> None:
    """HTJ2K (OpenJPH's encoder; Pillow's OpenJPEG decodes it) takes the same reduced path, losslessly stored."""
    stored = _upscaled(SOURCE, 2000, 1700)
    data = dicoms.dicom_bytes(SOURCE, syntax="htj2k-lossless", stored=stored, **dicoms.IDENTITY_WINDOW_12)
    ds, frame = _frame(data)
    assert str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.201"  # HTJ2K lossless
    header = reduced.j2k_header(frame)
    assert header is not None and reduced.j2k_reduction(header, MODEL) == 2

    image = decode(data, MODEL, helpers.POLICY)
    assert calls.full == 0, "the reduced path was not taken"
    assert image.pixels.shape == MODEL and image.notes == ()
    full = _full(data, MODEL)
    np.testing.assert_array_equal(ds.pixel_array, stored)  # lossless, as pydicom decodes it
    error = np.abs(image.pixels.astype(np.float64) - full)
    assert error.mean() < 0.005, error.mean()  # measured: mean 0.0005, max 0.019, as plain JPEG 2000
    assert error.max() < 0.1, error.max()


def test_size_none_still_decodes_the_whole_image(large: bytes, calls: type[_Calls]) -> None:
    image = decode(large, None, helpers.POLICY)
    assert calls.full == 1 and image.pixels.shape == (1700, 2000)
    np.testing.assert_array_equal(image.pixels, _full(large, None))


def test_the_size_limits_still_hold(large: bytes) -> None:
    with pytest.raises(Rejected, match="too large: 2000x1700"):
        decode(large, MODEL, helpers.policy(max_pixels=1000 * 1000))


# Each variant stores the same picture differently; all must show it, reduced as in full.
VARIANTS: dict[str, dict[str, Any]] = {
    "mono2": dict(dicoms.IDENTITY_WINDOW_12),
    "mono1": {"photometric": "MONOCHROME1", **dicoms.IDENTITY_WINDOW_12},
    # m = 0.5 v - 1000, and a window in modality units that gives v / 4095 (as in test_dicom).
    "rescaled": {"RescaleSlope": 0.5, "RescaleIntercept": -1000, "WindowCenter": 24.25, "WindowWidth": 2048.5},
    # Signed stored values v - 2048, brought back by the intercept.
    "signed": {"signed": True, "PixelRepresentation": 1, "RescaleSlope": 1, "RescaleIntercept": 2048,
               **dicoms.IDENTITY_WINDOW_12},
    "stretched": {},  # no window: the robust stretch
}


def _variant(name: str) -> bytes:
    options = dict(VARIANTS[name])
    stored = _upscaled(SOURCE, 896, 1000)  # 224x250 at two levels down
    if options.pop("signed", False):
        stored = (stored.astype(np.int16) - 2048).view(np.uint16)
    elif options.get("photometric") == "MONOCHROME1":
        stored = 4095 - stored
    return dicoms.dicom_bytes(SOURCE, syntax="j2k-lossless", stored=stored, **options)


@pytest.fixture(scope="module")
def variants() -> dict[str, bytes]:
    return {name: _variant(name) for name in VARIANTS}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_monochrome1_rescale_window_and_sign_apply_as_before(
        name: str, variants: dict[str, bytes], calls: type[_Calls]) -> None:
    image = decode(variants[name], MODEL, helpers.POLICY).pixels
    assert calls.full == 0, "the reduced path was not taken"
    if name != "stretched":  # the same picture as the plain MONOCHROME2 file, reduced too
        # Up to the rounding of the integer (5/3) wavelet's low bands, which inverting the stored
        # values changes by a few units in 4095 (measured: 0.0008 at most).
        np.testing.assert_allclose(image, decode(variants["mono2"], MODEL, helpers.POLICY).pixels, atol=0.002)
    error = np.abs(image.astype(np.float64) - _full(variants[name], MODEL))
    assert error.mean() < 0.005, error.mean()  # measured 0.0012 (0.0019 stretched)
    # Dark lungs stay dark: MONOCHROME1 was inverted, not shown as a negative.
    assert np.corrcoef(image.ravel(), xrays.gray(SOURCE).ravel())[0, 1] > 0.95


def test_eight_bit(calls: type[_Calls]) -> None:
    data = dicoms.dicom_bytes(SOURCE, syntax="j2k-lossless", bits=8, stored=_upscaled(SOURCE, 896, 1000, bits=8),
                               **dicoms.IDENTITY_WINDOW_8)
    image = decode(data, MODEL, helpers.POLICY).pixels
    assert calls.full == 0, "the reduced path was not taken"
    error = np.abs(image.astype(np.float64) - _full(data, MODEL))
    assert error.mean() < 0.005, error.mean()  # measured 0.0025


def test_a_real_chest_cr_of_odd_size_decodes_reduced(calls: type[_Calls]) -> None:
    """RG1_J2KR (pydicom-data): 1841x1955, 15 bits stored, MONOCHROME1. 1841 is 461 at a quarter, not 460."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_J2KR.dcm")
    assert path is not None, "RG1_J2KR.dcm missing: install the dev extra (pydicom-data)"
    data = Path(path).read_bytes()
    image = decode(data, MODEL, helpers.POLICY).pixels
    assert calls.full == 0, "the reduced path was not taken"
    error = np.abs(image.astype(np.float64) - _full(data, MODEL))
    assert error.mean() < 0.005, error.mean()  # measured 0.0020


@pytest.mark.parametrize("name", ["large", "signed", "8-bit", "693_J2KR.dcm", "JPEG2000.dcm"])
def test_the_stored_values_are_pydicoms(name: str, large: bytes, variants: dict[str, bytes]) -> None:
    """At full resolution, Pillow's samples brought back to stored values equal pydicom's, dtype included."""
    if name.endswith(".dcm"):  # a signed 14-bit codestream in 16 bits stored; a signed 16-bit one
        from pydicom.data import get_testdata_file

        data = Path(str(get_testdata_file(name))).read_bytes()
    else:
        data = {"large": large, "signed": variants["signed"],
                "8-bit": dicoms.dicom_bytes(SOURCE, syntax="j2k-lossless", bits=8)}[name]
    ds, frame = _frame(data)
    header = reduced.j2k_header(frame)
    assert header is not None
    expected = ds.pixel_array
    values = reduced.j2k_decode(frame, header, 0, expected.dtype)
    assert values.dtype == expected.dtype
    np.testing.assert_array_equal(values, expected)


def _with_frame(data: bytes, frame: bytes) -> bytes:
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = encapsulate([frame])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.05])
def test_a_truncated_codestream_is_rejected(keep: float, large: bytes) -> None:
    frame = _frame(large)[1]
    damaged = _with_frame(large, frame[:int(len(frame) * keep)])
    with pytest.raises(Rejected, match="corrupt or truncated DICOM"):
        decode(damaged, MODEL, helpers.POLICY)


def test_a_codestream_without_its_header_is_rejected(large: bytes) -> None:
    frame = _frame(large)[1]
    with pytest.raises(Rejected, match="corrupt or truncated DICOM"):
        decode(_with_frame(large, frame[:2] + frame[60:]), MODEL, helpers.POLICY)


def test_any_failure_of_the_reduced_path_falls_back_to_the_full_decode(
        variants: dict[str, bytes], calls: type[_Calls]) -> None:
    expected = _full(variants["mono1"], MODEL)
    calls.full = 0

    class Broken(reduced.JPEG2000Levels):
        def decode(self, *args: Any) -> np.ndarray:
            raise TypeError("a bug, or a Pillow that reads this codestream otherwise")

    ways = [Broken(), reduced.JPEGScaled(), reduced.BlockSums()]
    np.testing.assert_array_equal(decode(variants["mono1"], MODEL, helpers.POLICY, strategies=ways).pixels, expected)
    assert calls.full == 1


def test_small_images_and_other_syntaxes_take_the_full_decode(calls: type[_Calls]) -> None:
    # 224x224 for the model: no resolution level to drop.
    decode(dicoms.dicom_bytes(SOURCE, syntax="j2k-lossless"), MODEL, helpers.POLICY)
    assert calls.full == 1
    decode(dicoms.dicom_bytes(SOURCE, syntax="jpeg-ls-lossless"), (112, 112), helpers.POLICY)
    assert calls.full == 2


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_jpeg_baseline_decodes_with_dct_scaling_close_to_the_full_decode(
        photometric: str, calls: type[_Calls]) -> None:
    data = dicoms.dicom_bytes(SOURCE, syntax="jpeg-baseline", bits=8, photometric=photometric,
                               stored=_upscaled(SOURCE, 2000, 1700, bits=8))
    image = decode(data, MODEL, helpers.POLICY)
    assert calls.full == 0, "the DCT-scaled path was not taken"
    assert image.pixels.shape == MODEL
    full = _full(data, MODEL)
    assert calls.full == 1
    error = np.abs(image.pixels.astype(np.float64) - full)
    # Measured: mean 0.0024, max 0.013; 15 ms against 58 ms for the full decode (DCT scaling 1/4).
    assert error.mean() < 0.01, error.mean()
    assert error.max() < 0.1, error.max()
    # Damage in the scan data still ends as a rejection, never an internal error.
    with pytest.raises(Rejected):
        decode(data[: len(data) // 3], MODEL, helpers.POLICY)
