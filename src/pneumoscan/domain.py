"""The one vocabulary: statuses of an image, labels of a reading, and what a file can turn out to be.

Everything else (CLI choices, database constraints, model cards, API schemas) derives from these;
this module imports nothing of the project.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import date
from enum import StrEnum


class Status(StrEnum):
    """Where a stored image stands."""

    DONE = "done"  # classified by a model; see its predictions
    FAILED = "failed"  # could not be processed now (unreadable, internal error): the nightly job retries it
    REJECTED = "rejected"  # its bytes are not a usable chest X-ray: settled until `reclassify --all`
    IGNORED = "ignored"  # not for the model by rule: a non-image object (SR, KO, PR...) or pneumoscan's own output


class Outcome(StrEnum):
    """What happened to one input file in one run: a stored status, or skipped (nothing new to store)."""

    DONE = Status.DONE.value
    FAILED = Status.FAILED.value
    REJECTED = Status.REJECTED.value
    IGNORED = Status.IGNORED.value
    SKIPPED = "skipped"


class SkipReason(StrEnum):
    """Why a file was skipped: its content needs no new work."""

    SETTLED = "settled"  # its content is settled already: predicted by this model version, or rejected
    DUPLICATE = "duplicate"  # the same content as an earlier file of the same run


class Label(StrEnum):
    """A reading of a chest X-ray, by the model or by a person; the model's index order (0, 1)."""

    NORMAL = "NORMAL"
    PNEUMONIA = "PNEUMONIA"


class Domain(StrEnum):
    """Whether an image is like those the model was validated on (the domain gate, ``models.domain``)."""

    IN = "in"
    OUT = "out"  # an age band or an image unlike the validated population: the operating point may not hold


class Role(StrEnum):
    """What a web app user may do: review cases, or also manage users; a sender only stores studies (STOW-RS)."""

    REVIEWER = "reviewer"
    ADMIN = "admin"
    SENDER = "sender"  # a machine (a PACS, a router) storing studies by STOW-RS; it can do nothing else


class StudyStatus(StrEnum):
    """Where a DICOM study stands: instances may still arrive, or it has been quiet long enough to settle."""

    OPEN = "open"
    COMPLETE = "complete"


class SendState(StrEnum):
    """A study result on its way back to PACS."""

    PENDING = "pending"  # waiting for its first attempt
    RETRYING = "retrying"  # an attempt failed; the next is at next_send_at
    SENT = "sent"
    FAILED = "failed"  # the peer refused it PNEUMOSCAN_RESULTS_MAX_ATTEMPTS times, or our own bug: see last_send_error


class ReviewState(StrEnum):
    """Where an image stands with its reviewers, as the results filters ask: the latest review counts."""

    UNREVIEWED = "unreviewed"
    REVIEWED = "reviewed"
    DISAGREEMENT = "disagreement"  # the latest review's label differs from the model's


class Sort(StrEnum):
    """The order of the results query."""

    NEWEST = "newest"  # last updated first
    PROBABILITY = "probability"  # most suspicious first


class AuditAction(StrEnum):
    """What the audit trail records: who opened, read, changed or signed into what."""

    OPEN = "open"  # a case opened in the viewer (once per page view)
    REVIEW = "review"
    CALIBRATE = "calibrate"
    USER_ADD = "user.add"
    USER_DISABLE = "user.disable"
    USER_ENABLE = "user.enable"
    TOKEN_ISSUE = "token.issue"
    TOKEN_REVOKE = "token.revoke"
    SIGN_IN = "sign-in"
    SIGN_IN_FAILED = "sign-in.failed"
    SIGN_OUT = "sign-out"


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
DOMAINS: tuple[str, ...] = tuple(d.value for d in Domain)
LABELS: tuple[str, ...] = tuple(label.value for label in Label)
ROLES: tuple[str, ...] = tuple(role.value for role in Role)
STUDY_STATUSES: tuple[str, ...] = tuple(s.value for s in StudyStatus)
REVIEW_STATES: tuple[str, ...] = tuple(s.value for s in ReviewState)
SORTS: tuple[str, ...] = tuple(s.value for s in Sort)
AUDIT_ACTIONS: tuple[str, ...] = tuple(a.value for a in AuditAction)


