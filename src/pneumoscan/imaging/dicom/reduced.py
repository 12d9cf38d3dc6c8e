"""Reduced-resolution DICOM decoding: three ways to decode a large frame smaller for the model, behind one interface.

A way (a ``ReducedDecode``) takes the first frame and the model's input size and returns the frame's
stored values smaller (``Reduced``), or None where it does not apply; ``decode`` then takes the next
way, and at last the full decode. ``DEFAULT`` holds the three, in order: JPEG 2000 resolution levels,
JPEG DCT scaling, and sums of k x k blocks of the full decode. Pass your own to ``decode(strategies=...)``.
"""

from __future__ import annotations

import io
import re
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import numpy as np
from PIL import Image

from pneumoscan.imaging.dicom.pixels import GRAYSCALE, first_window, window_values
from pneumoscan.imaging.dicom.read import first_frame, number, photometric
from pneumoscan.imaging.errors import PYDICOM_DAMAGED, codec
from pneumoscan.imaging.kinds import DICOM

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Reduced:
    """A frame decoded smaller: what the grayscale transforms and the resize then take instead of the full frame."""

    values: np.ndarray  # stored values, as ``ds.pixel_array`` gives them but smaller; or sums of ``summed`` of them
    box: Box | None  # the full picture's extent (left, upper, right, lower) in ``values``; None: edge to edge
    weight: float = 0.0  # of the [a, 1 - 2a, a] filter that evens out the blur of the reduction (see ``spread``)
    summed: int = 1  # each value is the sum of this many stored values


class Frame:
    """The first frame of a data set: its compressed bytes (None for native pixel data) and its full decode.

    The full decode is made once, when first asked for, by whichever way or caller asks first.
    """

    def __init__(self, ds: Any, codestream: bytes | None) -> None:
        self.ds, self.codestream = ds, codestream
        self._decoded: np.ndarray | None = None

    def decoded(self) -> np.ndarray:
        """pydicom's full decode of the frame: its stored values."""
        if self._decoded is None:
            self._decoded = first_frame(self.ds)
        return self._decoded


class ReducedDecode(Protocol):
    """A way to decode a frame smaller: None where it does not apply."""

    def __call__(self, frame: Frame, size: tuple[int, int]) -> Reduced | None: ...


def reduce(frame: Frame, size: tuple[int, int], strategies: Sequence[ReducedDecode]) -> Reduced | None:
    """The first of ``strategies`` that decodes ``frame`` smaller for ``size`` (height, width), else None."""
    for strategy in strategies:
        if (reduced := strategy(frame, size)) is not None:
            return reduced
    return None


class FromCodestream(ABC):
    """A way that decodes the compressed frame itself, before (and instead of) pydicom's full decode.

    Whatever goes wrong in it, damaged data or a codec that reads the codestream otherwise, it gives
    None, so that the full decode decides, exactly as without this way.
    """

    def __call__(self, frame: Frame, size: tuple[int, int]) -> Reduced | None:
        if frame.codestream is None:
            return None
        try:
            return self.reduce(frame.ds, frame.codestream, size)
        except Exception:  # the full decode decides, and rejects damaged data as damaged
            return None

    @abstractmethod
    def reduce(self, ds: Any, codestream: bytes, size: tuple[int, int]) -> Reduced | None:
        """The frame of ``ds`` from ``codestream``, smaller; None where this way does not apply. May raise."""


# --- JPEG 2000 at a reduced resolution level --------------------------------------------------------


@dataclass(frozen=True)
class J2KHeader:
    """What the main header of a single-component JPEG 2000 codestream says about its samples."""

    width: int
    height: int
    precision: int  # bits per sample
    signed: bool
    levels: int  # wavelet decomposition levels: the most resolution levels a decoder can drop
    reversible: bool  # the 5/3 wavelet (lossless); else the 9/7


@cache
def j2k_syntaxes() -> frozenset[str]:
    """The JPEG 2000 transfer syntaxes that Pillow's reader decodes: HTJ2K from OpenJPEG 2.5 on."""
    from PIL import features
    from pydicom import uid

    names = ["JPEG2000Lossless", "JPEG2000"]
    version = features.version("jpg_2000") or "0"
    if tuple(int(part) for part in re.findall(r"\d+", version)[:2]) >= (2, 5):
        names += ["HTJ2KLossless", "HTJ2KLosslessRPCL", "HTJ2K"]
    return frozenset(str(getattr(uid, name)) for name in names if hasattr(uid, name))


