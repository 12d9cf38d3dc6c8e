"""Studies: GET /api/studies and the studies page (the worklist grouped by DICOM study)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from pneumoscan.db.images import study_worklist
from pneumoscan.db.studies import list_studies
from pneumoscan.web.deps import MAX_PAGE, AppSettings, Db, Signed, page
from pneumoscan.web.schemas import SIGNED_IN, StudyOut

router = APIRouter()
STUDIES_PAGE = 200


@router.get("/api/studies", tags=["studies"], response_model=list[StudyOut], responses=SIGNED_IN,
            summary="DICOM studies and their results, newest first")
def api_studies(db: Db, settings: AppSettings, _account: Signed,
                limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> list[StudyOut]:
    with db() as session:
        rows = list_studies(session, limit)
    if settings.blinded_reading:  # as the studies page: a study's call would give away its images' calls
        rows = [{**row, "label": None, "probability": None} for row in rows]
    return [StudyOut.model_validate(row) for row in rows]


@router.get("/studies", response_class=HTMLResponse, include_in_schema=False)
def studies_page(request: Request, db: Db, settings: AppSettings, account: Signed) -> HTMLResponse:
    """The worklist by study: urgent studies first, each with its date, modality, views and patient reference.
    Under blinded reading newest first, with no urgent bucket: an order by the model's probability would give
    its call away before the reader has read the study."""
    urgent_at = None if settings.blinded_reading else settings.urgent_probability
    with db() as session:
        rows = study_worklist(session, urgent_at, STUDIES_PAGE)
    return page(request, "studies.html", rows=rows, urgent_at=settings.urgent_probability)
