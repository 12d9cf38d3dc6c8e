"""The study result as a DICOM structured report: Enhanced SR, TID 1500 measurement report, IHE AI Results style.

The report holds the finding (pneumonia, or normal), the probability and the threshold, whether the
images are within the population the model was validated on (outside when any instance is), the model's
name and version as the algorithm and the observing device, and references to the instances it is
about. It is marked UNVERIFIED: no person has read it. Patient and study attributes are copied at send
time from the received files, which is what a PACS needs to file the report with its study; the
database never held them. Its UIDs derive from the study UID and the result's revision, so a report
sent twice (a crash between the peer's success and our commit) is the same object to the PACS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pneumoscan.db import studies
from pneumoscan.db.schema import Study
from pneumoscan.dicomnet.sender import SendError
from pneumoscan.domain import Domain, Label, Status

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

SCHEME = "99PNEUMOSCAN"  # a private coding scheme for the concepts no standard code names

# The coded concepts of the report: DICOM's, SNOMED CT's and UCUM's from pydicom's code dictionary;
# pneumonia (SNOMED CT 233604007) is not in it, and the last three have no standard code.
FINDING = codes.DCM.Finding
FINDINGS: dict[Label, Code] = {Label.PNEUMONIA: Code("233604007", "SCT", "Pneumonia"), Label.NORMAL: codes.SCT.Normal}
NO_UNITS = codes.UCUM.NoUnits
PROBABILITY = Code("PROBABILITY", SCHEME, "Probability of pneumonia")
THRESHOLD = Code("THRESHOLD", SCHEME, "Decision threshold")
PROCEDURE = Code("CHEST-XR", SCHEME, "Chest radiograph screening for pneumonia")
# The domain gate: whether the study's images are like those the model was validated on.
POPULATION = Code("POPULATION", SCHEME, "Validated population of the model")
WITHIN = {Domain.IN: Code("WITHIN", SCHEME, "Within the validated population"),
          Domain.OUT: Code("OUTSIDE", SCHEME, "Outside the validated population: operating point may not hold")}

REPORT_SERIES_NUMBER = 9901
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"

# Type 2 attributes of the patient and study modules that the report must carry (empty if unknown).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")
# What else the report takes from a received file: how to refer to it (and what highdicom checks of an
# image it refers to), the character set of its names, the issuers of its identifiers, and the equipment
# that acquired it (highdicom lists that as contributing). Nothing else: given the whole header,
# highdicom copies every attribute of the Patient and Patient Study modules (age, weight, allergies,
# medical alerts, history, comments), and the report carries only what files it with its study.
_REFERENCE = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows",
              "Columns", "SamplesPerPixel", "PixelRepresentation", "NumberOfFrames")
_IDENTIFYING = ("SpecificCharacterSet", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
                "IssuerOfAccessionNumberSequence")
_EQUIPMENT = ("Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber", "InstitutionName",
              "InstitutionalDepartmentName", "InstitutionAddress", "StationName", "AcquisitionDateTime",
              "AcquisitionDate", "AcquisitionTime")


def report_series_uid(study_uid: str) -> str:
    """The one series of a study's reports."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[study_uid, "pneumoscan report series"]))


def output_uids(study_uid: str, revision: int) -> tuple[str, str]:
    """(report, heatmap capture) SOP Instance UIDs of a study's result at ``revision``: the same on every attempt, and
    recorded before the first, so that they are known as pneumoscan's own outputs if a PACS routes them back."""
    from pydicom.uid import generate_uid

    return (str(generate_uid(entropy_srcs=[study_uid, "pneumoscan report", str(revision)])),
            str(generate_uid(entropy_srcs=[study_uid, "pneumoscan heatmap", str(revision)])))


def predecessor_reference(study_uid: str, report_uid: str) -> Dataset:
    """What the Predecessor Documents Sequence needs of the report a new one replaces (PS3.3 C.17.2.3)."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.StudyInstanceUID, item.SeriesInstanceUID = study_uid, report_series_uid(study_uid)
    item.SOPClassUID, item.SOPInstanceUID = ENHANCED_SR, report_uid
    return item


def filing_header(header: Dataset) -> Dataset:
    """The attributes of a received file's ``header`` that an object we derive from it may carry (see above),
    type 2 ones empty if absent: what files the object with its study, and no more about the patient."""
    from pydicom.dataset import Dataset

    kept = Dataset()
    for keyword in (*_REFERENCE, *_IDENTIFYING, *_EQUIPMENT, *_TYPE2):
        if keyword in header:
            kept[keyword] = header[keyword]
        elif keyword in _TYPE2:  # empty when the modality left them out, as DICOM allows
            setattr(kept, keyword, "")
    return kept


def _sources(study_uid: str, instances: list[studies.Instance]) -> list[tuple[studies.Instance, Dataset]]:
    """Each instance with the filing attributes of its received file (patient and study attributes come from here)."""
    import pydicom

    found = []
    for instance in instances:
        for path in instance.paths:
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except (OSError, ValueError, pydicom.errors.InvalidDicomError):
                continue
            if str(header.get("StudyInstanceUID", "")) == study_uid:
                found.append((instance, filing_header(header)))
                break
    return found


def build_report(study: Study, instances: list[studies.Instance], predecessor: str | None = None) -> Any:
    """The structured report (a highdicom ``EnhancedSR``) of ``study``'s result, about its instances.

    ``predecessor``, the UID of the report this one replaces (an earlier revision's, already at the PACS), goes in
    its Predecessor Documents Sequence, as DICOM asks of an amended report.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    sources = _sources(study.study_uid, instances)
    if not sources:
        raise SendError(f"no received file of study {study.study_uid} is left on disk to address the report to")
    version = study.model_version or "unknown"
    algorithm = hd.sr.AlgorithmIdentification(name="pneumoscan", version=version)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["pneumoscan device", version]), name="pneumoscan",
            manufacturer_name="pneumoscan", model_name=version))
    assessed = [header for instance, header in sources if instance.status == Status.DONE and instance.label]
    evaluations = []
    measurements = []
    if study.label is not None and study.probability is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(FINDING, FINDINGS[Label(study.label)]))
        measurements.append(hd.sr.Measurement(PROBABILITY, float(study.probability), NO_UNITS,
                                              algorithm_id=algorithm))
        if study.threshold is not None:
            measurements.append(hd.sr.Measurement(THRESHOLD, float(study.threshold), NO_UNITS,
                                                  algorithm_id=algorithm))
    verdicts = {Domain(instance.domain) for instance, _ in sources if instance.domain}
    if verdicts:
        evaluations.append(hd.sr.QualitativeEvaluation(POPULATION, WITHIN[Domain.OUT if Domain.OUT in verdicts
                                                                           else Domain.IN]))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[study.study_uid, "pneumoscan finding"]),
            identifier="pneumonia screening"),
        algorithm_id=algorithm, measurements=measurements or None, qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in assessed] or None)
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=device),
                                     procedure_reported=PROCEDURE, imaging_measurements=[group])
    return hd.sr.EnhancedSR(
        evidence=[header for _, header in sources], content=report[0],
        series_instance_uid=report_series_uid(study.study_uid), series_number=REPORT_SERIES_NUMBER,
        sop_instance_uid=output_uids(study.study_uid, study.revision)[0],
        instance_number=study.revision, manufacturer="pneumoscan", is_complete=True, is_final=False,
        is_verified=False,
        previous_versions=[predecessor_reference(study.study_uid, predecessor)] if predecessor else None)