def j2k_header(frame: bytes) -> J2KHeader | None:
    """The SIZ and COD (and COC) of a raw codestream, None for anything else or anything unusual.

    Unusual, and left to the full decode: a JP2 file rather than a codestream, several components,
    an image offset or subsampling.
    """
    if not frame.startswith(b"\xff\x4f\xff\x51") or len(frame) < 47:  # SOC, then SIZ
        return None
    (length, _, width, height, x0, y0, _, _, _, _, components) = struct.unpack(">HHIIIIIIIIH", frame[4:42])
    ssiz, dx, dy = frame[42], frame[43], frame[44]
    if components != 1 or x0 or y0 or (dx, dy) != (1, 1):
        return None
    levels: int | None = None
    reversible = True
    offset = 4 + length
    while offset + 4 <= len(frame):  # the main header's marker segments, up to the first tile-part (SOT)
        marker, length = struct.unpack(">HH", frame[offset:offset + 4])
        if marker >> 8 != 0xFF or marker == 0xFF90 or offset + 2 + length > len(frame):
            break
        if marker == 0xFF52 and length >= 12:  # COD: Lcod, Scod, SGcod (4 bytes), levels, 3 bytes, transform
            levels = frame[offset + 9] if levels is None else min(levels, frame[offset + 9])
            reversible = frame[offset + 13] == 1
        elif marker == 0xFF53 and length >= 9:  # COC of the one component: Lcoc, Ccoc, Scoc, the same
            levels = frame[offset + 6] if levels is None else min(levels, frame[offset + 6])
            reversible = frame[offset + 10] == 1
        offset += 2 + length
    if levels is None:
        return None
    return J2KHeader(width, height, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), levels, reversible)


def shrunk(length: int, reduce: int) -> int:
    """A side's length at ``reduce`` resolution levels down: halved ``reduce`` times, rounded up."""
    return -(-length >> reduce)


def j2k_reduction(header: J2KHeader, size: tuple[int, int]) -> int:
    """The most resolution levels to drop while both sides still cover ``size`` (height, width)."""
    reduce = 0
    while (reduce < header.levels and shrunk(header.width, reduce + 1) >= size[1]
           and shrunk(header.height, reduce + 1) >= size[0]):
        reduce += 1
    return reduce


def j2k_decode(frame: bytes, header: J2KHeader, reduce: int, dtype: np.dtype[Any]) -> np.ndarray:
    """Decode a codestream with Pillow, ``reduce`` resolution levels down, to its stored values as ``dtype``.

    Pillow widens samples to its mode's bits (8 for L, 16 for I;16) and offsets signed ones to
    unsigned; both are undone here, so the values are the codestream's, as pydicom gives them.
    """
    from PIL.Jpeg2KImagePlugin import Jpeg2KImageFile

    image = Image.open(io.BytesIO(frame), formats=["JPEG2000"])
    bits = {"L": 8, "I;16": 16}.get(image.mode)
    if not isinstance(image, Jpeg2KImageFile) or bits is None or header.precision > bits:
        raise ValueError(f"Pillow reads this codestream as {image.mode}")
    if image.size != (header.width, header.height):
        raise ValueError(f"Pillow reads this codestream as {image.size}")
    expected = (shrunk(header.width, reduce), shrunk(header.height, reduce))
    if reduce:
        # Pillow sizes the reduced image by rounding to the nearest, OpenJPEG by rounding up (a
        # 1841 wide image is 461 at a quarter, not 460, and Pillow then fails): a nominal size
        # that is a whole multiple of the scale makes the two agree.
        image._size = (expected[0] << reduce, expected[1] << reduce)
        image.reduce = reduce
    image.load()
    if image.size != expected:
        raise ValueError(f"Pillow decoded {image.size}, expected {expected}")
    values = np.asarray(image).astype(np.int64) >> (bits - header.precision)
    if header.signed:
        values -= 1 << (header.precision - 1)
    return values.astype(dtype)


def reduced_box(header: J2KHeader, reduce: int) -> Box:
    """Where the full picture lies in a decode ``reduce`` levels down, in its pixel coordinates.

    Sample k of the low-pass band stands for the full image's sample k * 2**reduce (the wavelet
    keeps the even samples), not for the middle of the 2**reduce samples from there: a resize that
    took the reduced image for the whole picture would shift it by up to half a reduced pixel.
    """
    scale = 1 << reduce
    shift = 0.5 - 0.5 / scale
    return shift, shift, header.width / scale + shift, header.height / scale + shift


