"""Imaging stage: detect a file's kind by content and decode it to a normalized grayscale array."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

JPEG, PNG, DICOM = "jpeg", "png", "dicom"

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ImagingError(Exception):
    """A file that cannot become a model input. ``transient`` errors may succeed on a retry."""

    transient = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Rejected(ImagingError):
    """Permanent: the bytes are not a usable chest radiograph. Retrying will not help."""


class Unavailable(ImagingError):
    """Transient: the file could not be read right now (permissions, vanished, locked)."""

    transient = True


@dataclass(frozen=True)
class DicomMeta:
    """The DICOM attributes pneumoscan stores. No names or birth dates, PatientID only as a salted hash."""

    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view_position: str | None = None
    study_date: str | None = None
    manufacturer: str | None = None
    patient_ref: str | None = None


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: ``pixels`` is float32 (height, width) in [0, 1], 0 black, 1 white."""

    pixels: np.ndarray
    kind: str
    dicom: DicomMeta | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def detect_kind(head: bytes) -> str | None:
    """Name the format of a file from its first bytes (at least 132), or None when unknown."""
    if head.startswith(_JPEG_MAGIC):
        return JPEG
    if head.startswith(_PNG_MAGIC):
        return PNG
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    return None


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
    size: tuple[int, int],
    *,
    salt: bytes = b"",
    max_pixels: int = 100_000_000,
    modalities: frozenset[str] = frozenset({"CR", "DX", "DR"}),
    body_parts: frozenset[str] = frozenset({"CHEST"}),
) -> DecodedImage:
    """Decode file bytes to a (height, width) = ``size`` float32 image in [0, 1].

    Raises ``Rejected`` with a human-readable reason for anything that is not a usable image.
    """
    if not data:
        raise Rejected("empty file (0 bytes)")
    kind = detect_kind(data[:132])
    if kind is None:
        raise Rejected("unrecognized format: not JPEG, PNG or DICOM (checked by content, not name)")
    if kind == DICOM:
        return _decode_dicom(data, size, salt, max_pixels, modalities, body_parts)
    return _decode_raster(data, kind, size, max_pixels)


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if pixels.shape == (height, width):
        return pixels.astype(np.float32, copy=False)
    image = Image.fromarray(pixels.astype(np.float32, copy=False), mode="F")
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _decode_raster(data: bytes, kind: str, size: tuple[int, int], max_pixels: int) -> DecodedImage:
    height, width = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > max_pixels:
                raise Rejected(
                    f"image too large: {image.width}x{image.height} pixels exceeds the limit of {max_pixels}"
                )
            frames = int(getattr(image, "n_frames", 1))
            if frames > 1:
                raise Rejected(f"animated {kind.upper()} with {frames} frames is not a radiograph")
            if kind == JPEG:
                # Decode at reduced scale straight from the DCT; never smaller than the target.
                image.draft("L", (width, height))
            pixels = _to_gray(image)
    except ImagingError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise Rejected(f"corrupt or truncated {kind.upper()}: {exc}") from None
    return DecodedImage(_resize(pixels, size), kind)


def _to_gray(image: Image.Image) -> np.ndarray:
    """Pixels of a Pillow image as float32 in [0, 1], whatever its mode."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _normalize(np.asarray(image, dtype=np.float32), robust=False)
    if image.mode == "F":
        return _normalize(np.asarray(image, dtype=np.float32), robust=False)
    if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1", "RGB", "L"):
        image.load()
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    raise Rejected(f"unsupported pixel mode {image.mode!r}")


def _normalize(values: np.ndarray, *, robust: bool) -> np.ndarray:
    if robust:
        low, high = np.percentile(values, (0.5, 99.5))
    else:
        low, high = float(values.min()), float(values.max())
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        raise Rejected("blank image: all pixels have the same value")
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _text(ds: object, keyword: str) -> str | None:
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _decode_dicom(
    data: bytes,
    size: tuple[int, int],
    salt: bytes,
    max_pixels: int,
    modalities: frozenset[str],
    body_parts: frozenset[str],
) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Rejected(f"corrupt or truncated DICOM header: {exc}") from None
    meta = DicomMeta(
        study_uid=_text(header, "StudyInstanceUID"),
        series_uid=_text(header, "SeriesInstanceUID"),
        sop_instance_uid=_text(header, "SOPInstanceUID"),
        modality=_text(header, "Modality"),
        body_part=_text(header, "BodyPartExamined"),
        view_position=_text(header, "ViewPosition"),
        study_date=_text(header, "StudyDate"),
        manufacturer=_text(header, "Manufacturer"),
        patient_ref=patient_ref(pid, salt) if (pid := _text(header, "PatientID")) else None,
    )
    if meta.modality is not None and modalities and meta.modality.upper() not in modalities:
        raise Rejected(f"modality {meta.modality} is not a radiograph (allowed: {', '.join(sorted(modalities))})")
    if meta.body_part is not None and body_parts and meta.body_part.upper() not in body_parts:
        raise Rejected(f"body part {meta.body_part} is not allowed (allowed: {', '.join(sorted(body_parts))})")
    rows, cols = int(getattr(header, "Rows", 0) or 0), int(getattr(header, "Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise Rejected(f"image too large: {cols}x{rows} pixels exceeds the limit of {max_pixels}")

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if "PixelData" not in ds:
            raise Rejected("DICOM file has no pixel data")
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        array = ds.pixel_array
        notes: tuple[str, ...] = ()
        if frames > 1:
            array = array[0]
            notes = (f"multi-frame ({frames} frames): used the first",)
        if array.ndim == 3:  # colour: pydicom hands YBR over as RGB
            array = array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        values = apply_modality_lut(array, ds).astype(np.float32)
        has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
        if has_voi:
            values = apply_voi_lut(values, ds, index=0).astype(np.float32)
        pixels = _normalize(values, robust=not has_voi)
    except ImagingError:
        raise
    except Exception as exc:  # pydicom and its codecs raise many types on damaged data
        raise Rejected(f"corrupt or truncated DICOM pixel data: {type(exc).__name__}: {exc}") from None
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        pixels = 1.0 - pixels
    return DecodedImage(_resize(pixels, size), DICOM, meta, notes)
