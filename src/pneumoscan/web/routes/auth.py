"""Signing in and out: /login, /logout, and / (to the worklist)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pneumoscan.db.users import authenticate, end_sessions
from pneumoscan.domain import AuditAction
from pneumoscan.web.deps import Csrf, Db, Signed, audit, page
from pneumoscan.web.security import account_of, check_csrf, sign_in

router = APIRouter(include_in_schema=False)
HOME = "/worklist"


def _local(target: str | None, default: str = HOME) -> str:
    """``target`` if it is a path on this site, else ``default``: never redirect to another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


@router.get("/")
def home(account: Signed) -> RedirectResponse:
    return RedirectResponse(HOME, status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> HTMLResponse:
    return page(request, "login.html", next=_local(next), error=None)


@router.post("/login")
def login(request: Request, db: Db, csrf: Csrf, name: Annotated[str, Form(max_length=64)],
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
    with db.begin() as session:
        outcome = authenticate(session, name.strip(), password)
    if outcome.account is None:
        audit(request, AuditAction.SIGN_IN_FAILED, actor=name.strip(),
              detail="account locked" if outcome.locked else outcome.reason)
        throttle.failed(client)
        response = page(request, "login.html", next=_local(next), error=outcome.reason)
        response.status_code = 401
        return response
    sign_in(request, outcome.account)
    audit(request, AuditAction.SIGN_IN, actor=outcome.account.name)
    return RedirectResponse(_local(next), status_code=303)


@router.post("/logout")
def logout(request: Request, db: Db, csrf: Csrf) -> RedirectResponse:
    check_csrf(request, csrf)
    account, by_token = account_of(request)
    if account is not None and not by_token:
        with db.begin() as session:  # a copy of the cookie replayed later must not work either
            end_sessions(session, account.id)
        audit(request, AuditAction.SIGN_OUT, actor=account.name)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)
