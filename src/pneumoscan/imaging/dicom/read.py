"""DICOM reading: parse a file with pydicom, read its attributes safely, pseudonymise the patient, decode a frame."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np

from pneumoscan.domain import DICOM_FIELDS, DicomMeta, age_band, age_in_years
from pneumoscan.imaging.errors import PYDICOM_DAMAGED, Rejected, clean_text, codec
from pneumoscan.imaging.kinds import DICOM, HEAD


def read_dataset(data: bytes, *, header_only: bool) -> Any:
    """Parse a DICOM file; a data set without preamble is read only because detect_kind vouched for it.

    The file meta always ends up with a Transfer Syntax UID, as a UID: the one the file states, or
    for a data set without (usable) file meta, the encoding pydicom found.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    # Values are never validated on reading: pydicom's warnings quote the offending value, and that
    # value could be a patient's name or birth date.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    has_preamble = data[128:HEAD] == b"DICM"
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


def text(ds: Any, keyword: str, limit: int = 64) -> str | None:
    """An attribute as one line of printable text, at most ``limit`` characters; None when absent or empty."""
    value = ds.get(keyword) if ds is not None else None
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return clean_text(str(value), limit) or None


def number(ds: Any, keyword: str, default: int) -> int:
    """A single-valued integer attribute, ``default`` when absent or empty; a damaged value rejects the file."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # several values where one belongs, text, NaN
        raise Rejected(f"corrupt DICOM: {keyword} is not a single whole number") from None


def photometric(ds: Any) -> str:
    """The Photometric Interpretation (0028,0004), upper case, "" when absent."""
    return str(ds.get("PhotometricInterpretation", "")).strip().upper()


def patient_ref(patient_id: str, salt: bytes) -> str:
    """A salted SHA-256 of a PatientID, so studies of one patient can be linked without storing the ID."""
    return hashlib.sha256(salt + b"\x00" + patient_id.strip().encode()).hexdigest()


ACCESSION_SHOWN = 12  # hex digits of an AccessionNumber's salted hash kept when the number itself is not


def metadata(header: Any, salt: bytes, store_accession: bool = False) -> DicomMeta:
    """The header's fields that are stored (``DICOM_FIELDS``), with the PatientID only as its salted hash.

    The AccessionNumber as it is with ``store_accession``, else "ref-" and the first digits of its salted hash.
    The patient's age at the study (PatientAge, or birth date and study date) is kept only as its band.
    """
    values = {name: text(header, keyword, limit) for name, (keyword, limit) in DICOM_FIELDS.items()}
    pid = text(header, "PatientID", 256)
    accession = text(header, "AccessionNumber", 64)
    if accession and not store_accession:
        accession = "ref-" + hashlib.sha256(salt + b"\x01" + accession.strip().encode()).hexdigest()[:ACCESSION_SHOWN]
    study_date = text(header, "StudyDate", 8) or text(header, "SeriesDate", 8) or text(header, "AcquisitionDate", 8)
    band = age_band(age_in_years(text(header, "PatientAge", 8), text(header, "PatientBirthDate", 8), study_date))
    return DicomMeta(**values, patient_ref=patient_ref(pid, salt) if pid else None, accession=accession,
                     age_band=band)


def first_frame(ds: Any) -> np.ndarray:
    """pydicom's full decode of the first frame, whatever the number of frames: the stored values.

    RLE goes to pydicom's own decoder: the faster pylibjpeg-rle (Rust) panics on some damaged data,
    printing to stderr as it goes.
    """
    from pydicom.uid import RLELossless

    rle = ds.file_meta.TransferSyntaxUID == RLELossless
    ds.pixel_array_options(index=0, **({"decoding_plugin": "pydicom"} if rle else {}))
    with codec(DICOM, PYDICOM_DAMAGED):
        return np.asarray(ds.pixel_array)