def display_path(path: str) -> str:
    """``path`` as valid UTF-8 text (undecodable bytes escaped): how a path is stored, logged and queued."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def label_at(probability: float, threshold: float) -> Label:
    """PNEUMONIA when the probability reaches the threshold, else NORMAL."""
    return Label.PNEUMONIA if probability >= threshold else Label.NORMAL


# Age bands, (label, first year, last year): the only form in which an age is kept.
AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("under 1y", 0, 0), ("1-5y", 1, 5), ("6-17y", 6, 17), ("18-64y", 18, 64), ("65y+", 65, 200))

_AGE_UNITS = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}


def age_in_years(patient_age: str | None, birth_date: str | None, study_date: str | None) -> float | None:
    """The patient's age at the study, from PatientAge ("005Y", "018M", "003W", "010D") or else from the birth
    and study dates (YYYYMMDD). None when neither gives a plausible age. The value stays in memory."""
    text = (patient_age or "").strip().upper()
    if len(text) == 4 and text[:3].isdigit() and text[3] in _AGE_UNITS:
        return int(text[:3]) / _AGE_UNITS[text[3]]
    try:
        born, seen = (date(int(d[:4]), int(d[4:6]), int(d[6:8])) for d in (birth_date or "", study_date or ""))
    except (ValueError, TypeError):
        return None
    if seen < born:
        return None
    completed = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    fraction = min(max((seen - born).days / 365.25 - completed, 0.0), 0.999)  # of the year since the birthday
    return completed + fraction if completed < 150 else None


def age_band(years: float | None) -> str | None:
    """The band an age in years falls in (whole years completed), or None for no age."""
    if years is None or not math.isfinite(years) or years < 0:
        return None
    whole = int(years)
    return next((label for label, first, last in AGE_BANDS if first <= whole <= last), None)


# The DICOM attributes pneumoscan keeps: DicomMeta field -> (DICOM keyword, stored width). The one list:
# decoding reads these keywords, and the images table stores these fields (see db/schema.py).
DICOM_FIELDS: dict[str, tuple[str, int]] = {
    "study_uid": ("StudyInstanceUID", 64),
    "series_uid": ("SeriesInstanceUID", 64),
    "sop_instance_uid": ("SOPInstanceUID", 64),
    "modality": ("Modality", 16),
    "body_part": ("BodyPartExamined", 64),
    "view_position": ("ViewPosition", 16),
    "study_date": ("StudyDate", 8),
    "manufacturer": ("Manufacturer", 64),
}


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
    patient_ref: str | None = None  # salted SHA-256 of PatientID
    accession: str | None = None  # AccessionNumber (PNEUMOSCAN_STORE_ACCESSION), else "ref-" and a salted hash
    age_band: str | None = None  # the age at the study as a band ("1-5y"): the age itself is never kept


DICOM_COLUMNS: tuple[str, ...] = (*DICOM_FIELDS, "patient_ref", "accession", "age_band")


@dataclass(frozen=True)
class Result:
    """The outcome for one input file, as stored and as reported.

    ``status`` is what happened to the file (done, rejected, failed, or skipped: already known, nothing
    was written but the path); ``skip`` says why a skipped file was skipped. ``image_id`` is the stored
    image the file was read for, when reclassifying.
    """

    path: str
    status: Outcome
    sha256: str | None = None
    kind: str | None = None
    byte_size: int | None = None
    reason: str | None = None
    probability: float | None = None
    label: Label | None = None
    threshold: float | None = None
    model_version: str | None = None
    dicom: DicomMeta | None = None
    image_id: int | None = None
    mtime: float | None = None  # of the file when it was read, for its sighting
    skip: SkipReason | None = None
    domain: Domain | None = None  # in or out of the validated population; None: no gate (or not scored)
    domain_score: float | None = None
