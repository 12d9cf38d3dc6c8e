"""What every route takes: typed dependency aliases (database, settings, model, who is signed in, CSRF, filters),
and the page and error helpers. Route modules import this, never one another."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from pneumoscan.config import Settings
from pneumoscan.db import Database
from pneumoscan.db.images import next_case, reviewed_among
from pneumoscan.db.results import ResultFilter, query_results
from pneumoscan.db.users import Account
from pneumoscan.domain import AuditAction, Domain, Label, ReviewState, Sort, Status
from pneumoscan.models.bundle import ModelBundle
from pneumoscan.services import audit as audit_trail
from pneumoscan.web.render import Renderer
from pneumoscan.web.security import CSRF_FIELD, check_api_write, require_account, require_admin

MAX_PAGE = 500  # rows a page of results may ask for
API_PREFIXES = ("/api/", "/metrics", "/openapi.json")


def is_api(request: Request) -> bool:
    """Whether the request is for the JSON API (answered in JSON) rather than a page (answered in HTML)."""
    return request.url.path.startswith(API_PREFIXES)


def error_response(request: Request, status: int, reason: str) -> Response:
    """The error as JSON for the API, as a page for people."""
    if is_api(request):
        return JSONResponse({"detail": reason}, status_code=status)
    templates: Jinja2Templates = request.app.state.templates
    context: dict[str, Any] = {"status": status, "reason": reason, "account": getattr(request.state, "account", None)}
    return templates.TemplateResponse(request, "error.html", context, status_code=status)


def page(request: Request, template: str, **context: Any) -> HTMLResponse:
    """A server-rendered page; the template sees the signed-in account (if any) besides ``context``."""
    templates: Jinja2Templates = request.app.state.templates
    context.setdefault("account", getattr(request.state, "account", None))
    context.setdefault("blinded_reading", request.app.state.settings.blinded_reading)
    return templates.TemplateResponse(request, template, context)


def blinded_images(db: Database, settings: Settings, image_ids: list[int], reader: str) -> set[int]:
    """Those of ``image_ids`` whose model call (label, probability, threshold, heatmap) and earlier readings are
    hidden from ``reader``, on the viewer page and in the API alike: with PNEUMOSCAN_BLINDED_READING, the ones
    they have saved no reading of yet (whatever their role). Without it, none."""
    if not settings.blinded_reading or not image_ids:
        return set()
    with db() as session:
        return set(image_ids) - reviewed_among(session, image_ids, reader)


def is_blinded(db: Database, settings: Settings, image_id: int, reader: str) -> bool:
    """Whether the model's call on the image is hidden from ``reader`` (see blinded_images)."""
    return bool(blinded_images(db, settings, [image_id], reader))


def blind_filter(filters: ResultFilter) -> tuple[ResultFilter, list[str]]:
    """``filters`` less what selects or orders images by the model's call (the label, the probability bounds, the
    most-suspicious-first order, which would each give the call away under blinded reading), newest first; and
    the names of what was taken out."""
    taken = [name for name in ("label", "min_probability", "max_probability") if getattr(filters, name) is not None]
    if filters.sort == Sort.PROBABILITY:
        taken.append("sort=probability")
    return replace(filters, label=None, min_probability=None, max_probability=None, sort=Sort.NEWEST), taken


def following_case(db: Database, settings: Settings, model_version: str, after: int) -> int | None:
    """The case to read after ``after``: the most suspicious unreviewed one; under blinded reading the newest
    unreviewed one (an order by probability would give the model's call away)."""
    with db() as session:
        if not settings.blinded_reading:
            return next_case(session, model_version, after)
        rows = query_results(session, ResultFilter(model_version=model_version, review=ReviewState.UNREVIEWED,
                                                   sort=Sort.NEWEST, limit=2))
    return next((int(r["id"]) for r in rows if r["id"] != after), None)


def client_address(request: Request) -> str | None:
    """The address the request came from, as the audit trail records it."""
    return request.client.host if request.client else None


def audit(request: Request, action: AuditAction, actor: str | None = None, image_id: int | None = None,
          detail: str | None = None) -> None:
    """Record ``action`` in the audit trail: by ``actor`` (default: who is signed in), from the client's address."""
    if actor is None:
        account = getattr(request.state, "account", None)
        actor = account.name if account is not None else None
    audit_trail.record(request.app.state.db, action, actor, client_address(request), image_id, detail)


def _database(request: Request) -> Database:
    return request.app.state.db


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _model_version(request: Request) -> str:
    return request.app.state.model_version


def _renderer(request: Request) -> Renderer:
    return request.app.state.renderer


def _bundle(request: Request) -> ModelBundle:
    return _renderer(request).bundle()


def _api_writer(request: Request, account: Annotated[Account, Depends(require_account)]) -> Account:
    check_api_write(request)
    return account


Db = Annotated[Database, Depends(_database)]
AppSettings = Annotated[Settings, Depends(_settings)]
ModelVersion = Annotated[str, Depends(_model_version)]  # the version of the model the app serves
Bundle = Annotated[ModelBundle, Depends(_bundle)]  # its card is read; TensorFlow loads only on first prediction
Pictures = Annotated[Renderer, Depends(_renderer)]
Signed = Annotated[Account, Depends(require_account)]
Admin = Annotated[Account, Depends(require_admin)]
ApiWriter = Annotated[Account, Depends(_api_writer)]  # signed in, and by token or with the CSRF header
Csrf = Annotated[str, Form(alias=CSRF_FIELD, max_length=200)]
MAX_ID = 2**63 - 1  # the databases' 64-bit signed integer key: a larger id names nothing (404), never a 500
ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="The image's id.")]
ALL = "all"  # the review filter's "every state" choice


def result_filter(
    model: ModelVersion,
    status: Annotated[Status | None, Query(description="Only images with this status.")] = None,
    label: Annotated[Label | None, Query(description="Only predictions with this label.")] = None,
    min_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
    since: Annotated[datetime | None, Query(description="Only images updated since (ISO 8601; UTC if no zone).")]
    = None,
    model_version: Annotated[str | None, Query(max_length=64, description="Default: the current model.")] = None,
    path: Annotated[str | None, Query(max_length=1024, description="Glob (* and ?) over every path seen.")] = None,
    review: Annotated[ReviewState | Literal["all"] | None,
                      Query(description="By the latest review; `all` (or none) for every state.")] = None,
    study: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9.]+$", description="A StudyInstanceUID.")]
    = None,
    domain: Annotated[Domain | None, Query(description="Only images in (or out of) the population the model was "
                                                        "validated on, at their latest verdict (the domain gate).")]
    = None,
    sort: Annotated[Sort, Query()] = Sort.NEWEST,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> ResultFilter:
    """The filters of `pneumoscan results`, plus the review state and paging."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return ResultFilter(status=status, label=label, min_probability=min_probability, max_probability=max_probability,
                        since=since, model_version=model_version or model, limit=limit, sort=sort, path=path or None,
                        review=None if review == ALL else ReviewState(review) if review else None,
                        offset=offset, study_uid=study, domain=domain)


Filters = Annotated[ResultFilter, Depends(result_filter)]
