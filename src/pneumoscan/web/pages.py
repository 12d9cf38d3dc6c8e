"""Server-rendered pages: sign-in, worklist, image viewer with the review form, dashboard, users, API docs."""

from __future__ import annotations

import io
import itertools
import time
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pneumoscan.db import Database
from pneumoscan.db.queries import ResultFilter, activity, model_versions, query_results
from pneumoscan.db.reviews import UnknownImage, active_point, agreement, fit_point
from pneumoscan.db.schema import utcnow
from pneumoscan.db.users import Account, UserError, add_user, authenticate, list_users, set_disabled
from pneumoscan.domain import LABELS, ROLES, Label, ReviewState, Sort
from pneumoscan.web.api import MAX_PAGE, image_detail, result_filter, results_page, save_review
from pneumoscan.web.app import error_response, page
from pneumoscan.web.security import CSRF_FIELD, Forbidden, check_csrf, require_account, require_admin, sign_in

router = APIRouter(include_in_schema=False)
Signed = Annotated[Account, Depends(require_account)]
Admin = Annotated[Account, Depends(require_admin)]
Csrf = Annotated[str, Form(alias=CSRF_FIELD, max_length=200)]
WORKLIST_PAGE = 50
MIN_REVIEWS, TARGET_SENSITIVITY = 50, 0.95  # as `pneumoscan calibrate --from-reviews` by default


def _local(target: str | None, default: str = "/worklist") -> str:
    """``target`` if it is a path on this site, else ``default``: never redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


@router.get("/")
def home(account: Signed) -> RedirectResponse:
    return RedirectResponse("/worklist", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> HTMLResponse:
    return page(request, "login.html", next=_local(next), error=None)


@router.post("/login")
def login(request: Request, csrf: Csrf, name: Annotated[str, Form(max_length=64)],
          password: Annotated[str, Form(max_length=1024)],
          next: Annotated[str | None, Form(max_length=2000)] = None) -> Response:
    check_csrf(request, csrf)
    client = request.client.host if request.client else "unknown"
    throttle = request.app.state.throttle
    if throttle.blocked(client):
        response = page(request, "login.html", next=_local(next),
                        error="too many failed sign-ins from this address; wait a few minutes")
        response.status_code = 429
        return response
    db: Database = request.app.state.db
    with db.begin() as session:
        outcome = authenticate(session, name.strip(), password)
    if outcome.account is None:
        throttle.failed(client)
        response = page(request, "login.html", next=_local(next), error=outcome.reason)
        response.status_code = 401
        return response
    sign_in(request, outcome.account)
    return RedirectResponse(_local(next), status_code=303)


@router.post("/logout")
def logout(request: Request, csrf: Csrf) -> RedirectResponse:
    check_csrf(request, csrf)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def worklist_filter(request: Request, filters: Annotated[ResultFilter, Depends(result_filter)]) -> ResultFilter:
    """The worklist's defaults: unreviewed cases of the current model, most suspicious first, 50 a page."""
    params = request.query_params
    return ResultFilter(**{**filters.__dict__,
                           "review": filters.review if "review" in params else ReviewState.UNREVIEWED,
                           "sort": filters.sort if "sort" in params else Sort.PROBABILITY,
                           "limit": filters.limit if "limit" in params else WORKLIST_PAGE,
                           # A study's instances are all shown, reviewed or not.
                           **({"review": filters.review} if "study" in params and "review" not in params else {})})


@router.get("/worklist", response_class=HTMLResponse)
def worklist(request: Request, account: Signed,
             filters: Annotated[ResultFilter, Depends(worklist_filter)]) -> HTMLResponse:
    rows, total = results_page(request.app.state.db, filters)
    params = {k: v for k, v in request.query_params.items() if k != "offset"}
    limit = filters.limit or WORKLIST_PAGE

    def link(offset: int) -> str:
        return "/worklist?" + urlencode({**params, "offset": offset})

    with request.app.state.db() as session:
        versions = model_versions(session)
    return page(request, "worklist.html", rows=rows, total=total, filters=filters, labels=LABELS,
                versions=versions, review=request.query_params.get("review", "unreviewed"),
                previous=link(max(0, filters.offset - limit)) if filters.offset else None,
                next=link(filters.offset + limit) if filters.offset + limit < total else None, max_page=MAX_PAGE)


