"""Imaging stage: detect a file's kind by content and decode it to a normalized grayscale array."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from pneumoscan.config import DecodePolicy
from pneumoscan.domain import DICOM_FIELDS, DicomMeta

JPEG, PNG, TIFF, GIF, DICOM = "jpeg", "png", "tiff", "gif", "dicom"

_MAGIC = (
    (b"\xff\xd8\xff", JPEG),
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"II*\x00", TIFF),
    (b"MM\x00*", TIFF),
    (b"GIF87a", GIF),
    (b"GIF89a", GIF),
)
_PILLOW_FORMAT = {JPEG: "JPEG", PNG: "PNG", TIFF: "TIFF", GIF: "GIF"}
_ACCEPTED = "JPEG, PNG, TIFF, GIF or DICOM"

# Explicit VR codes, to recognise a DICOM data set written without the Part 10 preamble.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)

# SOP classes that hold no radiograph: a UID, and with a trailing dot the whole family below it too.
_NOT_IMAGES = (
    ("1.2.840.10008.1.3.10", "a DICOMDIR (media directory)"),
    ("1.2.840.10008.5.1.4.1.1.88.", "a structured report or key object selection"),
    ("1.2.840.10008.5.1.4.1.1.11.", "a presentation state"),
    ("1.2.840.10008.5.1.4.1.1.481.", "a radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.104.", "an encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.9.", "a waveform"),
    ("1.2.840.10008.5.1.4.1.1.66.", "raw data, a registration, a segmentation or fiducials"),
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clean_text(text: str, limit: int = 300) -> str:
    """One line of printable text, at most ``limit`` characters: safe to store and to log."""
    return " ".join(_CONTROL.sub(" ", text).split())[:limit]


class ImagingError(Exception):
    """A file that cannot become a model input. ``transient`` errors may succeed on a retry."""

    transient = False

    def __init__(self, reason: str, dicom: DicomMeta | None = None) -> None:
        reason = clean_text(reason)
        super().__init__(reason)
        self.reason = reason
        self.dicom = dicom  # what the header said, when it was read: a rejected instance still has its study


class Rejected(ImagingError):
    """Permanent: the bytes are not a usable chest radiograph. Retrying will not help."""


class Unavailable(ImagingError):
    """Transient: the file could not be read or decoded right now (permissions, vanished, memory)."""

    transient = True


class InternalError(Exception):
    """Not the file's fault: decoding failed in a way no codec reports damaged bytes, so it is our bug.

    Deliberately not an ImagingError: the file must end ``failed`` (and be retried once the bug is
    fixed), never ``rejected`` for good. The original exception is chained as ``__cause__``, with its
    traceback, for the log.
    """

    def __init__(self, reason: str) -> None:
        reason = clean_text(reason)
        super().__init__(reason)
        self.reason = reason


# What damaged bytes make the codecs raise, wherever in decoding they surface: Pillow's
# UnidentifiedImageError and other OSErrors ("image file is truncated"), SyntaxError from its plugins'
# header checks and ValueError; pydicom's ValueError and OSError, also raised later from lazily converted
# values; struct.error, EOFError and zlib.error from short or mangled compressed data; numpy's ValueError
# for a buffer that does not fit the shape a header claims. Anything else is a bug (InternalError).
_DAMAGED: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
# Pillow treats these as damaged files too (Image.open turns them into UnidentifiedImageError), but
# they escape unconverted once the file is open: a TIFF without its size tags raises TypeError on seek.
_PILLOW_DAMAGED: tuple[type[Exception], ...] = (TypeError, IndexError)
# pydicom's pixel handlers report a missing required element (Rows, a LUT's Descriptor or Data) as
# AttributeError or KeyError, as they look it up by keyword or by tag; a wrongly typed or sized value as
# TypeError or IndexError; and the failure of every decoding plugin as RuntimeError.
_PYDICOM_DAMAGED: tuple[type[Exception], ...] = (AttributeError, KeyError, TypeError, IndexError, RuntimeError)


@contextmanager
def _codec(kind: str, families: tuple[type[Exception], ...]) -> Iterator[None]:
    """Around a call into a codec only: ``families`` raised inside it mean damaged bytes, not a bug of ours.

    Keep the block to the library call itself, so that the same types raised by our own code still
    surface as InternalError.
    """
    try:
        yield
    except NotImplementedError:  # a RuntimeError, but it means "unsupported", which decode() says as such
        raise
    except families as exc:
        raise Rejected(f"corrupt or truncated {kind.upper()}: {_describe(exc)}") from None


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: ``pixels`` is float32 (height, width) in [0, 1], 0 black, 1 white."""

    pixels: np.ndarray
    kind: str
    dicom: DicomMeta | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


