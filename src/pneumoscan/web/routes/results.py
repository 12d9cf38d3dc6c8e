"""Results: GET /api/results (filtered as `pneumoscan results` filters) and the worklist page."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from pneumoscan.db import Database
from pneumoscan.db.results import COUNT_AT_MOST, RESULT_FIELDS, ResultFilter, model_versions
from pneumoscan.db.results import results_page as query_page
from pneumoscan.domain import DOMAINS, LABELS, REVIEW_STATES, STATUSES, ReviewState, Sort
from pneumoscan.web.deps import ALL, MAX_PAGE, AppSettings, Db, Filters, Signed, blind_filter, blinded_images, page
from pneumoscan.web.schemas import SIGNED_IN, Problem, ResultsPage

router = APIRouter()
WORKLIST_PAGE = 50
# What a blinded reader does not see of an image they have not read yet: the model's call and earlier readings.
BLINDED_FIELDS = ("label", "probability", "threshold", "review_label", "reviewed_by")


def _page(db: Database, filters: ResultFilter) -> tuple[list[dict[str, Any]], int]:
    with db() as session:
        return query_page(session, filters)


BLINDED_FILTERS: dict[int | str, dict[str, Any]] = {400: {
    "model": Problem, "description": "Blinded reading: `label`, `min_probability`, `max_probability` and "
                                     "`sort=probability` are refused."}}


@router.get("/api/results", tags=["results"], response_model=ResultsPage, responses={**SIGNED_IN, **BLINDED_FILTERS},
            summary="Stored results, filtered as `pneumoscan results` filters")
def api_results(db: Db, settings: AppSettings, account: Signed, filters: Filters) -> ResultsPage:
    if settings.blinded_reading and (taken := blind_filter(filters)[1]):
        raise HTTPException(400, f"blinded reading: results cannot be selected or sorted by the model's call "
                                 f"(label, probability) until read; drop {', '.join(taken)}")
    rows, total = _page(db, filters)
    hidden = blinded_images(db, settings, [row["id"] for row in rows], account.name)
    rows = [{**row, **dict.fromkeys(BLINDED_FIELDS)} if row["id"] in hidden else row for row in rows]
    return ResultsPage.model_validate({"total": total, "total_is_lower_bound": total >= COUNT_AT_MOST,
                                       "offset": filters.offset, "limit": filters.limit, "fields": list(RESULT_FIELDS),
                                       "results": rows})


def worklist_filter(request: Request, settings: AppSettings, filters: Filters) -> ResultFilter:
    """The worklist's defaults: unreviewed cases of the current model, most suspicious first (under blinded
    reading newest first), 50 a page."""
    params = request.query_params
    first = Sort.NEWEST if settings.blinded_reading else Sort.PROBABILITY
    return ResultFilter(**{**filters.__dict__,
                           "review": filters.review if "review" in params else ReviewState.UNREVIEWED,
                           "sort": filters.sort if "sort" in params else first,
                           "limit": filters.limit if "limit" in params else WORKLIST_PAGE,
                           # A study's instances are all shown, reviewed or not.
                           **({"review": filters.review} if "study" in params and "review" not in params else {})})


@router.get("/worklist", response_class=HTMLResponse, include_in_schema=False)
def worklist(request: Request, db: Db, settings: AppSettings, account: Signed,
             filters: Annotated[ResultFilter, Depends(worklist_filter)]) -> HTMLResponse:
    ignored: list[str] = []
    if settings.blinded_reading:  # shown as ignored on the page, where the API refuses them
        filters, ignored = blind_filter(filters)
    rows, total = _page(db, filters)
    params = {k: v for k, v in request.query_params.items() if k != "offset"}
    limit = filters.limit or WORKLIST_PAGE

    def link(offset: int) -> str:
        return "/worklist?" + urlencode({**params, "offset": offset})

    with db() as session:
        versions = model_versions(session)
    return page(request, "worklist.html", rows=rows, total=total, filters=filters, labels=LABELS, statuses=STATUSES,
                domains=DOMAINS, review_states=(*REVIEW_STATES, ALL), versions=versions,
                review=request.query_params.get("review", ReviewState.UNREVIEWED.value), ignored=ignored,
                previous=link(max(0, filters.offset - limit)) if filters.offset else None,
                next=link(filters.offset + limit) if filters.offset + limit < total else None, max_page=MAX_PAGE)