def next_case(db: Database, model_version: str, after: int) -> int | None:
    """The most suspicious unreviewed case of ``model_version`` other than ``after``."""
    with db() as session:
        rows = query_results(session, ResultFilter(model_version=model_version, review=ReviewState.UNREVIEWED,
                                                   sort=Sort.PROBABILITY, limit=2))
    return next((int(r["id"]) for r in rows if r["id"] != after), None)


@router.get("/images/{image_id}", response_class=HTMLResponse)
def image_page(request: Request, image_id: int, account: Signed) -> Response:
    state = request.app.state
    detail = image_detail(state.db, image_id)
    if detail is None:
        return error_response(request, 404, f"no image with id {image_id}")
    current = next((p for p in detail["predictions"] if p["model_version"] == state.model_version),
                   detail["predictions"][-1] if detail["predictions"] else None)
    return page(request, "image.html", image=detail, prediction=current, labels=LABELS,
                next_id=next_case(state.db, state.model_version, image_id),
                renderable=detail["sha256"] is not None)


@router.post("/images/{image_id}/reviews")
def review_form(request: Request, image_id: int, account: Signed, csrf: Csrf,
                label: Annotated[Label, Form()], comment: Annotated[str | None, Form(max_length=2000)] = None,
                then: Annotated[str | None, Form(max_length=16)] = None) -> Response:
    check_csrf(request, csrf)
    state = request.app.state
    try:
        save_review(state.db, image_id, account, label.value, comment)
    except UnknownImage:
        return error_response(request, 404, f"no image with id {image_id}")
    following = next_case(state.db, state.model_version, image_id) if then == "next" else None
    return RedirectResponse(f"/images/{following or image_id}", status_code=303)


@router.get("/studies", response_class=HTMLResponse)
def studies_page(request: Request, account: Signed) -> HTMLResponse:
    """The worklist grouped by DICOM study: one row per study, linking to its instances."""
    from pneumoscan.db.studies import list_studies

    with request.app.state.db() as session:
        rows = list_studies(session, 200)
    return page(request, "studies.html", rows=rows)


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, account: Signed,
              model_version: Annotated[str | None, Query(max_length=64)] = None) -> HTMLResponse:
    state = request.app.state
    version = model_version or state.model_version
    with state.db() as session:
        counts = agreement(session, version)
        versions = model_versions(session)
        point = active_point(session, version)
    tp, fn = counts["PNEUMONIA"]["PNEUMONIA"], counts["PNEUMONIA"]["NORMAL"]
    tn, fp = counts["NORMAL"]["NORMAL"], counts["NORMAL"]["PNEUMONIA"]
    figures = {
        "reviewed": tp + fn + tn + fp, "agreed": tp + tn, "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
    }
    can_calibrate = version == state.model_version and min(tp + fn, tn + fp) >= MIN_REVIEWS
    return page(request, "dashboard.html", version=version, versions=versions or [version], counts=counts,
                labels=LABELS, figures=figures, point=point, can_calibrate=can_calibrate, min_reviews=MIN_REVIEWS,
                target_sensitivity=TARGET_SENSITIVITY, message=request.query_params.get("message"))


@router.get("/dashboard/activity.png")
def activity_plot(request: Request, account: Signed,
                  model_version: Annotated[str | None, Query(max_length=64)] = None,
                  hours: Annotated[int, Query(ge=1, le=24 * 31)] = 48) -> Response:
    """Throughput, backlog and drop-to-result latency per hour, drawn server-side (no script needed)."""
    state = request.app.state
    with state.db() as session:
        rows = activity(session, model_version or state.model_version, utcnow() - timedelta(hours=hours))
    return Response(_activity_png(rows, hours), media_type="image/png")