# Never follow a link (it may point outside the inbox), and never block opening a named pipe.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def open_input(path: str) -> BinaryIO:
    """Open an input file for reading without following a link or blocking on a pipe.

    Raises OSError as ``os.open`` does (a link gives ELOOP); the caller checks that it is a regular file.
    """
    return os.fdopen(os.open(path, _OPEN_FLAGS), "rb")


def read_content(paths: Iterable[str], sha256: str) -> tuple[str, bytes] | None:
    """(path, bytes) of the first of ``paths`` that is a regular file holding the content ``sha256``, else None.

    How stored images are read back to be shown or sent: by the paths their content was seen at,
    never following a link, and only while the bytes are still the ones that were classified.
    """
    for path in paths:
        try:
            with open_input(path) as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    continue
                data = fh.read()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == sha256:
            return path, data
    return None


def detect_kind(head: bytes) -> str | None:
    """Name the format of a file from its first bytes (at least 132), or None when unknown.

    DICOM is recognised by the ``DICM`` marker after the 128-byte preamble, or, for a data set
    written without the preamble, by an opening element of group 0002 or 0008.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM  # first: a preamble may itself hold a TIFF header (dual-personality files)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return DICOM if _is_raw_dataset(head) else None


def _is_raw_dataset(head: bytes) -> bool:
    if len(head) < 12:
        return False
    for order in "<>":
        group, element = struct.unpack(order + "HH", head[:4])
        if group not in (0x0002, 0x0008) or element > 0x00FF:
            continue
        if head[4:6] in _VRS:  # explicit VR, little or big endian
            return True
        length = struct.unpack(order + "I", head[4:8])[0]
        if order == "<" and 0 < length < 1024:  # implicit VR exists only in little endian
            return True
    return False


def looks_complete(kind: str | None, tail: bytes) -> bool:
    """True when a file's last bytes show its format's end marker (used to trust close-write events)."""
    if kind == JPEG:
        return tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    if kind == PNG:
        return tail.endswith(b"IEND\xaeB`\x82")
    return False


def patient_ref(patient_id: str, salt: bytes) -> str:
    """A salted SHA-256 of a PatientID, so studies of one patient can be linked without storing the ID."""
    return hashlib.sha256(salt + b"\x00" + patient_id.strip().encode()).hexdigest()


def decode(
    data: bytes,
    size: tuple[int, int] | None,
    policy: DecodePolicy,
) -> DecodedImage:
    """Decode file bytes to a (height, width) = ``size`` float32 image in [0, 1], under ``policy``.

    ``size`` None keeps the stored size (for showing the image to a person).

    Raises ``Rejected`` with a human-readable reason for anything that is not a usable image, and
    ``Unavailable`` when decoding ran out of memory. Nothing else escapes, whatever the bytes; an
    exception that damaged bytes do not cause (a bug of ours) becomes ``InternalError``.
    """
    if not data:
        raise Rejected("empty file (0 bytes)")
    kind = detect_kind(data[:132])
    if kind is None:
        raise Rejected(f"unrecognized format: not {_ACCEPTED} (checked by content, not name)")
    try:
        if kind == DICOM:
            return _decode_dicom(data, size, policy)
        return _decode_raster(data, kind, size, policy.max_pixels)
    except ImagingError:
        raise
    except MemoryError:
        raise Unavailable("not enough memory to decode the image") from None
    except NotImplementedError as exc:
        raise Rejected(f"unsupported {kind.upper()}: {clean_text(str(exc), 200)}") from None
    except _DAMAGED as exc:
        raise Rejected(f"corrupt or truncated {kind.upper()}: {_describe(exc)}") from None
    except Exception as exc:  # no codec reports damaged bytes so: rejecting would hide our bug for good
        raise InternalError(f"internal error while decoding a {kind.upper()}: {_describe(exc)}") from exc


@cache
def keep_large_buffers() -> bool:
    """Let this process reuse freed image-sized buffers instead of mapping fresh memory for each image.

    glibc's malloc serves blocks over its (adaptive) mmap threshold from new mappings and unmaps them
    on free, so every decode of a large radiograph page-faults its tens of megabytes of buffers in
    again: about 40% of the time of an uncompressed 2000x1700 DICOM here. A fixed threshold of 64 MiB
    (and trimming only past 256 MiB free) keeps them on the heap for the next image. Called once at
    start, before any fork; a no-op where the C library is not glibc. Returns whether it applied.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 64 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


