"""Images: GET /api/images/{id} (everything stored about one), its picture and heatmap as PNG, and the viewer page."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from pneumoscan.db.images import image_detail, study_instances
from pneumoscan.domain import LABELS, AuditAction
from pneumoscan.web.deps import (
    AppSettings,
    Db,
    ImageId,
    ModelVersion,
    Pictures,
    Signed,
    audit,
    error_response,
    following_case,
    is_blinded,
    page,
)
from pneumoscan.web.schemas import HEATMAP_PNG, PNG, SIGNED_IN, UNKNOWN_IMAGE, ImageOut
from pneumoscan.web.security import Forbidden

router = APIRouter()
_PNG_HEADERS = {"Cache-Control": "no-store"}  # patient images: never kept by a browser or a proxy


class PNGResponse(Response):
    media_type = "image/png"


def _detail(db: Db, image_id: int) -> ImageOut | None:
    with db() as session:
        detail = image_detail(session, image_id)
    return None if detail is None else ImageOut.model_validate(detail)


@router.get("/api/images/{image_id}", tags=["images"], response_model=ImageOut,
            responses={**SIGNED_IN, **UNKNOWN_IMAGE}, summary="One image: predictions, paths, DICOM fields, reviews")
def api_image(db: Db, settings: AppSettings, image_id: ImageId, account: Signed) -> ImageOut:
    detail = _detail(db, image_id)
    if detail is None:
        raise HTTPException(404, f"no image with id {image_id}")
    if is_blinded(db, settings, image_id, account.name):  # as the viewer page hides them
        return detail.model_copy(update={"predictions": None, "reviews": None})
    return detail


@router.get("/api/images/{image_id}/image.png", tags=["images"], response_class=PNGResponse,
            responses=PNG,
            summary="The image as the pipeline decodes it (DICOM windowed), at most 1024 px a side")
def api_image_png(pictures: Pictures, image_id: ImageId, _account: Signed) -> PNGResponse:
    return PNGResponse(pictures.image_png(image_id), headers=_PNG_HEADERS)


@router.get("/api/images/{image_id}/heatmap.png", tags=["images"], response_class=PNGResponse,
            responses=HEATMAP_PNG,
            summary="The image with the current model's Grad-CAM heatmap over it, labelled as such")
def api_heatmap_png(db: Db, settings: AppSettings, pictures: Pictures, image_id: ImageId,
                    account: Signed) -> PNGResponse:
    if is_blinded(db, settings, image_id, account.name):
        raise Forbidden("blinded reading: the model's heatmap shows once you have saved your own reading")
    return PNGResponse(pictures.heatmap_png(image_id), headers=_PNG_HEADERS)


@router.get("/images/{image_id}/values.bin", include_in_schema=False)
def image_values(pictures: Pictures, image_id: ImageId, _account: Signed) -> Response:
    """The viewer's full-resolution values for window/level (render.values_payload); not in the API."""
    return Response(pictures.values(image_id), media_type="application/octet-stream", headers=_PNG_HEADERS)


@router.get("/images/{image_id}/preview.png", include_in_schema=False)
def image_preview(pictures: Pictures, image_id: ImageId, _account: Signed) -> PNGResponse:
    """The viewer's fast first paint (render.preview_png), drawn until values.bin is in; not in the API."""
    return PNGResponse(pictures.preview(image_id), headers=_PNG_HEADERS)


@router.get("/images/{image_id}", response_class=HTMLResponse, include_in_schema=False)
def image_page(request: Request, db: Db, settings: AppSettings, model_version: ModelVersion, image_id: ImageId,
               account: Signed) -> Response:
    found = _detail(db, image_id)
    if found is None:
        return error_response(request, 404, f"no image with id {image_id}")
    audit(request, AuditAction.OPEN, image_id=image_id)  # once per page view: the pictures are not counted
    detail = found.model_dump(mode="json")
    current = next((p for p in detail["predictions"] if p["model_version"] == model_version),
                   detail["predictions"][-1] if detail["predictions"] else None)
    following = following_case(db, settings, model_version, image_id)
    with db() as session:
        instances = study_instances(session, image_id, model_version)
    return page(request, "image.html", image=detail, prediction=current, labels=LABELS, next_id=following,
                renderable=detail["sha256"] is not None, instances=instances,
                blinded=is_blinded(db, settings, image_id, account.name))
