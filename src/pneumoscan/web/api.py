"""The JSON API (documented at /docs from its OpenAPI schema), /health and /metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from pneumoscan.db import Database, queries
from pneumoscan.db.queries import COUNT_AT_MOST, RESULT_FIELDS, ResultFilter
from pneumoscan.db.reviews import UnknownImage, add_review, reviews_of
from pneumoscan.db.schema import Image, Prediction, Sighting
from pneumoscan.db.users import Account
from pneumoscan.domain import DICOM_COLUMNS, Label, ReviewState, Sort, Status
from pneumoscan.web.security import check_api_write, require_account

router = APIRouter()
MAX_PAGE = 500


def result_filter(
    request: Request,
    status: Annotated[Status | None, Query(description="Only images with this status.")] = None,
    label: Annotated[Label | None, Query(description="Only predictions with this label.")] = None,
    min_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
    since: Annotated[datetime | None, Query(description="Only images updated since (ISO 8601; UTC if no zone).")]
    = None,
    model_version: Annotated[str | None, Query(max_length=64, description="Default: the current model.")] = None,
    path: Annotated[str | None, Query(max_length=1024, description="Glob (* and ?) over every path seen.")] = None,
    review: Annotated[ReviewState | Literal["all"] | None, Query()] = None,
    study: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9.]+$", description="A StudyInstanceUID.")]
    = None,
    sort: Annotated[Sort, Query()] = Sort.NEWEST,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> ResultFilter:
    """The filters of `pneumoscan results`, plus the review state and paging."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return ResultFilter(status=status, label=label,
                        min_probability=min_probability, max_probability=max_probability, since=since,
                        model_version=model_version or request.app.state.model_version, limit=limit, sort=sort,
                        path=path or None, review=None if review == "all" else review, offset=offset,
                        study_uid=study)


Filters = Annotated[ResultFilter, Depends(result_filter)]
Signed = Annotated[Account, Depends(require_account)]


def _json(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def results_page(db: Database, filters: ResultFilter) -> tuple[list[dict[str, Any]], int]:
    """One page of results and the number of rows without the limit (counted up to COUNT_AT_MOST)."""
    with db() as session:
        return queries.results_page(session, filters)


@router.get("/api/results", tags=["results"], summary="Stored results, filtered as `pneumoscan results` filters")
def api_results(request: Request, _account: Signed, filters: Filters) -> dict[str, Any]:
    rows, total = results_page(request.app.state.db, filters)
    return {"total": total, "total_is_lower_bound": total >= COUNT_AT_MOST, "offset": filters.offset,
            "limit": filters.limit, "fields": list(RESULT_FIELDS),
            "results": [_json(row) for row in rows]}


def image_detail(db: Database, image_id: int) -> dict[str, Any] | None:
    """Everything stored about one image: its status, DICOM fields, predictions, paths and reviews."""
    with db() as session:
        image = session.get(Image, image_id)
        if image is None:
            return None
        predictions = session.scalars(select(Prediction).where(Prediction.image_id == image_id)
                                      .order_by(Prediction.created_at, Prediction.id)).all()
        sightings = session.scalars(select(Sighting).where(Sighting.image_id == image_id)
                                    .order_by(Sighting.first_seen_at, Sighting.id)).all()
        reviews = reviews_of(session, image_id)
        return _json({
            "id": image.id, "sha256": image.sha256, "kind": image.kind, "byte_size": image.byte_size,
            "status": image.status, "reason": image.reason, "path": image.path,
            "first_seen_at": image.first_seen_at, "updated_at": image.updated_at,
            "dicom": {name: getattr(image, name) for name in DICOM_COLUMNS},
            "predictions": [_json({"model_version": p.model_version, "label": p.label, "probability": p.probability,
                                   "threshold": p.threshold, "created_at": p.created_at}) for p in predictions],
            "paths": [_json({"path": s.path, "first_seen_at": s.first_seen_at, "last_seen_at": s.last_seen_at,
                             "byte_size": s.byte_size}) for s in sightings],
            "reviews": [review_json(r) for r in reviews],
        })


def review_json(review: Any) -> dict[str, Any]:
    return _json({"id": review.id, "label": review.label, "comment": review.comment, "reviewer": review.reviewer,
                  "created_at": review.created_at})


def _unknown(image_id: int) -> JSONResponse:
    return JSONResponse({"detail": f"no image with id {image_id}"}, status_code=404)


@router.get("/api/images/{image_id}", tags=["images"], summary="One image: predictions, paths, DICOM fields, reviews")
def api_image(request: Request, image_id: int, _account: Signed) -> Any:
    detail = image_detail(request.app.state.db, image_id)
    return detail if detail is not None else _unknown(image_id)


_PNG_HEADERS = {"Cache-Control": "private, max-age=3600"}


@router.get("/api/images/{image_id}/image.png", tags=["images"], response_class=Response,
            summary="The image as the pipeline decodes it (DICOM windowed), at most 1024 px a side")
def api_image_png(request: Request, image_id: int, _account: Signed) -> Response:
    return Response(request.app.state.renderer.image_png(image_id), media_type="image/png", headers=_PNG_HEADERS)


@router.get("/api/images/{image_id}/heatmap.png", tags=["images"], response_class=Response,
            summary="The image with the current model's Grad-CAM heatmap over it, labelled as such")
def api_heatmap_png(request: Request, image_id: int, _account: Signed) -> Response:
    return Response(request.app.state.renderer.heatmap_png(image_id), media_type="image/png", headers=_PNG_HEADERS)


class ReviewIn(BaseModel):
    label: Label
    comment: str | None = Field(default=None, max_length=2000)


@router.get("/api/images/{image_id}/reviews", tags=["reviews"], summary="Every review of an image, oldest first")
def api_reviews(request: Request, image_id: int, _account: Signed) -> Any:
    db: Database = request.app.state.db
    with db() as session:
        if session.get(Image, image_id) is None:
            return _unknown(image_id)
        return [review_json(r) for r in reviews_of(session, image_id)]


@router.post("/api/images/{image_id}/reviews", tags=["reviews"], status_code=201,
             summary="Add a review (append-only: a correction is a new review)")
def api_add_review(request: Request, image_id: int, body: ReviewIn, account: Signed) -> Any:
    check_api_write(request)
    try:
        review = save_review(request.app.state.db, image_id, account, body.label.value, body.comment)
    except UnknownImage:
        return _unknown(image_id)
    return JSONResponse(review, status_code=201)


def save_review(db: Database, image_id: int, account: Account, label: str, comment: str | None) -> dict[str, Any]:
    with db.begin() as session:
        return review_json(add_review(session, image_id, account.name, label, (comment or "").strip() or None))


@router.get("/api/studies", tags=["studies"], summary="DICOM studies and their results, newest first")
def api_studies(request: Request, _account: Signed,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> list[dict[str, Any]]:
    from pneumoscan.db.studies import list_studies

    with request.app.state.db() as session:
        return [_json(row) for row in list_studies(session, limit)]


@router.get("/health", tags=["system"], summary="Liveness and database reachability; needs no login")
def health(request: Request) -> JSONResponse:
    db: Database = request.app.state.db
    try:
        with db() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok", "model_version": request.app.state.model_version})


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, _account: Signed) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/metrics", tags=["system"], response_class=Response, summary="Prometheus metrics")
def metrics(request: Request, _account: Signed) -> Response:
    from pneumoscan.web.metrics import registry

    state = request.app.state
    if not hasattr(state, "metrics"):
        state.metrics = registry(state.settings, state.db, state.model_version)
    return Response(generate_latest(state.metrics), media_type=CONTENT_TYPE_LATEST)