def _describe(exc: BaseException) -> str:
    text = clean_text(str(exc), 200)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _resize(pixels: np.ndarray, size: tuple[int, int] | None,
            box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Resample to ``size``; ``box`` (left, upper, right, lower) is the picture's extent in ``pixels``."""
    if size is None or (pixels.shape == size and box is None):
        return pixels.astype(np.float32, copy=False)
    height, width = size
    image = Image.fromarray(pixels.astype(np.float32, copy=False), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, box=box), dtype=np.float32)


def _too_large(width: int, height: int, max_pixels: int) -> Rejected | None:
    if width * height > max_pixels:
        return Rejected(f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels}")
    return None


def _decode_raster(data: bytes, kind: str, size: tuple[int, int] | None, max_pixels: int) -> DecodedImage:
    try:
        with _codec(kind, _PILLOW_DAMAGED):
            # Only the plugin of the detected format parses the bytes; open() reads the header alone.
            image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMAT[kind]])
    except Image.DecompressionBombError as exc:
        raise Rejected(f"image too large: {exc}") from None
    if error := _too_large(image.width, image.height, max_pixels):
        raise error
    with _codec(kind, _PILLOW_DAMAGED):
        frames = int(getattr(image, "n_frames", 1))  # TIFF and GIF seek through the file to count
    if frames > 1:
        what = "animated GIF" if kind == GIF else f"multi-page {kind.upper()}"
        raise Rejected(f"{what} with {frames} frames: not a single radiograph")
    with _codec(kind, _PILLOW_DAMAGED):
        if kind == JPEG and size is not None:
            # Decode at reduced scale straight from the DCT; never smaller than the target.
            image.draft("L", (size[1], size[0]))
        image.load()
    deep = image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
    with _codec(kind, _PILLOW_DAMAGED):
        # 16-bit and 32-bit gray keep their values; palette, CMYK, RGB(A), YCbCr, bilevel: Pillow's luma.
        values = np.asarray(image, dtype=np.float64) if deep else np.asarray(image.convert("L"), dtype=np.float32)
    # Deep gray has no window to apply: stretch the stored range.
    pixels = _stretch(values, robust=False) if deep else values / 255.0
    return DecodedImage(_resize(pixels, size), kind)


def _stretch(values: np.ndarray, *, robust: bool) -> np.ndarray:
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


# --- DICOM -----------------------------------------------------------------------------------------


def _text(ds: Any, keyword: str, limit: int = 64) -> str | None:
    value = ds.get(keyword) if ds is not None else None
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return clean_text(str(value), limit) or None


