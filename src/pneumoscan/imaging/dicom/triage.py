"""DICOM triage: refuse, before decoding any pixel, what is not a chest radiograph or is too large to decode."""

from __future__ import annotations

import struct
from typing import Any

from pneumoscan.config import DecodePolicy
from pneumoscan.domain import DicomMeta
from pneumoscan.imaging.dicom.read import number, text
from pneumoscan.imaging.errors import Ignored, Rejected
from pneumoscan.imaging.image import too_large

# SOP classes that hold no radiograph: a UID, and with a trailing dot the whole family below it too.
NOT_IMAGES = (
    ("1.2.840.10008.1.3.10", "a DICOMDIR (media directory)"),
    ("1.2.840.10008.5.1.4.1.1.88.", "a structured report or key object selection"),
    ("1.2.840.10008.5.1.4.1.1.11.", "a presentation state"),
    ("1.2.840.10008.5.1.4.1.1.481.", "a radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.104.", "an encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.9.", "a waveform"),
    ("1.2.840.10008.5.1.4.1.1.66.", "raw data, a registration, a segmentation or fiducials"),
)

# Modalities of objects that hold no image (reports, key objects, presentation states, RT, waveforms...).
NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "DOC", "REG", "SEG", "FID", "PLAN", "RWV", "RTSTRUCT", "RTPLAN",
                                  "RTDOSE", "RTRECORD", "ECG", "HD", "AU", "EPS", "ASMT"})

# Start Of Frame markers of the JPEG processes (SOF0 to SOF15 but DHT, JPG and DAC) and JPEG-LS (SOF55).
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7))


def triage(header: Any, meta: DicomMeta, policy: DecodePolicy) -> None:
    """Reject, from the header alone, what is not a chest radiograph or is too large to decode."""
    from pydicom.uid import UID

    sop = text(header, "SOPClassUID") or text(header.file_meta, "MediaStorageSOPClassUID")
    for prefix, what in NOT_IMAGES:
        if sop is not None and (sop == prefix.rstrip(".") or (prefix.endswith(".") and sop.startswith(prefix))):
            raise Ignored(f"not an image: {UID(sop).name} is {what}", meta)
    if "DirectoryRecordSequence" in header:
        raise Ignored("not an image: a DICOMDIR (media directory)", meta)
    if meta.modality is not None and meta.modality.upper() in NON_IMAGE_MODALITIES:
        raise Ignored(f"not an image: modality {meta.modality}", meta)
    modalities, body_parts = policy.modalities, policy.body_parts
    if meta.modality is not None and modalities and meta.modality.upper() not in modalities:
        raise Rejected(f"modality {meta.modality} is not a radiograph (allowed: {', '.join(sorted(modalities))})")
    if meta.body_part is not None and body_parts and meta.body_part.upper() not in body_parts:
        raise Rejected(f"body part {meta.body_part} is not allowed (allowed: {', '.join(sorted(body_parts))})")
    if meta.view_position is not None and policy.views and meta.view_position.upper() not in policy.views:
        # Stored, with its study, but never scored as if it were frontal.
        raise Rejected(f"not assessed: view {meta.view_position} (the model reads {', '.join(sorted(policy.views))})")
    if error := too_large(number(header, "Columns", 0), number(header, "Rows", 0), policy.max_pixels):
        raise error


def check_codestream(ds: Any, max_pixels: int) -> bytes | None:
    """Refuse a compressed frame whose own header claims more pixels than allowed, before decoding it.

    The codecs size their output from the codestream, not from Rows and Columns. Returns the first
    frame's compressed bytes, None for native (uncompressed) pixel data.
    """
    from pydicom.encaps import generate_frames

    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return None
    frame = bytes(next(generate_frames(ds.PixelData, number_of_frames=number(ds, "NumberOfFrames", 1)), b""))
    dims = codestream_size(frame[:65536])
    if dims is not None and (error := too_large(*dims, max_pixels)):
        raise error
    return frame


def codestream_size(head: bytes) -> tuple[int, int] | None:
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
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", head[offset + 5:offset + 9])
            return width, height
        offset += 2 + struct.unpack(">H", head[offset + 2:offset + 4])[0]
    return None