# The variance, in samples of the level it works at, of each wavelet's low-pass analysis filter
# (taps normalised to sum 1): the 5/3's [-1, 2, 6, 2, -1] / 8 is a little sharper than no filter at
# all, the 9/7's a little smoother.
_LOW_PASS_VARIANCE = {True: -0.5, False: 0.46035}


def spread_weight(header: J2KHeader, reduce: int) -> float:
    """The weight ``a`` of the [a, 1 - 2a, a] filter that gives a reduced decode the full decode's blur.

    The full decode goes to the model's size through one resampling filter; the reduced one through
    ``reduce`` levels of the wavelet's low-pass first, then the same resampling filter (in full-size
    pixels). Variances add, so the difference is the low-pass levels' own: v * (1 + 4 + ... + 4**(r-1))
    full-size pixels squared, v / 4**r per level in reduced pixels. A 3-tap filter of variance 2a
    takes it back out. Measured on 80 test images (5/3, two levels, a = 0.078): max |dp| 0.039 to
    0.013 against the full decode, and 0.04 and 0.12 were both worse than the computed weight.
    """
    variance = _LOW_PASS_VARIANCE[header.reversible] * (4**reduce - 1) / 3 / 4**reduce
    return -variance / 2


def spread(pixels: np.ndarray, weight: float) -> np.ndarray:
    """``pixels`` through the separable filter [weight, 1 - 2 weight, weight], edges repeated."""
    padded = np.pad(pixels, 1, mode="edge")
    rows = weight * (padded[:-2] + padded[2:]) + (1.0 - 2.0 * weight) * padded[1:-1]
    return (weight * (rows[:, :-2] + rows[:, 2:]) + (1.0 - 2.0 * weight) * rows[:, 1:-1]).astype(np.float32)


class JPEG2000Levels(FromCodestream):
    """A grayscale JPEG 2000 frame at the smallest resolution level that covers the size (Pillow's OpenJPEG).

    The reduced decode is aligned on the full one (``reduced_box``) and, with ``even_blur``, given its
    blur (``spread_weight``).
    """

    def __init__(self, *, even_blur: bool = True) -> None:
        self.even_blur = even_blur

    def reduce(self, ds: Any, codestream: bytes, size: tuple[int, int]) -> Reduced | None:
        """None for another syntax, colour, nothing to drop, or anything unusual."""
        if str(ds.file_meta.TransferSyntaxUID) not in j2k_syntaxes():
            return None
        if photometric(ds) not in GRAYSCALE or number(ds, "SamplesPerPixel", 1) != 1:
            return None
        header = j2k_header(codestream)
        if header is None or (header.width, header.height) != (number(ds, "Columns", 0), number(ds, "Rows", 0)):
            return None
        allocated, stored = number(ds, "BitsAllocated", 0), number(ds, "BitsStored", 0)
        signed = number(ds, "PixelRepresentation", 0) == 1
        # Where the codestream and the header disagree on the samples, pydicom reconciles them: full decode.
        if allocated not in (8, 16) or header.signed != signed or not 1 <= header.precision <= min(stored, allocated):
            return None
        levels = j2k_reduction(header, size)
        if levels == 0:
            return None
        values = self.decode(codestream, header, levels, np.dtype(f"{'i' if signed else 'u'}{allocated // 8}"))
        weight = spread_weight(header, levels) if self.even_blur else 0.0
        return Reduced(values, reduced_box(header, levels), weight)

    def decode(self, codestream: bytes, header: J2KHeader, levels: int, dtype: np.dtype[Any]) -> np.ndarray:
        """The codestream ``levels`` resolution levels down, as stored values (``j2k_decode``)."""
        return j2k_decode(codestream, header, levels, dtype)


class JPEGScaled(FromCodestream):
    """An 8-bit grayscale JPEG baseline frame decoded with DCT scaling (1/2, 1/4, 1/8; Pillow's draft mode).

    Draft mode picks the largest scale whose size still covers the size. Each output sample is the
    mean of its block, so the reduced image covers the full picture edge to edge (weight 0: no
    correction measured for it).
    """

    def reduce(self, ds: Any, codestream: bytes, size: tuple[int, int]) -> Reduced | None:
        """None for another syntax, colour, more than 8 bits, or nothing to drop."""
        from pydicom.uid import JPEGBaseline8Bit

        if ds.file_meta.TransferSyntaxUID != JPEGBaseline8Bit:
            return None
        if photometric(ds) not in GRAYSCALE or number(ds, "SamplesPerPixel", 1) != 1 \
                or number(ds, "BitsAllocated", 0) != 8 or number(ds, "PixelRepresentation", 0) != 0:
            return None
        image = Image.open(io.BytesIO(codestream), formats=["JPEG"])
        width, height = image.size
        if (width, height) != (number(ds, "Columns", 0), number(ds, "Rows", 0)) or image.mode != "L":
            return None
        image.draft("L", (size[1], size[0]))
        image.load()
        if image.size == (width, height):
            return None  # nothing to drop
        scale_x, scale_y = width / image.width, height / image.height
        return Reduced(np.asarray(image, dtype=np.uint8), (0.0, 0.0, width / scale_x, height / scale_y))


