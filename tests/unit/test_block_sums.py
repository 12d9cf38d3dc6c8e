"""Large uncompressed DICOM summed over k x k blocks, their means windowed: the same picture, a quarter of the work."""

from __future__ import annotations

import io
from typing import Any

import helpers
import numpy as np
import pytest
from PIL import Image
from support import dicoms, xrays

from pneumoscan.imaging import decode
from pneumoscan.imaging.dicom import pixels, reduced

SOURCE = xrays.PNEUMONIA_IMAGES[0]
MODEL = (224, 224)
CLIPPING = {"WindowCenter": 1800, "WindowWidth": 2400}  # shows stored 600 to 3000: the rest saturates


def _grainy(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A real fixture X-ray upscaled to 12 bits with grain (sd 48 stored values), as a radiograph holds."""
    with Image.open(SOURCE) as image:
        big = np.asarray(image.convert("L").resize((width, height), Image.Resampling.BICUBIC), np.float64)
    noisy = big * 4095.0 / 255.0 + np.random.default_rng(seed).normal(0.0, 48.0, big.shape)
    return np.clip(np.rint(noisy), 0, 4095).astype(np.uint16)


class _Spy(reduced.BlockSums):
    """The block sums as the one way to decode smaller, noting whether each decode took them."""

    def __init__(self) -> None:
        self.taken: list[bool] = []

    def __call__(self, frame: reduced.Frame, size: tuple[int, int]) -> reduced.Reduced | None:
        result = super().__call__(frame, size)
        self.taken.append(result is not None)
        return result


def _presentation_lut(p_values: np.ndarray) -> Any:
    """A Presentation LUT Sequence item of 16-bit P-values for ``p_values`` on [0, 1]."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.add_new("LUTDescriptor", "US", [len(p_values), 0, 16])
    item.add_new("LUTData", "US", [int(v) for v in np.rint(p_values * 65535)])
    return item


@pytest.fixture
def spy() -> _Spy:
    return _Spy()


def _full(data: bytes) -> np.ndarray:
    return decode(data, MODEL, helpers.policy(reduced=False)).pixels.astype(np.float64)


@pytest.mark.parametrize(("width", "height"), [(2000, 1700), (2001, 1703)])
def test_a_large_windowed_file_decodes_from_block_sums_and_shows_the_full_decodes_picture(
        width: int, height: int, spy: _Spy) -> None:
    data = dicoms.dicom_bytes(SOURCE, stored=_grainy(width, height), **CLIPPING)
    image = decode(data, MODEL, helpers.POLICY, strategies=[spy])
    assert spy.taken == [True] and image.pixels.shape == MODEL and image.pixels.dtype == np.float32
    error = np.abs(image.pixels - _full(data))
    # Measured: mean 0.0009, max 0.011 (2000x1700); the odd size takes the box and padding of the
    # reduced decodes. Without the clip before the means, grain at the window's edges averaged what
    # the window hides: max |dp| 0.095 instead of 0.017 on 40 grainy test images (bench/j2k_reduce.py).
    assert error.mean() < 0.003, error.mean()
    assert error.max() < 0.03, error.max()


@pytest.mark.parametrize("window", [CLIPPING, {**CLIPPING, "VOILUTFunction": "LINEAR_EXACT"},
                                    dicoms.IDENTITY_WINDOW_12])
@pytest.mark.parametrize("rescale", [{}, {"RescaleSlope": 0.5, "RescaleIntercept": -1024},
                                     {"RescaleSlope": -2.0, "RescaleIntercept": 6000}])
def test_the_window_of_the_means_is_the_mean_of_the_window_within_one_stored_step(
        window: dict[str, Any], rescale: dict[str, Any]) -> None:
    """The heart of it, before any resize: each 2x2 block's windowed mean against the mean of its windowed pixels."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicoms.dicom_bytes(SOURCE, stored=_grainy(1344, 1344), **window, **rescale)))
    array = ds.pixel_array
    exact_pixels, _ = pixels.apply_voi(array, ds)  # first: the block sums clip ``array`` in place
    blocked = reduced.block_sums(ds, array, MODEL)
    assert blocked is not None and blocked.box is None and blocked.summed == 4  # k = 2 divides both sides: no box
    sums = blocked.values
    assert sums.shape == (672, 672) and sums.dtype.kind in "iu"  # integers: the window still goes through a table
    approx, _ = pixels.apply_voi(sums, ds, 4)
    exact = exact_pixels.astype(np.float64).reshape(672, 2, 672, 2).mean(axis=(1, 3))
    slope = abs(float(rescale.get("RescaleSlope", 1.0)))
    step = slope / (float(window["WindowWidth"]) - (0.0 if window.get("VOILUTFunction") == "LINEAR_EXACT" else 1.0))
    error = np.abs(approx - exact)
    assert error.max() <= step + 1e-6, (error.max(), step)
    assert np.median(error) < 1e-6  # exact wherever the window does not clip inside the block


@pytest.mark.parametrize(("size", "k"), [((224, 224), 2), ((128, 128), 3), ((112, 100), 4)])
def test_each_sum_is_its_whole_block_of_the_clipped_values_at_every_block_size(size: tuple[int, int], k: int) -> None:
    """Sums of k x k blocks of a 1345 x 1351 frame (neither side a multiple of k), against numpy's own sum."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicoms.dicom_bytes(SOURCE, stored=_grainy(1351, 1345), **CLIPPING)))
    array = ds.pixel_array
    blocked = reduced.block_sums(ds, array, size)
    assert blocked is not None and blocked.summed == k * k
    sums, box = blocked.values, blocked.box
    assert array.min() >= 599 and array.max() <= 3001  # clipped in place, one stored value beyond the window
    rows, cols = 1345 // k, 1351 // k
    expected = array[:rows * k, :cols * k].astype(np.int64).reshape(rows, k, cols, k).sum(axis=(1, 3))
    assert sums.shape == (rows, cols) and np.array_equal(sums.astype(np.int64), expected)
    assert box == (0.0, 0.0, 1351 / k, 1345 / k)


@pytest.mark.parametrize("change", [
    {"VOILUTFunction": "SIGMOID"},  # a curve: the mean of the curve is not the curve of the mean
    {"WindowCenter": None},  # no window: a min-max of the image, which the means would move
    {"size": (600, 600)},  # 1700 is less than 3 x 600 (no block of 2 leaves three times the input)
    {"reduced": False},  # PNEUMOSCAN_REDUCED_DECODE=false
    {"WindowCenter": 9000, "WindowWidth": 100},  # the window shows nothing of the image
    {"PresentationLUTSequence": "sqrt"},  # a curve after the window, as the SIGMOID is one
])
def test_curves_minmax_small_images_the_setting_and_empty_windows_take_the_full_decode(
        change: dict[str, Any], spy: _Spy) -> None:
    options = {**CLIPPING, **{k: v for k, v in change.items() if k not in ("size", "reduced")}}
    options = {k: v for k, v in options.items() if v is not None}
    if options.get("PresentationLUTSequence") == "sqrt":
        options["PresentationLUTSequence"] = [_presentation_lut(np.sqrt(np.linspace(0.0, 1.0, 4096)))]
    if "WindowCenter" not in options:
        options.pop("WindowWidth", None)
    data = dicoms.dicom_bytes(SOURCE, stored=_grainy(2000, 1700), **options)
    size = change.get("size", MODEL)
    image = decode(data, size, helpers.policy(reduced=change.get("reduced", True)), strategies=[spy])
    assert not any(spy.taken)
    np.testing.assert_array_equal(image.pixels, decode(data, size, helpers.policy(reduced=False)).pixels)


def test_monochrome1_is_inverted_after_the_means(spy: _Spy) -> None:
    stored = _grainy(2000, 1700)
    data = dicoms.dicom_bytes(SOURCE, stored=stored, **CLIPPING)
    mono2 = decode(data, MODEL, helpers.POLICY, strategies=[spy]).pixels
    inverted = dicoms.dicom_bytes(SOURCE, stored=4095 - stored, photometric="MONOCHROME1",
                                   WindowCenter=4095 - 1800, WindowWidth=2400)
    mono1 = decode(inverted, MODEL, helpers.POLICY, strategies=[spy]).pixels
    assert spy.taken == [True, True]
    np.testing.assert_allclose(mono1, mono2, atol=2 / 2399)  # the window's half-pixel asymmetry, within a step
    assert np.corrcoef(mono1.ravel(), xrays.gray(SOURCE).ravel())[0, 1] > 0.95  # dark lungs stay dark