def _read_dicom(data: bytes, *, header_only: bool) -> Any:
    """Parse a DICOM file; a data set without preamble is read only because detect_kind vouched for it."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    # Values are never validated on reading: pydicom's warnings quote the offending value, and that
    # value could be a patient's name or birth date.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    has_preamble = data[128:132] == b"DICM"
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only, force=not has_preamble)
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    syntax = meta.get("TransferSyntaxUID")
    if syntax is not None and not isinstance(syntax, str):
        raise Rejected("corrupt DICOM: the Transfer Syntax UID is not one UID")
    if "TransferSyntaxUID" in meta and not isinstance(syntax, UID):
        # A damaged VR leaves plain text, without a UID's properties: set it again, as a UID.
        del meta.TransferSyntaxUID
    if not syntax:
        # No (usable) file meta: the encoding pydicom found is the transfer syntax.
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    elif not isinstance(syntax, UID):
        meta.TransferSyntaxUID = UID(syntax)
    return ds


def _number(ds: Any, keyword: str, default: int) -> int:
    """A single-valued integer attribute, ``default`` when absent or empty; a damaged value rejects the file."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # several values where one belongs, text, NaN
        raise Rejected(f"corrupt DICOM: {keyword} is not a single whole number") from None


def _metadata(header: Any, salt: bytes) -> DicomMeta:
    values = {name: _text(header, keyword, limit) for name, (keyword, limit) in DICOM_FIELDS.items()}
    pid = _text(header, "PatientID", 256)
    return DicomMeta(**values, patient_ref=patient_ref(pid, salt) if pid else None)


def _triage(header: Any, meta: DicomMeta, policy: DecodePolicy) -> None:
    """Reject, from the header alone, what is not a chest radiograph or is too large to decode."""
    from pydicom.uid import UID

    sop = _text(header, "SOPClassUID") or _text(header.file_meta, "MediaStorageSOPClassUID")
    for prefix, what in _NOT_IMAGES:
        if sop is not None and (sop == prefix.rstrip(".") or (prefix.endswith(".") and sop.startswith(prefix))):
            raise Rejected(f"not an image: {UID(sop).name} is {what}")
    if "DirectoryRecordSequence" in header:
        raise Rejected("not an image: a DICOMDIR (media directory)")
    modalities, body_parts = policy.modalities, policy.body_parts
    if meta.modality is not None and modalities and meta.modality.upper() not in modalities:
        raise Rejected(f"modality {meta.modality} is not a radiograph (allowed: {', '.join(sorted(modalities))})")
    if meta.body_part is not None and body_parts and meta.body_part.upper() not in body_parts:
        raise Rejected(f"body part {meta.body_part} is not allowed (allowed: {', '.join(sorted(body_parts))})")
    if meta.view_position is not None and policy.views and meta.view_position.upper() not in policy.views:
        # Stored, with its study, but never scored as if it were frontal.
        raise Rejected(f"not assessed: view {meta.view_position} (the model reads {', '.join(sorted(policy.views))})")
    if error := _too_large(_number(header, "Columns", 0), _number(header, "Rows", 0), policy.max_pixels):
        raise error


def _decode_dicom(
    data: bytes,
    size: tuple[int, int] | None,
    policy: DecodePolicy,
) -> DecodedImage:
    """Decode a DICOM file, with pydicom's own errors for damaged data counted as damage.

    pydicom converts values lazily, so these can surface from any attribute read, not just from dcmread.
    """
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        return _decode_dataset(data, size, policy)
    except (InvalidDicomError, BytesLengthException) as exc:
        raise Rejected(f"corrupt or truncated DICOM: {_describe(exc)}") from None


