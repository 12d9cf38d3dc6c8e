"""Imaging stage: detect a file's kind by content and decode it to a normalized grayscale array."""

from __future__ import annotations

from pneumoscan.imaging.decoder import decode
from pneumoscan.imaging.dicom.read import patient_ref
from pneumoscan.imaging.errors import Ignored, ImagingError, InternalError, Rejected, Unavailable, clean_text
from pneumoscan.imaging.image import DecodedImage
from pneumoscan.imaging.kinds import DICOM, GIF, JPEG, PNG, TIFF, detect_kind, looks_complete

__all__ = [
    "DICOM", "GIF", "JPEG", "PNG", "TIFF", "DecodedImage", "Ignored", "ImagingError", "InternalError", "Rejected",
    "Unavailable", "clean_text", "decode", "detect_kind", "looks_complete", "patient_ref",
]
