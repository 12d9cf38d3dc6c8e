"""The JSON API's bodies as Pydantic models, so that /openapi.json documents typed objects; enums from domain."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from pneumoscan.domain import Domain, Label, SendState, Status, StudyStatus


def _iso(value: datetime) -> str:
    return value.isoformat()


# As the database gives it, in ISO 8601 (with its zone when the database keeps one).
Timestamp = Annotated[datetime, PlainSerializer(_iso, return_type=str),
                      WithJsonSchema({"type": "string", "format": "date-time"})]


# PNEUMOSCAN_BLINDED_READING: the model's call and earlier readings are withheld from a reader (of any role) until
# they have saved their own reading of the image, in the API as on the viewer page.
_BLINDED = "with blinded reading, until the signed-in reader has saved their own reading of this image"


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


_DOMAIN = ("Whether the image is like those the model was validated on (its age band, its domain score): in or "
           "out; null when the model has no domain gate or the image was not scored.")
_DOMAIN_SCORE = "Mahalanobis distance of the image's features to the training images'; out above the card's threshold."


class Problem(BaseModel):
    """Why a request was refused or failed."""

    detail: str


class ResultOut(_Out):
    """One row of the results: an image with one model version's prediction and its latest review."""

    id: int
    path: str
    paths: int = Field(description="How many paths this content was seen at.")
    sha256: str | None
    kind: str | None
    status: Status
    reason: str | None
    label: Label | None = Field(description=f"The model's call; null when none, or {_BLINDED}.")
    probability: float | None = Field(description=f"null when no prediction, or {_BLINDED}.")
    threshold: float | None = Field(description=f"null when no prediction, or {_BLINDED}.")
    model_version: str | None
    classified_at: Timestamp | None
    review_label: Label | None = Field(description=f"The latest review's reading; null when none, or {_BLINDED}.")
    reviewed_by: str | None = Field(description=f"null when no review, or {_BLINDED}.")
    study_uid: str | None
    series_uid: str | None
    sop_instance_uid: str | None
    modality: str | None
    view_position: str | None
    domain: Domain | None = Field(description=_DOMAIN)
    domain_score: float | None = Field(description=_DOMAIN_SCORE)
    updated_at: Timestamp


class ResultsPage(_Out):
    """One page of results and how many there are in all."""

    total: int = Field(description="Rows matching the filters, counted up to a bound (see total_is_lower_bound).")
    total_is_lower_bound: bool
    offset: int
    limit: int
    fields: list[str]
    results: list[ResultOut]


class PredictionOut(_Out):
    model_version: str
    label: Label
    probability: float
    threshold: float
    created_at: Timestamp


class PathOut(_Out):
    path: str
    first_seen_at: Timestamp
    last_seen_at: Timestamp
    byte_size: int | None


class ReviewOut(_Out):
    """A review: append-only, a correction is a later review."""

    id: int
    label: Label
    comment: str | None
    reviewer: str
    created_at: Timestamp


class ReviewIn(BaseModel):
    label: Label
    comment: str | None = Field(default=None, max_length=2000)


class DicomOut(_Out):
    """The DICOM attributes kept (no names or birth dates; PatientID only as a salted hash, patient_ref)."""

    study_uid: str | None
    series_uid: str | None
    sop_instance_uid: str | None
    modality: str | None
    body_part: str | None
    view_position: str | None
    study_date: str | None
    manufacturer: str | None
    patient_ref: str | None
    accession: str | None  # AccessionNumber, or (by default) "ref-" and a salted short hash of it
    age_band: str | None = Field(description="The patient's age at the study as a band (1-5y); never the age.")


class ImageOut(_Out):
    """Everything stored about one image."""

    id: int
    sha256: str | None
    kind: str | None
    byte_size: int | None
    status: Status
    reason: str | None
    path: str
    first_seen_at: Timestamp
    updated_at: Timestamp
    dicom: DicomOut
    domain: Domain | None = Field(description=_DOMAIN)
    domain_score: float | None = Field(description=_DOMAIN_SCORE)
    predictions: list[PredictionOut] | None = Field(description=f"Every model version's call; null {_BLINDED}.")
    paths: list[PathOut]
    reviews: list[ReviewOut] | None = Field(description=f"Every review, oldest first; null {_BLINDED}.")


class StudyOut(_Out):
    """A DICOM study and, once settled, its result and its way back to PACS."""

    study_uid: str
    status: StudyStatus
    instance_count: int
    assessed_count: int
    label: Label | None = Field(description="The study's call; null until settled, and always null with blinded "
                                            "reading (as on the studies page).")
    probability: float | None = Field(description="null until settled, and always null with blinded reading.")
    model_version: str | None
    completed_at: Timestamp | None
    revision: int
    send_state: SendState | None
    send_attempts: int
    next_send_at: Timestamp | None
    last_send_error: str | None
    sent_at: Timestamp | None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unreachable"]
    model_version: str | None = None


# OpenAPI response documentation shared by the routes.
SIGNED_IN: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Not signed in: no valid session cookie or bearer token."},
    422: {"model": Problem, "description": "Invalid parameters."},
}
UNKNOWN_IMAGE: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No image with this id."}}
BLINDED: dict[int | str, dict[str, Any]] = {
    403: {"model": Problem, "description": "Blinded reading: the reader has not saved a reading yet."}}
# A PNG route's own media type is image/png, and FastAPI files a response model under it: the JSON errors are
# spelled out (Problem is in the components, as the other routes use it).
_PROBLEM_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "A PNG."},
    401: {"content": _PROBLEM_JSON, "description": SIGNED_IN[401]["description"]},
    404: {"content": _PROBLEM_JSON, "description": "No image with this id, or its file is no longer on disk."},
    422: {"content": _PROBLEM_JSON, "description": "The file cannot be decoded to a picture."},
}
HEATMAP_PNG: dict[int | str, dict[str, Any]] = {
    **PNG, 403: {"content": _PROBLEM_JSON, "description": "Blinded reading: the reader has not saved a reading yet."}}
