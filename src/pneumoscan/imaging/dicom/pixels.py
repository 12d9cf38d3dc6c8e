"""DICOM pixel transforms, one standard step per function, pydicom-style ``(arr, ds)``: stored values to [0, 1].

The grayscale pipeline of PS3.4 N.2.1: the Modality LUT (PS3.3 C.11.1), the VOI LUT (C.11.2), then the
Presentation LUT with the polarity of the Photometric Interpretation (C.11.4, C.7.6.1, C.7.6.3.1.2); colour
images go to luma instead (C.7.6.3.1.2, C.7.9).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from pneumoscan.imaging.dicom.read import photometric
from pneumoscan.imaging.errors import PYDICOM_DAMAGED, Rejected, codec
from pneumoscan.imaging.image import stretch
from pneumoscan.imaging.kinds import DICOM

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


class Window(NamedTuple):
    """Window Center (0028,1050), Window Width (0028,1051) and VOI LUT Function (0028,1056)."""

    center: float
    width: float
    function: str


def pointwise(array: np.ndarray, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``function(array)`` for an element-wise ``function``, value for value the same, computed cheaply.

    Integer samples whose range is small beside the image (12 to 16-bit X-rays: a few thousand values
    over millions of pixels) are mapped once per value in a table and then looked up, one pass instead
    of several passes of float arithmetic over the whole image.
    """
    # np.take with mode="clip" skips the bounds check that indexing does (every index is in range).
    if array.dtype.kind == "u" and array.size >= 1 << 15:  # the values index the table as they are
        high = int(array.max())
        if high < array.size // 8:
            return np.take(function(np.arange(high + 1, dtype=array.dtype)), array, mode="clip")
    elif array.dtype.kind == "i" and array.size >= 1 << 15:
        low, high = int(array.min()), int(array.max())
        if high - low < array.size // 8:
            index = array.astype(np.intp)
            index -= low
            return np.take(function(np.arange(low, high + 1, dtype=array.dtype)), index, mode="clip")
    return function(array)


def apply_modality_lut(arr: np.ndarray, ds: Any, summed: int = 1) -> np.ndarray:
    """Stored values to modality values: the Modality LUT Module (PS3.3 C.11.1), by pydicom.

    The Rescale Slope and Intercept, or the Modality LUT Sequence. Each of ``arr``'s values may be the
    sum of ``summed`` stored values (the block sums of ``reduced``), whose mean is mapped.
    """
    from pydicom.pixels import apply_modality_lut as modality_lut

    with codec(DICOM, PYDICOM_DAMAGED):  # pydicom's own errors on damaged LUTs, not ours
        return np.asarray(modality_lut(arr / summed if summed > 1 else arr, ds))


def apply_voi_lut(arr: np.ndarray, ds: Any, summed: int = 1, *,
                  tabled: bool = True) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """Stored values through the modality LUT and the VOI LUT Sequence (PS3.3 C.11.2.1.1) onto [0, 1].

    The LUT's output range is mapped onto [0, 1]. None when there is no VOI LUT Sequence; a LUT that
    maps every value to one is ignored, with a note, for a robust stretch of the modality values.
    ``tabled`` False computes every pixel instead of a table per value (the same, more slowly).
    """
    from pydicom.pixels import apply_voi
    from pydicom.sequence import Sequence

    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    if not isinstance(sequence, Sequence):  # a damaged VR turns the sequence into bytes
        raise Rejected("corrupt DICOM: the VOI LUT Sequence is not a sequence")
    descriptor = sequence[0].get("LUTDescriptor")
    try:
        entries, first = int(descriptor[0]) or 65536, int(descriptor[1])
    except (TypeError, IndexError, ValueError):  # absent, or too few values to be a LUT Descriptor
        raise Rejected("corrupt DICOM: the VOI LUT has no usable LUT Descriptor") from None
    with codec(DICOM, PYDICOM_DAMAGED):
        lut = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds).astype(np.float64)
    low, high = float(lut.min()), float(lut.max())
    if high <= low:
        notes = ("VOI LUT ignored: it maps every value to one",)
        return stretch(apply_modality_lut(arr, ds, summed), robust=True), notes

    def voi(stored: np.ndarray) -> np.ndarray:
        values = np.rint(apply_modality_lut(stored, ds, summed)).astype(np.int64)
        with codec(DICOM, PYDICOM_DAMAGED):
            mapped = apply_voi(values, ds).astype(np.float64)
        return np.clip((mapped - low) / (high - low), 0.0, 1.0).astype(np.float32)

    return (pointwise(arr, voi) if tabled else voi(arr)), ()