def _activity_png(rows: list[Any], hours: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure

    now = time.time()
    edges = np.arange(now - hours * 3600, now + 1, 3600.0)
    centres = (edges[:-1] - now) / 3600.0
    done = np.array([r.classified_at for r in rows])
    first = [r for r in rows if r.written_at is not None]
    throughput = np.histogram(done, edges)[0] if len(done) else np.zeros(len(centres))
    written = np.array([r.written_at for r in first])
    classified = np.array([r.classified_at for r in first])
    # Waiting at the end of each hour: written by then, not yet classified.
    backlog = [int(((written <= t) & (classified > t)).sum()) if len(first) else 0 for t in edges[1:]]
    p50, p95 = [], []
    for low, high in itertools.pairwise(edges):
        hour = (classified >= low) & (classified < high)
        lat = classified[hour] - written[hour]
        p50.append(float(np.percentile(lat, 50)) if len(lat) else np.nan)
        p95.append(float(np.percentile(lat, 95)) if len(lat) else np.nan)
    figure = Figure(figsize=(9, 6.5), dpi=90, layout="constrained")
    axes = figure.subplots(3, 1, sharex=True)
    axes[0].bar(centres, throughput, width=0.9, color="#3b6ea5")
    axes[0].set_ylabel("results / hour")
    axes[1].step(centres, backlog, where="mid", color="#a55a3b")
    axes[1].set_ylabel("files waiting")
    axes[2].plot(centres, p50, marker=".", label="median")
    axes[2].plot(centres, p95, marker=".", label="95th percentile")
    axes[2].set_ylabel("drop to result (s)")
    axes[2].set_xlabel("hours before now")
    axes[2].legend(loc="upper left")
    for ax in axes:
        ax.grid(alpha=0.3)
    figure.suptitle(f"Last {hours} hours: {len(rows)} results, {len(first)} of them first results of new files")
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


@router.post("/dashboard/calibrate")
def calibrate(request: Request, account: Admin, csrf: Csrf) -> RedirectResponse:
    """Fit the site operating point from the reviews, as `pneumoscan calibrate --from-reviews` does."""
    from pneumoscan.models.calibrate import TooFewReviews

    check_csrf(request, csrf)
    state = request.app.state
    bundle = state.renderer.bundle()
    try:
        with state.db.begin() as session:
            point, figures, n = fit_point(session, bundle.version, bundle.threshold, TARGET_SENSITIVITY, MIN_REVIEWS)
            message = (f"operating point {point.id}: threshold {point.previous_threshold:.4f} -> {point.threshold:.4f} "
                       f"from {n} reviews (sensitivity {figures['sensitivity']:.3f}, specificity "
                       f"{figures['specificity']:.3f} on them, sensitivity {figures['expected_sensitivity']:.3f} to "
                       f"expect on new cases); {point.relabelled} labels changed")
    except TooFewReviews as exc:
        message = str(exc)
    return RedirectResponse("/dashboard?" + urlencode({"message": message}), status_code=303)


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(request: Request, account: Admin) -> HTMLResponse:
    with request.app.state.db() as session:
        users = list_users(session)
    return page(request, "users.html", users=users, roles=ROLES, error=None, message=None)


@router.post("/admin/users")
def create_user(request: Request, account: Admin, csrf: Csrf, name: Annotated[str, Form(max_length=64)],
                role: Annotated[str, Form(max_length=16)], password: Annotated[str, Form(max_length=1024)]) -> Response:
    check_csrf(request, csrf)
    try:
        with request.app.state.db.begin() as session:
            add_user(session, name.strip(), role, password)
    except UserError as exc:
        with request.app.state.db() as session:
            users = list_users(session)
        response = page(request, "users.html", users=users, roles=ROLES, error=str(exc), message=None)
        response.status_code = 400
        return response
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{name}/{action}")
def change_user(request: Request, name: str, action: str, account: Admin, csrf: Csrf) -> Response:
    check_csrf(request, csrf)
    if action not in ("disable", "enable"):
        return error_response(request, 404, "unknown action")
    if action == "disable" and name == account.name:
        raise Forbidden("you cannot disable your own account")
    try:
        with request.app.state.db.begin() as session:
            set_disabled(session, name, action == "disable")
    except UserError as exc:
        return error_response(request, 404, str(exc))
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request, account: Signed) -> HTMLResponse:
    """The API's OpenAPI schema as a page (FastAPI's Swagger UI would need a CDN and inline script)."""
    schema = request.app.openapi()
    return page(request, "docs.html", paths=schema.get("paths", {}), info=schema.get("info", {}))
