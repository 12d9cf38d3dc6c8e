"""Reviews: GET and POST /api/images/{id}/reviews, and the viewer's review form (append-only: a correction is new)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from pneumoscan.db import Database
from pneumoscan.db.audit import add_event
from pneumoscan.db.images import ReviewRow, image_reviews, review_row, reviewed_by
from pneumoscan.db.reviews import UnknownImage, add_review
from pneumoscan.db.users import Account
from pneumoscan.domain import AuditAction, Label
from pneumoscan.web.deps import (
    ApiWriter,
    AppSettings,
    Csrf,
    Db,
    ImageId,
    ModelVersion,
    Signed,
    client_address,
    error_response,
    following_case,
    is_blinded,
)
from pneumoscan.web.schemas import BLINDED, SIGNED_IN, UNKNOWN_IMAGE, Problem, ReviewIn, ReviewOut
from pneumoscan.web.security import Forbidden, check_csrf

router = APIRouter()
NEXT = "next"  # the review form's `then`: go on to the next case


def _unknown(image_id: int) -> HTTPException:
    return HTTPException(404, f"no image with id {image_id}")


def _save(request: Request, image_id: int, account: Account, label: Label, comment: str | None,
          blinding: bool = False) -> ReviewRow:
    """Store the review and its audit event in one transaction.

    ``blinding``: saved from a page that hid the model's call (PNEUMOSCAN_BLINDED_READING) from a reader who had
    no reading of the case yet; such a review counts as reader-alone.
    """
    db: Database = request.app.state.db
    with db.begin() as session:
        blinded = blinding and not reviewed_by(session, image_id, account.name)
        review = add_review(session, image_id, account.name, label.value, (comment or "").strip() or None)
        review.blinded = blinded
        add_event(session, AuditAction.REVIEW, account.name, client_address(request), image_id,
                  f"{label.value}{' (reader alone)' if blinded else ''}")
        return review_row(review)


@router.get("/api/images/{image_id}/reviews", tags=["reviews"], response_model=list[ReviewOut],
            responses={**SIGNED_IN, **UNKNOWN_IMAGE, **BLINDED}, summary="Every review of an image, oldest first")
def api_reviews(db: Db, settings: AppSettings, image_id: ImageId, account: Signed) -> list[ReviewOut]:
    with db() as session:
        reviews = image_reviews(session, image_id)
    if reviews is None:
        raise _unknown(image_id)
    if is_blinded(db, settings, image_id, account.name):  # earlier readings, as the viewer page hides them
        raise Forbidden("blinded reading: earlier readings show once you have saved your own reading")
    return [ReviewOut.model_validate(r) for r in reviews]


@router.post("/api/images/{image_id}/reviews", tags=["reviews"], status_code=201, response_model=ReviewOut,
             responses={**SIGNED_IN, **UNKNOWN_IMAGE,
                        403: {"model": Problem, "description": "A session cookie without the X-CSRF-Token header."}},
             summary="Add a review (append-only: a correction is a new review)")
def api_add_review(request: Request, image_id: ImageId, body: ReviewIn, account: ApiWriter) -> ReviewOut:
    try:
        review = _save(request, image_id, account, body.label, body.comment)
    except UnknownImage:
        raise _unknown(image_id) from None
    return ReviewOut.model_validate(review)


@router.post("/images/{image_id}/reviews", include_in_schema=False)
def review_form(request: Request, db: Db, settings: AppSettings, model_version: ModelVersion, image_id: ImageId,
                account: Signed, csrf: Csrf,
                label: Annotated[Label, Form()], comment: Annotated[str | None, Form(max_length=2000)] = None,
                then: Annotated[str | None, Form(max_length=16)] = None) -> Response:
    check_csrf(request, csrf)
    try:
        _save(request, image_id, account, label, comment, blinding=settings.blinded_reading)
    except UnknownImage:
        return error_response(request, 404, f"no image with id {image_id}")
    following = None
    if then == NEXT:
        following = following_case(db, settings, model_version, image_id)
    return RedirectResponse(f"/images/{following or image_id}", status_code=303)