def _decode_dataset(
    data: bytes,
    size: tuple[int, int] | None,
    policy: DecodePolicy,
) -> DecodedImage:
    from pydicom.errors import BytesLengthException, InvalidDicomError
    from pydicom.pixels import apply_color_lut
    from pydicom.uid import RLELossless

    damaged: tuple[type[Exception], ...] = (*_DAMAGED, InvalidDicomError, BytesLengthException)
    try:
        header = _read_dicom(data, header_only=True)
    except damaged as exc:
        raise Rejected(f"corrupt or truncated DICOM header: {_describe(exc)}") from None
    meta = _metadata(header, policy.salt)
    try:
        _triage(header, meta, policy)
    except Rejected as exc:
        exc.dicom = meta
        raise

    ds = _read_dicom(data, header_only=False)
    if not ds.get("PixelData"):  # absent, or present with no value
        raise Rejected("DICOM file has no pixel data")
    frame = _check_codestream(ds, policy.max_pixels)
    frames = _number(ds, "NumberOfFrames", 1)
    array, box, weight, summed = None, None, 0.0, 1
    if size is not None and frame is not None and policy.reduced:
        try:
            if reduced := _reduced_j2k(ds, frame, size) or _reduced_jpeg(ds, frame, size):
                array, box, weight = reduced
        except Exception:  # whatever went wrong, the full decode below decides, exactly as without this path
            array, box, weight = None, None, 0.0
    if array is None:
        # The first frame only, whatever the number of frames. RLE goes to pydicom's own decoder: the
        # faster pylibjpeg-rle (Rust) panics on some damaged data, printing to stderr as it goes.
        rle = ds.file_meta.TransferSyntaxUID == RLELossless
        ds.pixel_array_options(index=0, **({"decoding_plugin": "pydicom"} if rle else {}))
        with _codec(DICOM, _PYDICOM_DAMAGED):
            array = ds.pixel_array
        if size is not None and policy.reduced and (blocked := _block_sums(ds, array, size)) is not None:
            array, box, summed = blocked
    notes: tuple[str, ...] = (f"multi-frame image ({frames} frames): classified the first frame",) if frames > 1 else ()

    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        with _codec(DICOM, _PYDICOM_DAMAGED):
            array = apply_color_lut(array, ds)
    if array.ndim == 3:  # colour (pydicom hands YBR over as RGB): Rec. 601 luma
        luma = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if photometric == "PALETTE COLOR":  # palettes declare 16 bits but often fill only 8 of them
            pixels = _stretch(luma, robust=False)
        else:
            pixels = np.clip(luma / (2.0 ** int(ds.BitsStored) - 1), 0.0, 1.0).astype(np.float32)
            if float(pixels.max()) <= float(pixels.min()):
                raise Rejected("blank image: all pixels have the same value")
    elif photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise Rejected(f"unsupported photometric interpretation {photometric or '(none)'}")
    else:
        pixels, note = _grayscale(array, ds, summed)
        notes += note
        if photometric == "MONOCHROME1":  # 0 is white
            pixels = 1.0 - pixels
    if box is not None:  # a reduced decode: one more row and column, so that its box lies inside
        pixels = np.pad(_spread(pixels, weight) if weight else pixels, ((0, 1), (0, 1)), mode="edge")
    return DecodedImage(_resize(pixels, size, box), DICOM, meta, notes)