def first_window(ds: Any) -> Window | None:
    """The first window of Window Center and Width (PS3.3 C.11.2.1.2) and its VOI LUT Function (C.11.2.1.3).

    None when there is none, or none usable (unreadable, not finite, a width not above 0).
    """
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center, width = (float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)
                         for v in (ds.WindowCenter, ds.WindowWidth))
    except (TypeError, ValueError, IndexError):
        return None  # unreadable: the caller falls back to a min-max
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        return None
    return Window(center, width, str(ds.get("VOILUTFunction") or "LINEAR").strip().upper())


def window_values(x: np.ndarray, window: Window) -> np.ndarray:
    """Modality values through a window (PS3.3 C.11.2.1.2 LINEAR, C.11.2.1.3 LINEAR_EXACT and SIGMOID) onto [0, 1]."""
    center, width, function = window
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        out = (x - center) / width + 0.5
    else:  # LINEAR, and the default for unknown functions
        out = (x - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def apply_window(arr: np.ndarray, ds: Any, summed: int = 1, *,
                 tabled: bool = True) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """Stored values through the modality LUT and the first window (PS3.3 C.11.2.1.2) onto [0, 1].

    None when there is no usable window; a window that leaves a blank image is ignored, with a note,
    for a robust stretch of the modality values.
    """
    window = first_window(ds)
    if window is None:
        return None

    def windowed(stored: np.ndarray) -> np.ndarray:
        return window_values(apply_modality_lut(stored, ds, summed).astype(np.float64), window)

    pixels = pointwise(arr, windowed) if tabled else windowed(arr)
    if float(pixels.max()) > float(pixels.min()):
        return pixels, ()
    return stretch(apply_modality_lut(arr, ds, summed), robust=True), ("window ignored: it leaves a blank image",)


def apply_voi(arr: np.ndarray, ds: Any, summed: int = 1, *, tabled: bool = True) -> tuple[np.ndarray, tuple[str, ...]]:
    """Grayscale stored values to the VOI LUT Module's output (PS3.3 C.11.2) on [0, 1], with notes.

    The modality LUT first, then the VOI LUT Sequence, else the first window, else a robust min-max
    of the modality values. Each of ``arr``'s values may be the sum of ``summed`` stored values.
    """
    voi = apply_voi_lut(arr, ds, summed, tabled=tabled)
    if voi is None:
        voi = apply_window(arr, ds, summed, tabled=tabled)
    if voi is None:
        voi = stretch(apply_modality_lut(arr, ds, summed), robust=True), ()
    return voi


class PresentationLUT(NamedTuple):
    """A Presentation LUT as P-values on [0, 1] for inputs spread evenly over [0, 1], and what it is."""

    table: np.ndarray
    name: str  # "Presentation LUT Shape INVERSE", or "the Presentation LUT Sequence"
    shape: bool  # a Presentation LUT Shape: straight, so the polarity alone


def presentation_lut(ds: Any) -> PresentationLUT | None:
    """The data set's Presentation LUT, None when it has none.

    A Presentation LUT Sequence (2050,0010), its LUT Data read by pydicom (PS3.3 C.11.4, C.11.4.1); else a
    Presentation LUT Shape (2050,0020): IDENTITY [0, 1], INVERSE [1, 0], and anything else (LIN OD is
    for printers) refused by pydicom as unsupported.
    """
    from pydicom.pixels import apply_presentation_lut as pydicom_presentation_lut

    if sequence := ds.get("PresentationLUTSequence"):
        try:
            descriptor = sequence[0].get("LUTDescriptor")
            entries, bits = int(descriptor[0]) or 65536, int(descriptor[2])
        except (TypeError, IndexError, ValueError, AttributeError):  # absent, too short, not a sequence
            raise Rejected("corrupt DICOM: the Presentation LUT has no usable LUT Descriptor") from None
        if entries < 2 or not 1 <= bits <= 16:
            raise Rejected(f"corrupt DICOM: a Presentation LUT of {entries} entries of {bits} bits")
        # pydicom spreads its input's range over the entries: a ramp of the indexes reads the table as it is.
        with codec(DICOM, PYDICOM_DAMAGED):
            table = np.asarray(pydicom_presentation_lut(np.arange(entries, dtype=np.float64), ds), np.float64)
        if table.shape != (entries,):
            raise Rejected("corrupt DICOM: the Presentation LUT Data do not fill its LUT Descriptor")
        return PresentationLUT(table / ((1 << bits) - 1), "the Presentation LUT Sequence", False)
    shape = ds.get("PresentationLUTShape")
    if not str(shape or "").strip():
        return None
    with codec(DICOM, PYDICOM_DAMAGED):
        table = np.asarray(pydicom_presentation_lut(np.array([0.0, 1.0]), ds), np.float64)
    return PresentationLUT(table, f"Presentation LUT Shape {str(shape).strip().upper()}", True)


def apply_presentation_lut(arr: np.ndarray, ds: Any, *, colour: bool = False) -> np.ndarray:
    """The VOI output on [0, 1] to P-values on [0, 1], 0 black and 1 white: polarity and Presentation LUT.

    The Photometric Interpretation (PS3.3 C.7.6.3.1.2) sets the polarity: MONOCHROME1 shows its minimum
    white. A Presentation LUT Shape of the General Image Module (C.7.6.1) says it again: IDENTITY for
    MONOCHROME2 and colour, INVERSE for MONOCHROME1. A Presentation LUT Sequence (C.11.4) maps through
    its table of P-values, which must run the same way as the polarity. A Presentation LUT that
    contradicts the Photometric Interpretation is refused: which end is white is then unknown (files
    with a wrong shape are known), and a negative must never be read as a radiograph. ``colour``
    images (luma) take no Presentation LUT but IDENTITY (N.2.1.4 of PS3.4: grayscale only).
    """
    lut = presentation_lut(ds)
    inverse = not colour and photometric(ds) == "MONOCHROME1"
    if lut is None:
        return 1.0 - arr if inverse else arr
    table, name, shape = lut
    if float(table.max()) <= float(table.min()):
        raise Rejected("blank image: the Presentation LUT maps every value to one")
    decreasing = bool(table[-1] < table[0])
    if colour and (decreasing or not shape):
        raise Rejected(f"{name} on a colour image ({photometric(ds) or 'no photometric interpretation'}): "
                       "only IDENTITY applies to colour")
    if decreasing != inverse:
        raise Rejected(f"{name} contradicts the Photometric Interpretation {photometric(ds) or '(none)'}: "
                       "which end is white is unknown")
    if shape:
        return 1.0 - arr if inverse else arr
    return np.interp(arr, np.linspace(0.0, 1.0, table.size), table).astype(np.float32)


def apply_palette(arr: np.ndarray, ds: Any) -> np.ndarray:
    """PALETTE COLOR stored values to RGB: the Palette Color Lookup Table Module (PS3.3 C.7.9), by pydicom."""
    from pydicom.pixels import apply_color_lut

    with codec(DICOM, PYDICOM_DAMAGED):
        return np.asarray(apply_color_lut(arr, ds))


def apply_luma(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Colour samples (RGB; pydicom hands YBR over as RGB, PS3.3 C.7.6.3.1.2) to Rec. 601 luma on [0, 1].

    Scaled by Bits Stored (C.7.6.3.1.1), but a palette's colours, stretched: palettes declare 16 bits
    but often fill only 8 of them.
    """
    luma = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if photometric(ds) == "PALETTE COLOR":
        return stretch(luma, robust=False)
    pixels = np.clip(luma / (2.0 ** int(ds.BitsStored) - 1), 0.0, 1.0).astype(np.float32)
    if float(pixels.max()) <= float(pixels.min()):
        raise Rejected("blank image: all pixels have the same value")
    return pixels
