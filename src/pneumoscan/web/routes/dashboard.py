"""The dashboard: the model against the latest reviews, the activity plot, and fitting the site operating point."""

from __future__ import annotations

import io
import itertools
import time
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pneumoscan.db.images import urgent_counts
from pneumoscan.db.results import model_versions
from pneumoscan.db.reviews import active_point, agreement, reader_alone_agreement
from pneumoscan.db.schema import utcnow
from pneumoscan.db.stats import activity
from pneumoscan.domain import LABELS, AuditAction, Label
from pneumoscan.services import calibration
from pneumoscan.web.deps import Admin, AppSettings, Bundle, Csrf, Db, ModelVersion, Signed, audit, page
from pneumoscan.web.security import check_csrf

router = APIRouter(include_in_schema=False)
PNEUMONIA, NORMAL = Label.PNEUMONIA, Label.NORMAL
FLASH = "flash"  # the session key of a one-time message to the next page


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, db: Db, settings: AppSettings, current: ModelVersion, account: Signed,
              model_version: Annotated[str | None, Query(max_length=64)] = None) -> HTMLResponse:
    version = model_version or current
    with db() as session:
        counts = agreement(session, version)
        alone = reader_alone_agreement(session, version)
        versions = model_versions(session)
        point = active_point(session, version)
        urgent = urgent_counts(session, version, settings.urgent_probability)
    tp, fn = counts[PNEUMONIA][PNEUMONIA], counts[PNEUMONIA][NORMAL]
    tn, fp = counts[NORMAL][NORMAL], counts[NORMAL][PNEUMONIA]
    figures = {
        "reviewed": tp + fn + tn + fp, "agreed": tp + tn, "tp": tp, "fn": fn, "tn": tn, "fp": fp,
        "sensitivity": tp / (tp + fn) if tp + fn else None, "specificity": tn / (tn + fp) if tn + fp else None,
    }
    alone_agreed = sum(alone[label][label] for label in LABELS)
    alone_figures = {"reviewed": sum(sum(row.values()) for row in alone.values()), "agreed": alone_agreed}
    can_calibrate = version == current and min(tp + fn, tn + fp) >= calibration.MIN_REVIEWS
    return page(request, "dashboard.html", version=version, versions=versions or [version], counts=counts,
                labels=LABELS, figures=figures, point=point, can_calibrate=can_calibrate,
                alone=alone, alone_figures=alone_figures, urgent=urgent, urgent_at=settings.urgent_probability,
                min_reviews=calibration.MIN_REVIEWS,
                target_sensitivity=calibration.TARGET_SENSITIVITY,
                message=request.session.pop(FLASH, None))


@router.get("/dashboard/activity.png")
def activity_plot(db: Db, current: ModelVersion, account: Signed,
                  model_version: Annotated[str | None, Query(max_length=64)] = None,
                  hours: Annotated[int, Query(ge=1, le=24 * 31)] = 48) -> Response:
    """Throughput, backlog and drop-to-result latency per hour, drawn server-side (no script needed)."""
    with db() as session:
        rows = activity(session, model_version or current, utcnow() - timedelta(hours=hours))
    return Response(_activity_png(rows, hours), media_type="image/png")


def _activity_png(rows: list[Any], hours: int) -> bytes:
    out = io.BytesIO()
    _activity_figure(rows, hours).savefig(out, format="png")
    return out.getvalue()


def _activity_figure(rows: list[Any], hours: int) -> Any:
    """The three charts (results per hour, files waiting, drop-to-result latency) as a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

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
    axes[1].set_ylim(0, max(1, *backlog) * 1.1)  # a count: from zero up, never a -0.04 to 0.04 axis
    axes[0].set_ylim(bottom=0)
    axes[2].plot(centres, p50, marker=".", label="median")
    axes[2].plot(centres, p95, marker=".", label="95th percentile")
    axes[2].set_ylabel("drop to result (s)")
    axes[2].legend(loc="upper left")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax is not axes[2]:  # counts
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelbottom=True)  # every chart labels its own time axis
        ax.set_xlabel("hours before now")
    figure.suptitle(f"Last {hours} hours: {len(rows)} results, {len(first)} of them first results of new files")
    return figure


@router.post("/dashboard/calibrate")
def calibrate(request: Request, db: Db, bundle: Bundle, account: Admin, csrf: Csrf) -> RedirectResponse:
    """Fit the site operating point from the reviews, as `pneumoscan calibrate --from-reviews` does."""
    check_csrf(request, csrf)
    try:
        fitted = calibration.fit(db, bundle)
    except calibration.TooFewReviews as exc:
        message = str(exc)
    else:
        point, figures = fitted.point, fitted.figures
        message = (f"operating point {point.id}: threshold {point.previous_threshold:.4f} -> {point.threshold:.4f} "
                   f"from {fitted.reviewed} reviews (sensitivity {figures['sensitivity']:.3f}, specificity "
                   f"{figures['specificity']:.3f} on them, sensitivity {figures['expected_sensitivity']:.3f} to "
                   f"expect on new cases); {point.relabelled} labels changed")
    audit(request, AuditAction.CALIBRATE, detail=message)
    request.session[FLASH] = message  # shown once by the next dashboard page; a link cannot put text there
    return RedirectResponse("/dashboard", status_code=303)