def _pointwise(array: np.ndarray, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
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


def _grayscale(array: np.ndarray, ds: Any, summed: int = 1) -> tuple[np.ndarray, tuple[str, ...]]:
    """Stored values to [0, 1]: the modality LUT (or rescale), then the VOI LUT Sequence, else the first
    window, else a robust min-max of the modality values. Each of ``array``'s values is the sum of
    ``summed`` stored values (``_block_sums``), whose mean is mapped."""
    from pydicom.pixels import apply_modality_lut, apply_voi
    from pydicom.sequence import Sequence

    def modality(stored: np.ndarray) -> np.ndarray:
        with _codec(DICOM, _PYDICOM_DAMAGED):  # pydicom's own errors on damaged LUTs, not ours
            return apply_modality_lut(stored / summed if summed > 1 else stored, ds)

    if sequence := ds.get("VOILUTSequence"):
        if not isinstance(sequence, Sequence):  # a damaged VR turns the sequence into bytes
            raise Rejected("corrupt DICOM: the VOI LUT Sequence is not a sequence")
        descriptor = sequence[0].get("LUTDescriptor")
        try:
            entries, first = int(descriptor[0]) or 65536, int(descriptor[1])
        except (TypeError, IndexError, ValueError):  # absent, or too few values to be a LUT Descriptor
            raise Rejected("corrupt DICOM: the VOI LUT has no usable LUT Descriptor") from None
        with _codec(DICOM, _PYDICOM_DAMAGED):
            lut = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds).astype(np.float64)
        low, high = float(lut.min()), float(lut.max())
        if high > low:
            def voi(stored: np.ndarray) -> np.ndarray:
                values = np.rint(modality(stored)).astype(np.int64)
                with _codec(DICOM, _PYDICOM_DAMAGED):
                    mapped = apply_voi(values, ds).astype(np.float64)
                return np.clip((mapped - low) / (high - low), 0.0, 1.0).astype(np.float32)

            return _pointwise(array, voi), ()
        return _stretch(modality(array), robust=True), ("VOI LUT ignored: it maps every value to one",)
    window = _first_window(ds)
    if window is not None:
        pixels = _pointwise(array, lambda stored: _apply_window(modality(stored).astype(np.float64), *window))
        if float(pixels.max()) > float(pixels.min()):
            return pixels, ()
        return _stretch(modality(array), robust=True), ("window ignored: it leaves a blank image",)
    return _stretch(modality(array), robust=True), ()


def _first_window(ds: Any) -> tuple[float, float, str] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center, width = (float(v[0]) if hasattr(v, "__len__") and not isinstance(v, str) else float(v)
                         for v in (ds.WindowCenter, ds.WindowWidth))
    except (TypeError, ValueError, IndexError):
        return None  # unreadable: the caller falls back to a min-max
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        return None
    return center, width, str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()


def _apply_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """A DICOM window (PS3.3 C.11.2.1.2) with its output mapped onto [0, 1]."""
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        out = (x - center) / width + 0.5
    else:  # LINEAR, and the default for unknown functions
        out = (x - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _check_codestream(ds: Any, max_pixels: int) -> bytes | None:
    """Refuse a compressed frame whose own header claims more pixels than allowed, before decoding it.

    The codecs size their output from the codestream, not from Rows and Columns. Returns the first
    frame's compressed bytes, None for native (uncompressed) pixel data.
    """
    from pydicom.encaps import generate_frames

    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return None
    frame = bytes(next(generate_frames(ds.PixelData, number_of_frames=_number(ds, "NumberOfFrames", 1)), b""))
    dims = _codestream_size(frame[:65536])
    if dims is not None and (error := _too_large(*dims, max_pixels)):
        raise error
    return frame


def _codestream_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG, JPEG-LS or JPEG 2000 codestream header, or None if not found."""
    if head.startswith(b"\xff\x4f\xff\x51") and len(head) >= 24:  # JPEG 2000: SOC, then SIZ
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", head[8:24])
        return xsiz - xo, ysiz - yo
    if not head.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 9 <= len(head):
        if head[offset] != 0xFF:
            return None
        marker = head[offset + 1]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            height, width = struct.unpack(">HH", head[offset + 5:offset + 9])
            return width, height
        offset += 2 + struct.unpack(">H", head[offset + 2:offset + 4])[0]
    return None


# --- JPEG 2000 at a reduced resolution --------------------------------------------------------------

@dataclass(frozen=True)
class _J2KHeader:
    """What the main header of a single-component JPEG 2000 codestream says about its samples."""

    width: int
    height: int
    precision: int  # bits per sample
    signed: bool
    levels: int  # wavelet decomposition levels: the most resolution levels a decoder can drop
    reversible: bool  # the 5/3 wavelet (lossless); else the 9/7


@cache
def _j2k_syntaxes() -> frozenset[str]:
    """The JPEG 2000 transfer syntaxes that Pillow's reader decodes: HTJ2K from OpenJPEG 2.5 on."""
    from PIL import features
    from pydicom import uid

    names = ["JPEG2000Lossless", "JPEG2000"]
    version = features.version("jpg_2000") or "0"
    if tuple(int(part) for part in re.findall(r"\d+", version)[:2]) >= (2, 5):
        names += ["HTJ2KLossless", "HTJ2KLosslessRPCL", "HTJ2K"]
    return frozenset(str(getattr(uid, name)) for name in names if hasattr(uid, name))


def _j2k_header(frame: bytes) -> _J2KHeader | None:
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
    return _J2KHeader(width, height, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), levels, reversible)


