"""Study results back to PACS: a DICOM structured report per completed study, sent by C-STORE, retried until it lands.

The report (Enhanced SR, TID 1500 measurement report, in the way of IHE AI Results) holds the
finding (pneumonia, or normal), the probability and the threshold, the model's name and version as
the algorithm and the observing device, and references to the instances it is about. It is marked
UNVERIFIED: no person has read it. Patient and study attributes are copied at send time from the
received files, which is what a PACS needs to file the report with its study; the database never
held them. Its UIDs derive from the study UID and the result's revision, so a report sent twice (a
crash between the peer's success and our commit) is the same object to the PACS.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from pneumoscan.config import Settings
from pneumoscan.db import Database, studies
from pneumoscan.db.schema import Study
from pneumoscan.domain import Label
from pneumoscan.models.bundle import ModelBundle

log = logging.getLogger(__name__)

SCHEME = "99PNEUMOSCAN"  # a private coding scheme for the concepts no standard code names


class SendError(Exception):
    """The report could not be built or the peer did not accept it; the reason is for the log and the database."""


def _codes() -> dict[str, Any]:
    from highdicom.sr import CodedConcept

    return {
        "finding": CodedConcept("121071", "DCM", "Finding"),
        Label.PNEUMONIA: CodedConcept("233604007", "SCT", "Pneumonia"),
        Label.NORMAL: CodedConcept("17621005", "SCT", "Normal"),
        "probability": CodedConcept("PROBABILITY", SCHEME, "Probability of pneumonia"),
        "threshold": CodedConcept("THRESHOLD", SCHEME, "Decision threshold"),
        "procedure": CodedConcept("CHEST-XR", SCHEME, "Chest radiograph screening for pneumonia"),
        "unit": CodedConcept("1", "UCUM", "no units"),
    }


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


def _filing_header(header: Any) -> Any:
    """The attributes of ``header`` that the report may take from it (see above), type 2 ones empty if absent."""
    from pydicom.dataset import Dataset

    kept = Dataset()
    for keyword in (*_REFERENCE, *_IDENTIFYING, *_EQUIPMENT, *_TYPE2):
        if keyword in header:
            kept[keyword] = header[keyword]
        elif keyword in _TYPE2:  # empty when the modality left them out, as DICOM allows
            setattr(kept, keyword, "")
    return kept


def _sources(study_uid: str, instances: list[studies.Instance]) -> list[tuple[studies.Instance, Any]]:
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
                found.append((instance, _filing_header(header)))
                break
    return found


def build_report(study: Study, instances: list[studies.Instance]) -> Any:
    """The structured report of ``study``'s result, about its instances."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    sources = _sources(study.study_uid, instances)
    if not sources:
        raise SendError(f"no received file of study {study.study_uid} is left on disk to address the report to")
    concepts = _codes()
    version = study.model_version or "unknown"
    algorithm = hd.sr.AlgorithmIdentification(name="pneumoscan", version=version)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["pneumoscan device", version]), name="pneumoscan",
            manufacturer_name="pneumoscan", model_name=version))
    assessed = [header for instance, header in sources if instance.status == "done" and instance.label]
    evaluations = []
    measurements = []
    if study.label is not None and study.probability is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(concepts["finding"], concepts[Label(study.label)]))
        measurements.append(hd.sr.Measurement(concepts["probability"], float(study.probability), concepts["unit"],
                                              algorithm_id=algorithm))
        if study.threshold is not None:
            measurements.append(hd.sr.Measurement(concepts["threshold"], float(study.threshold), concepts["unit"],
                                                  algorithm_id=algorithm))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[study.study_uid, "pneumoscan finding"]),
            identifier="pneumonia screening"),
        algorithm_id=algorithm, measurements=measurements or None, qualitative_evaluations=evaluations or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(h) for h in assessed] or None)
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=device),
                                     procedure_reported=concepts["procedure"], imaging_measurements=[group])
    return hd.sr.EnhancedSR(
        evidence=[header for _, header in sources], content=report[0],
        series_instance_uid=generate_uid(entropy_srcs=[study.study_uid, "pneumoscan report series"]),
        series_number=9901,
        sop_instance_uid=generate_uid(entropy_srcs=[study.study_uid, "pneumoscan report", str(study.revision)]),
        instance_number=study.revision, manufacturer="pneumoscan", is_complete=True, is_final=False,
        is_verified=False)


