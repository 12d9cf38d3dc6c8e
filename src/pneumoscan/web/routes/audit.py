"""The audit trail, for admins: /admin/audit, filtered by user, image, action and time (reviewers get 403)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from pneumoscan.db.audit import MAX_EVENTS, AuditQuery
from pneumoscan.domain import AUDIT_ACTIONS, AuditAction
from pneumoscan.services import audit as audit_trail
from pneumoscan.web.deps import MAX_ID, Admin, Db, page

router = APIRouter(include_in_schema=False)


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_page(request: Request, db: Db, account: Admin,
               user: Annotated[str | None, Query(max_length=128)] = None,
               image: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
               action: Annotated[AuditAction | None, Query()] = None,
               since: Annotated[datetime | None, Query(description="ISO 8601; UTC if no zone.")] = None,
               limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 200) -> HTMLResponse:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    query = AuditQuery(user=user or None, image_id=image, action=action, since=since, limit=limit)
    events = audit_trail.search(db, query)
    return page(request, "audit.html", events=events, query=query, actions=AUDIT_ACTIONS, limit=limit)
