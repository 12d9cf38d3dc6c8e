"""The model heatmap as a DICOM Secondary Capture, filed with its study beside the report.

The picture comes drawn and captioned (``services.heatmaps``); this module only wraps its pixels with
the source image's filing attributes, so dicomnet needs neither the model nor TensorFlow.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.dicomnet.sr import filing_header, output_uids

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

CAPTURE_SERIES_NUMBER = 9902


def read_header(data: bytes) -> Dataset:
    """The header of a received file's bytes (no pixel data)."""
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def build_capture(picture: np.ndarray, source: Dataset, *, study_uid: str, revision: int,
                  model_version: str) -> Any:
    """A Secondary Capture (a highdicom ``SCImage``) of ``picture`` (RGB uint8, the heatmap drawn over the
    ``source`` image, its caption burnt in), labelled as a model heatmap and filed with the source's study.

    Its UIDs derive from the study UID and the result's revision, as the report's do.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    orientation = source.get("PatientOrientation")
    capture = hd.sc.SCImage.from_ref_dataset(
        filing_header(source), np.ascontiguousarray(picture), "RGB", 8, "PATIENT",
        series_instance_uid=generate_uid(entropy_srcs=[study_uid, "pneumoscan heatmap series"]),
        series_number=CAPTURE_SERIES_NUMBER,
        sop_instance_uid=output_uids(study_uid, revision)[1],
        instance_number=revision, manufacturer="pneumoscan",
        # As the source was oriented; a frontal chest film is conventionally (L, F) when it does not say.
        patient_orientation=tuple(orientation) if orientation is not None and len(orientation) == 2 else ("L", "F"))
    capture.SeriesDescription = "pneumoscan model heatmap"
    capture.ImageComments = (f"Grad-CAM heatmap of {model_version} over instance {source.SOPInstanceUID}: where the "
                             "model looked, not a finding; not for diagnosis")
    capture.BurnedInAnnotation = "YES"
    capture.DerivationDescription = "model heatmap (Grad-CAM) drawn over the source image"
    capture.SourceImageSequence = [_source_reference(source)]
    return capture


def _source_reference(header: Dataset) -> Dataset:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
    return item