def _shrunk(length: int, reduce: int) -> int:
    """A side's length at ``reduce`` resolution levels down: halved ``reduce`` times, rounded up."""
    return -(-length >> reduce)


def _j2k_reduction(header: _J2KHeader, size: tuple[int, int]) -> int:
    """The most resolution levels to drop while both sides still cover ``size`` (height, width)."""
    reduce = 0
    while (reduce < header.levels and _shrunk(header.width, reduce + 1) >= size[1]
           and _shrunk(header.height, reduce + 1) >= size[0]):
        reduce += 1
    return reduce


def _j2k_decode(frame: bytes, header: _J2KHeader, reduce: int, dtype: np.dtype[Any]) -> np.ndarray:
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
    expected = (_shrunk(header.width, reduce), _shrunk(header.height, reduce))
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


def _reduced_j2k(
    ds: Any, frame: bytes, size: tuple[int, int],
) -> tuple[np.ndarray, tuple[float, float, float, float], float] | None:
    """The first frame of a grayscale JPEG 2000 DICOM at the smallest resolution level that covers ``size``.

    Returns the stored values, as ``ds.pixel_array`` would give them but smaller, the box that the
    full picture covers in them (see ``_reduced_box``) and the weight that evens out the wavelet's
    blur (see ``_spread_weight``); None where this way does not apply
    (another syntax, colour, nothing to drop, anything unusual), so that the caller takes the full
    decode. It may raise anything: the caller takes the full decode then too.
    """
    if str(ds.file_meta.TransferSyntaxUID) not in _j2k_syntaxes():
        return None
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or _number(ds, "SamplesPerPixel", 1) != 1:
        return None
    header = _j2k_header(frame)
    if header is None or (header.width, header.height) != (_number(ds, "Columns", 0), _number(ds, "Rows", 0)):
        return None
    allocated, stored = _number(ds, "BitsAllocated", 0), _number(ds, "BitsStored", 0)
    signed = _number(ds, "PixelRepresentation", 0) == 1
    # Where the codestream and the header disagree on the samples, pydicom reconciles them: full decode.
    if allocated not in (8, 16) or header.signed != signed or not 1 <= header.precision <= min(stored, allocated):
        return None
    reduce = _j2k_reduction(header, size)
    if reduce == 0:
        return None
    values = _j2k_decode(frame, header, reduce, np.dtype(f"{'i' if signed else 'u'}{allocated // 8}"))
    return values, _reduced_box(header, reduce), _spread_weight(header, reduce)


def _reduced_jpeg(
    ds: Any, frame: bytes, size: tuple[int, int],
) -> tuple[np.ndarray, tuple[float, float, float, float], float] | None:
    """The first frame of an 8-bit grayscale JPEG baseline DICOM decoded with DCT scaling (1/2, 1/4, 1/8).

    Pillow's draft mode picks the largest scale whose size still covers ``size``. Each output sample
    is the mean of its block, so the reduced image covers the full picture edge to edge (weight 0: no
    correction measured for it). None where this way does not apply; the caller takes the full decode
    then, and when this raises.
    """
    from pydicom.uid import JPEGBaseline8Bit

    if ds.file_meta.TransferSyntaxUID != JPEGBaseline8Bit:
        return None
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or _number(ds, "SamplesPerPixel", 1) != 1 \
            or _number(ds, "BitsAllocated", 0) != 8 or _number(ds, "PixelRepresentation", 0) != 0:
        return None
    image = Image.open(io.BytesIO(frame), formats=["JPEG"])
    width, height = image.size
    if (width, height) != (_number(ds, "Columns", 0), _number(ds, "Rows", 0)) or image.mode != "L":
        return None
    image.draft("L", (size[1], size[0]))
    image.load()
    if image.size == (width, height):
        return None  # nothing to drop
    scale_x, scale_y = width / image.width, height / image.height
    return np.asarray(image, dtype=np.uint8), (0.0, 0.0, width / scale_x, height / scale_y), 0.0


