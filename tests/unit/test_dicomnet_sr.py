"""The structured report's coded concepts (pydicom's code dictionary, same codes as ever) and the capture's filing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pneumoscan.db.schema import Study
from pneumoscan.db.studies import Instance
from pneumoscan.dicomnet import capture, sr
from pneumoscan.dicomnet.sender import SendError
from pneumoscan.domain import Label, Status

# The concepts as the report spelt them by hand before it took pydicom's `codes`: (value, scheme, meaning).
WRITTEN_BEFORE = {
    "finding": ("121071", "DCM", "Finding"),
    Label.PNEUMONIA: ("233604007", "SCT", "Pneumonia"),
    Label.NORMAL: ("17621005", "SCT", "Normal"),
    "probability": ("PROBABILITY", "99PNEUMOSCAN", "Probability of pneumonia"),
    "threshold": ("THRESHOLD", "99PNEUMOSCAN", "Decision threshold"),
    "procedure": ("CHEST-XR", "99PNEUMOSCAN", "Chest radiograph screening for pneumonia"),
    "unit": ("1", "UCUM", "no units"),
}


def _triple(code: Any) -> tuple[str, str, str]:
    return (str(code.value), str(code.scheme_designator), str(code.meaning))


def test_the_concepts_keep_their_codes_and_meanings() -> None:
    now = {"finding": sr.FINDING, **sr.FINDINGS, "probability": sr.PROBABILITY, "threshold": sr.THRESHOLD,
           "procedure": sr.PROCEDURE, "unit": sr.NO_UNITS}
    assert {key: _triple(code) for key, code in now.items()} == WRITTEN_BEFORE
    assert set(sr.FINDINGS) == set(Label)


def _source(tmp_path: Path, study_uid: str) -> Path:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study_uid
    ds.PatientAge, ds.AdditionalPatientHistory = "064Y", "smoker"  # clinical: never copied into the report
    path = tmp_path / "source.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _coded(ds: Any) -> set[tuple[str, str, str]]:
    """Every (value, scheme, meaning) that the content tree of ``ds`` names, holds or measures in."""
    found = set()
    for sequence in ("ConceptNameCodeSequence", "ConceptCodeSequence", "MeasurementUnitsCodeSequence"):
        for item in ds.get(sequence, []):
            found.add((str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning)))
    for item in ds.get("MeasuredValueSequence", []):
        found |= _coded(item)
    for item in ds.get("ContentSequence", []):
        found |= _coded(item)
    return found


@pytest.mark.parametrize("label", list(Label))
def test_the_report_carries_the_same_codes_as_before(tmp_path: Path, label: Label) -> None:
    from pydicom.uid import generate_uid

    study_uid = str(generate_uid())
    path = _source(tmp_path, study_uid)
    study = Study(study_uid=study_uid, label=label, probability=0.8 if label == Label.PNEUMONIA else 0.1,
                  threshold=0.5, model_version="tiny-1", revision=2)
    instance = Instance(1, None, [str(path)], None, Status.DONE, label, 0.8)
    report = sr.build_report(study, [instance])

    coded = _coded(report)
    wanted = {"finding", label, "probability", "threshold", "procedure", "unit"}
    assert {WRITTEN_BEFORE[key] for key in wanted} <= coded
    other = Label.NORMAL if label == Label.PNEUMONIA else Label.PNEUMONIA
    assert WRITTEN_BEFORE[other] not in coded
    assert (report.VerificationFlag, report.CompletionFlag, int(report.InstanceNumber)) == ("UNVERIFIED", "COMPLETE", 2)
    assert report.StudyInstanceUID == study_uid
    assert "PatientAge" not in report and "AdditionalPatientHistory" not in report
    again = sr.build_report(study, [instance])
    assert again.SOPInstanceUID == report.SOPInstanceUID  # sent twice, the same object to the PACS


def test_a_report_with_no_file_left_on_disk_is_refused(tmp_path: Path) -> None:
    study = Study(study_uid="1.2.3", label=Label.NORMAL, probability=0.1, threshold=0.5, model_version="v",
                  revision=1)
    with pytest.raises(SendError, match=r"no received file of study 1\.2\.3"):
        sr.build_report(study, [Instance(1, None, [str(tmp_path / "gone.dcm")], None, Status.DONE, Label.NORMAL, 0.1)])


def test_the_capture_wraps_the_drawn_picture_and_files_it_with_the_study(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    study_uid = str(generate_uid())
    source = capture.read_header(_source(tmp_path, study_uid).read_bytes())
    picture = np.zeros((source.Rows, source.Columns, 3), np.uint8)
    picture[..., 0] = 200
    sc = capture.build_capture(picture, source, study_uid=study_uid, revision=3, model_version="tiny-1")
    assert (sc.StudyInstanceUID, sc.PatientID) == (study_uid, source.PatientID)
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID and int(sc.InstanceNumber) == 3
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.BurnedInAnnotation == "YES" and "tiny-1" in sc.ImageComments
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel) == ("RGB", 3)
    np.testing.assert_array_equal(sc.pixel_array, picture)
    assert "PatientAge" not in sc
