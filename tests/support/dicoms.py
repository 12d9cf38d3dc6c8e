"""DICOM files made from the real fixture X-rays: Digital X-Ray data sets in every transfer syntax pneumoscan reads."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import jpeg_encoders, openjph, xrays

DIGITAL_XRAY_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation

# The identifying attributes written into every test DICOM, which must never reach the database.
PATIENT_ID = "PAT123"
PATIENT_NAME = "Doe^Jane"
PATIENT_BIRTH_DATE = "19800101"


def dicom_dataset(
    source: Path,
    *,
    photometric: str = "MONOCHROME2",
    stored: np.ndarray | None = None,
    bits: int = 12,
    modality: str = "DX",
    body_part: str | None = "CHEST",
    patient_id: str = PATIENT_ID,
    **extra: Any,
) -> Any:
    """A Digital X-Ray DICOM dataset (Explicit VR Little Endian; 16 bits allocated, 12 stored).

    The pixels are the real image scaled to 12 bits (``bits=8``: the 8-bit image itself, in 8 bits
    allocated); for MONOCHROME1 they are inverted (top - v) so that the picture looks the same.
    ``stored`` overrides the stored values (their bit patterns are kept, so signed values work with
    PixelRepresentation=1). ``extra`` sets further attributes by keyword (RescaleSlope, WindowCenter...).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    top = 2**bits - 1
    if stored is not None:
        values = np.asarray(stored)
    else:
        values = xrays.twelve_bit(source) if bits == 12 else xrays.gray(source)
        if photometric == "MONOCHROME1":
            values = top - values
    values = values.astype(np.uint8 if bits == 8 else np.uint16, casting="unsafe")

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_XRAY_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DIGITAL_XRAY_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.ViewPosition = "AP"
    ds.StudyDate = "20240315"
    ds.Manufacturer = "pneumoscan tests"
    ds.PatientID = patient_id
    ds.PatientName = PATIENT_NAME
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.PatientSex = "F"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.PixelData = values.astype(values.dtype.newbyteorder("<")).tobytes()
    return ds


# Windows that map the stored range exactly onto [0, 1] (PS3.3 C.11.2.1.2.1: (x - (c - 0.5)) / (w - 1) + 0.5),
# so that a DICOM made from a JPEG decodes to the JPEG's own picture, v / 4095 or v / 255.
IDENTITY_WINDOW_12 = {"WindowCenter": 2048, "WindowWidth": 4096}
IDENTITY_WINDOW_8 = {"WindowCenter": 128, "WindowWidth": 256}

# Every transfer syntax pneumoscan decodes: name -> lossless.
TRANSFER_SYNTAXES = {
    "implicit-le": True, "explicit-le": True, "explicit-be": True, "deflated": True,
    "jpeg-baseline": False, "jpeg-extended": False, "jpeg-lossless-sv1": True, "jpeg-lossless-p14": True,
    "jpeg-ls-lossless": True, "jpeg-ls-near-lossless": False,
    "j2k-lossless": True, "j2k": False, "rle": True, "htj2k-lossless": True,
}


def encode_htj2k(values: np.ndarray, bits: int, signed: bool) -> bytes:
    """A lossless HTJ2K codestream of ``values`` (``openjph``); without OpenJPH the test skips, or fails under CI.

    pytest is imported only then: the benchmarks make their HTJ2K inputs through ``openjph`` itself.
    """
    if not openjph.installed():
        import pytest

        if os.environ.get("CI"):
            pytest.fail(openjph.MISSING)
        pytest.skip(openjph.MISSING)
    return openjph.encode_htj2k(values, bits, signed)