def build_heatmap_capture(study: Study, instances: list[studies.Instance], bundle: ModelBundle,
                          settings: Settings) -> Any:
    """A Secondary Capture of the study's most suspicious assessed image with the model's Grad-CAM heatmap
    drawn over it, burnt in and labelled as a model heatmap, filed with the study like the report."""
    import io

    import highdicom as hd
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    from pneumoscan.imaging import ImagingError, decode, read_content
    from pneumoscan.models.explain import overlay

    scored = [i for i in instances if i.status == "done" and i.probability is not None]
    if not scored:
        raise SendError(f"study {study.study_uid} has no assessed image to draw a heatmap on")
    top = max(scored, key=lambda i: float(i.probability or 0))
    found = read_content(top.paths, top.sha256) if top.sha256 else None
    if found is None:
        raise SendError(f"the file of instance {top.sop_instance_uid} is no longer on disk")
    data = found[1]
    try:
        pixels = decode(data, None, settings.decode_policy).pixels
        model_input = decode(data, (bundle.input_size, bundle.input_size), settings.decode_policy).pixels
    except ImagingError as exc:
        raise SendError(f"cannot decode instance {top.sop_instance_uid} for its heatmap: {exc.reason}") from None
    heatmap = bundle.explain(model_input[None])[0]
    picture = _caption(overlay(pixels, heatmap),
                       f"MODEL HEATMAP (Grad-CAM), {bundle.version}: not an image for diagnosis")
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    orientation = header.get("PatientOrientation")
    capture = hd.sc.SCImage.from_ref_dataset(
        _filing_header(header), np.ascontiguousarray(picture), "RGB", 8, "PATIENT",
        series_instance_uid=generate_uid(entropy_srcs=[study.study_uid, "pneumoscan heatmap series"]),
        series_number=9902,
        sop_instance_uid=generate_uid(entropy_srcs=[study.study_uid, "pneumoscan heatmap", str(study.revision)]),
        instance_number=study.revision, manufacturer="pneumoscan",
        # As the source was oriented; a frontal chest film is conventionally (L, F) when it does not say.
        patient_orientation=tuple(orientation) if orientation is not None and len(orientation) == 2 else ("L", "F"))
    capture.SeriesDescription = "pneumoscan model heatmap"
    capture.ImageComments = (f"Grad-CAM heatmap of {bundle.version} over instance {top.sop_instance_uid}: where the "
                             "model looked, not a finding; not for diagnosis")
    capture.BurnedInAnnotation = "YES"
    capture.DerivationDescription = "model heatmap (Grad-CAM) drawn over the source image"
    capture.SourceImageSequence = [_source_reference(header)]
    return capture


def _caption(picture: Any, text: str) -> Any:
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, 14), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(image)


def _source_reference(header: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
    return item


def send(objects: list[Any], settings: Settings) -> None:
    """C-STORE ``objects`` to the results destination in one association; SendError unless each succeeds."""
    from pynetdicom import AE

    destination = settings.destination
    if destination is None:
        raise SendError("no results destination is set (PNEUMOSCAN_RESULTS_DESTINATION)")
    called, host, port = destination
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    for item in objects:
        ae.add_requested_context(item.SOPClassUID, item.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise SendError(f"{called}@{host}:{port} refused or did not answer the association")
    try:
        for item in objects:
            status = assoc.send_c_store(item)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"{called}@{host}:{port} gave no C-STORE response")
            if code != 0x0000:
                raise SendError(f"{called}@{host}:{port} answered C-STORE status 0x{code:04X}")
    finally:
        assoc.release()


@dataclass(frozen=True)
class Round:
    settled: int
    sent: int
    failed: int


def settle_and_send(db: Database, settings: Settings, bundle: ModelBundle) -> Round:
    """One round: complete the studies that went quiet, then send every result that is due (each in its own
    transaction, so one unreachable peer or one bad study holds up nothing else)."""
    model_version = bundle.version
    sending = settings.destination is not None
    with db.begin() as session:
        settled = studies.settle(session, model_version, settings.study_stable_seconds, send=sending)
    for study in settled:
        log.info("study %s complete: %s (%d of %d instances assessed)", study.study_uid, study.label or "not assessed",
                 study.assessed_count, study.instance_count)
    sent = failed = 0
    while sending:
        with db.begin() as session:
            batch = studies.due(session, limit=1)
            if not batch:
                break
            study = batch[0]
            try:
                instances = studies.instances(session, study.study_uid, study.model_version or "")
                objects = [build_report(study, instances)]
                if settings.results_heatmap:
                    objects.append(build_heatmap_capture(study, instances, bundle, settings))
                send(objects, settings)
            except (SendError, OSError, ValueError, AttributeError, TypeError) as exc:
                delay = studies.mark_failed(study, str(exc))
                log.warning("could not send the result of study %s (attempt %d): %s; next try in %.0f s",
                            study.study_uid, study.send_attempts, exc, delay)
                failed += 1
                # Let the others wait for the next round rather than hammer a peer that is down.
                break
            studies.mark_sent(study)
            sent += 1
            log.info("sent the result of study %s", study.study_uid)
    return Round(len(settled), sent, failed)


class StudyMonitor:
    """Runs ``settle_and_send`` every ``interval`` seconds in a thread (embedded mode's watch)."""

    def __init__(self, db: Database, settings: Settings, bundle: ModelBundle, interval: float = 2.0) -> None:
        self.db, self.settings, self.bundle, self.interval = db, settings, bundle, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="study-monitor", daemon=True)

    def __enter__(self) -> StudyMonitor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        while not self._stop.wait(self.interval):
            try:
                settle_and_send(self.db, self.settings, self.bundle)
            except SQLAlchemyError as exc:
                log.warning("study results: the database did not answer (%s); trying again", exc)