# --- sums of blocks of the full decode --------------------------------------------------------------

# A full-size frame is averaged down to no less than this many times the model's input on each side
# before its LUT; the one resampling filter then does the rest.
BLOCK_GAP = 3


def block_sums(ds: Any, array: np.ndarray, size: tuple[int, int]) -> Reduced | None:
    """A large grayscale frame as the sums of its k x k blocks: the LUT and the resize see k**2 fewer pixels.

    Only where the window can be taken through the blocks' means: a rescale (no Modality LUT
    Sequence), a LINEAR or LINEAR_EXACT window and no Presentation LUT Sequence (a curve, applied after
    the window) are one straight line between the two stored values
    where the window saturates. The stored values are first clipped to those two, so that a block the
    window clips in part averages what the window shows, not what it hides: such a block's value
    differs from the mean of the exact decode's by at most one stored value's step of the window
    (1/4095 of the range for a 12-bit full-range window); every other block's is the same. k is the
    largest that leaves at least ``BLOCK_GAP`` times ``size`` on each side. Returns the sums (integers,
    so that the window still goes through a table), the box of the full picture's extent in them (None
    when k divides both sides) and k**2 as ``summed``; None where this does not apply (the caller goes
    on with ``array`` as it is). ``array`` is clipped in place when it is writable: the caller is done with it.
    """
    from pydicom.pixels import apply_modality_lut

    if array.ndim != 2 or array.dtype.kind not in "iu" or photometric(ds) not in GRAYSCALE \
            or "ModalityLUTSequence" in ds or ds.get("VOILUTSequence") or ds.get("PresentationLUTSequence"):
        return None
    window = first_window(ds)
    height, width = array.shape
    k = min(height // (BLOCK_GAP * size[0]), width // (BLOCK_GAP * size[1]))
    if window is None or window.function not in ("LINEAR", "LINEAR_EXACT") or k < 2:
        return None
    low, high = int(array.min()), int(array.max())
    with codec(DICOM, PYDICOM_DAMAGED):
        modality = np.asarray(apply_modality_lut(np.arange(low, high + 1, dtype=np.int64), ds), np.float64)
    table = window_values(modality, window)
    shown = np.flatnonzero((table > 0) & (table < 1))
    if shown.size == 0:  # the window shows nothing of this image: the full decode's fallback decides
        return None
    # One stored value either side of the span shown saturates, as everything beyond it does.
    first, last = max(low, low + int(shown[0]) - 1), min(high, low + int(shown[-1]) + 1)
    # Bounds of the array's own type: numpy clips a uint16 array 10 times slower given Python int 0.
    bounds = array.dtype.type(first), array.dtype.type(last)
    clipped = np.clip(array, *bounds, out=array if array.flags.writeable else None)
    # Sums in the narrowest integer type that holds them: k rows first (whole rows, contiguous: the fast
    # loops), then every k-th column of those, on 1/k of the data.
    bound = k * k * max(abs(first), abs(last))
    kinds = (np.uint16, np.uint32, np.uint64) if array.dtype.kind == "u" else (np.int16, np.int32, np.int64)
    wide = next(t for t in kinds if bound <= np.iinfo(t).max)
    rows, cols = height // k * k, width // k * k
    lines = np.add(clipped[0:rows:k, :cols], clipped[1:rows:k, :cols], dtype=wide)
    for i in range(2, k):
        lines += clipped[i:rows:k, :cols]
    total = np.add(lines[:, 0::k], lines[:, 1::k])
    for j in range(2, k):
        total += lines[:, j::k]
    box = None if (rows, cols) == (height, width) else (0.0, 0.0, width / k, height / k)
    return Reduced(total, box, summed=k * k)


class BlockSums:
    """Sums of k x k blocks of pydicom's full decode (``block_sums``), for any syntax, native ones included."""

    def __call__(self, frame: Frame, size: tuple[int, int]) -> Reduced | None:
        return block_sums(frame.ds, frame.decoded(), size)


DEFAULT: tuple[ReducedDecode, ...] = (JPEG2000Levels(), JPEGScaled(), BlockSums())