def encode_dataset(ds: Any, syntax: str) -> Any:
    """Re-encode the pixel data of a ``dicom_dataset`` (native, little endian) in a transfer syntax, in place.

    JPEG baseline needs an 8-bit dataset (``bits=8``). RLE, JPEG-LS and JPEG 2000 use pydicom's own
    encoders (numpy, pyjpegls, pylibjpeg-openjpeg); JPEG baseline uses Pillow; 12-bit JPEG extended
    and JPEG lossless use the small encoders in ``jpeg_encoders`` (no package offers them).
    """
    from pydicom import uid
    from pydicom.encaps import encapsulate

    meta = ds.file_meta
    dtype = np.dtype("<u1" if ds.BitsAllocated == 8 else "<u2")
    values = np.frombuffer(ds.PixelData, dtype).reshape(-1, ds.Rows, ds.Columns)  # frames
    # JPEG codestreams hold BitsStored-bit patterns; signed values go in as their two's complement bits.
    patterns = values[0] & ((1 << ds.BitsStored) - 1)
    compress = {"rle": (uid.RLELossless, {}), "jpeg-ls-lossless": (uid.JPEGLSLossless, {}),
                "jpeg-ls-near-lossless": (uid.JPEGLSNearLossless, {"jls_error": 2}),
                "j2k-lossless": (uid.JPEG2000Lossless, {}), "j2k": (uid.JPEG2000, {"j2k_cr": [8]})}
    signed = bool(ds.get("PixelRepresentation", 0))
    if syntax == "explicit-le":
        pass
    elif syntax == "implicit-le":
        meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
    elif syntax == "explicit-be":
        meta.TransferSyntaxUID = uid.ExplicitVRBigEndian
        ds.PixelData = values.astype(dtype.newbyteorder(">")).tobytes()
    elif syntax == "deflated":
        meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    elif syntax in compress:
        target, options = compress[syntax]
        ds.compress(target, generate_instance_uid=False, **options)
    else:
        if syntax == "jpeg-baseline":
            assert ds.BitsAllocated == 8, "JPEG baseline holds 8-bit samples: build with bits=8"
            out = io.BytesIO()
            Image.fromarray(values[0], mode="L").save(out, format="JPEG", quality=95)
            frame, target = out.getvalue(), uid.JPEGBaseline8Bit
        elif syntax == "jpeg-extended":
            frame, target = jpeg_encoders.encode_extended12(patterns), uid.JPEGExtended12Bit
        elif syntax in ("jpeg-lossless-sv1", "jpeg-lossless-p14"):  # SV1 is one of process 14's predictors
            frame = jpeg_encoders.encode_lossless(patterns, ds.BitsStored)
            target = uid.JPEGLosslessSV1 if syntax == "jpeg-lossless-sv1" else uid.JPEGLossless
        elif syntax == "htj2k-lossless":  # JPEG 2000 codes values, not bit patterns: signed ones as such
            stored = values[0].view(np.int16 if ds.BitsAllocated == 16 else np.int8) if signed else values[0]
            frame, target = encode_htj2k(stored, ds.BitsStored, signed), uid.HTJ2KLossless
        else:
            raise ValueError(syntax)
        assert len(values) == 1, "the JPEG fixtures are single-frame"
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        meta.TransferSyntaxUID = target
    if not TRANSFER_SYNTAXES[syntax]:
        ds.LossyImageCompression = "01"
    return ds


def dicom_bytes(source: Path, *, syntax: str = "explicit-le", preamble: bool = True, file_meta: bool = True,
                **kwargs: Any) -> bytes:
    """A DICOM file built from a real image (see ``dicom_dataset``) in one of TRANSFER_SYNTAXES.

    By default a Part 10 file (128-byte preamble, ``DICM``, file meta). ``preamble=False`` writes
    the file meta and data set only; ``file_meta=False`` too writes the bare data set.
    """
    ds = encode_dataset(dicom_dataset(source, **kwargs), syntax)
    out = io.BytesIO()
    if preamble:
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    syntax_uid = ds.file_meta.TransferSyntaxUID
    if not file_meta:
        del ds.file_meta
    ds.save_as(out, enforce_file_format=False, implicit_vr=syntax_uid.is_implicit_VR,
               little_endian=syntax_uid.is_little_endian)
    return out.getvalue()


def write_dicom(source: Path, dest: Path, **kwargs: Any) -> Path:
    """Write a DICOM built from ``source`` (see ``dicom_dataset``) to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(dicom_bytes(source, **kwargs))
    return dest