# The variance, in samples of the level it works at, of each wavelet's low-pass analysis filter
# (taps normalised to sum 1): the 5/3's [-1, 2, 6, 2, -1] / 8 is a little sharper than no filter at
# all, the 9/7's a little smoother.
_LOW_PASS_VARIANCE = {True: -0.5, False: 0.46035}


def _spread_weight(header: _J2KHeader, reduce: int) -> float:
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


def _spread(pixels: np.ndarray, weight: float) -> np.ndarray:
    """``pixels`` through the separable filter [weight, 1 - 2 weight, weight], edges repeated."""
    padded = np.pad(pixels, 1, mode="edge")
    rows = weight * (padded[:-2] + padded[2:]) + (1.0 - 2.0 * weight) * padded[1:-1]
    return (weight * (rows[:, :-2] + rows[:, 2:]) + (1.0 - 2.0 * weight) * rows[:, 1:-1]).astype(np.float32)


# A full-size frame is averaged down to no less than this many times the model's input on each side
# before its LUT; the one resampling filter then does the rest.
_BLOCK_GAP = 3


def _block_sums(
    ds: Any, array: np.ndarray, size: tuple[int, int],
) -> tuple[np.ndarray, tuple[float, float, float, float] | None, int] | None:
    """A large grayscale frame as the sums of its k x k blocks: the LUT and the resize see k**2 fewer pixels.

    Only where the window can be taken through the blocks' means: a rescale (no Modality LUT
    Sequence) and a LINEAR or LINEAR_EXACT window are one straight line between the two stored values
    where the window saturates. The stored values are first clipped to those two, so that a block the
    window clips in part averages what the window shows, not what it hides: such a block's value
    differs from the mean of the exact decode's by at most one stored value's step of the window
    (1/4095 of the range for a 12-bit full-range window); every other block's is the same. k is the
    largest that leaves at least ``_BLOCK_GAP`` times ``size`` on each side. Returns the sums (integers,
    so that the window still goes through a table), the box of the full picture's extent in them (None
    when k divides both sides) and k**2; None where this does not apply (the caller goes on with
    ``array`` as it is). ``array`` is clipped in place when it is writable: the caller is done with it.
    """
    from pydicom.pixels import apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if array.ndim != 2 or array.dtype.kind not in "iu" or photometric not in ("MONOCHROME1", "MONOCHROME2") \
            or "ModalityLUTSequence" in ds or ds.get("VOILUTSequence"):
        return None
    window = _first_window(ds)
    height, width = array.shape
    k = min(height // (_BLOCK_GAP * size[0]), width // (_BLOCK_GAP * size[1]))
    if window is None or window[2] not in ("LINEAR", "LINEAR_EXACT") or k < 2:
        return None
    low, high = int(array.min()), int(array.max())
    with _codec(DICOM, _PYDICOM_DAMAGED):
        modality = np.asarray(apply_modality_lut(np.arange(low, high + 1, dtype=np.int64), ds), np.float64)
    table = _apply_window(modality, *window)
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
    return total, box, k * k


def _reduced_box(header: _J2KHeader, reduce: int) -> tuple[float, float, float, float]:
    """Where the full picture lies in a decode ``reduce`` levels down, in its pixel coordinates.

    Sample k of the low-pass band stands for the full image's sample k * 2**reduce (the wavelet
    keeps the even samples), not for the middle of the 2**reduce samples from there: a resize that
    took the reduced image for the whole picture would shift it by up to half a reduced pixel.
    """
    scale = 1 << reduce
    shift = 0.5 - 0.5 / scale
    return shift, shift, header.width / scale + shift, header.height / scale + shift
