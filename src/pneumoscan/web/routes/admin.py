"""Users, for admins: /admin/users (list and add) and disabling or enabling one."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pneumoscan.db import Database
from pneumoscan.db.users import UserError, add_user, list_users, set_disabled
from pneumoscan.domain import ROLES, AuditAction, Role
from pneumoscan.web.deps import Admin, Csrf, Db, audit, error_response, page
from pneumoscan.web.security import Forbidden, check_csrf

router = APIRouter(include_in_schema=False)


class Action(StrEnum):
    DISABLE = "disable"
    ENABLE = "enable"


def _users_page(request: Request, db: Database, error: str | None = None) -> HTMLResponse:
    with db() as session:
        users = list_users(session)
    return page(request, "users.html", users=users, roles=ROLES, error=error, message=None)


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(request: Request, db: Db, account: Admin) -> HTMLResponse:
    return _users_page(request, db)


@router.post("/admin/users")
def create_user(request: Request, db: Db, account: Admin, csrf: Csrf, name: Annotated[str, Form(max_length=64)],
                role: Annotated[Role, Form()], password: Annotated[str, Form(max_length=1024)]) -> Response:
    check_csrf(request, csrf)
    try:
        with db.begin() as session:
            add_user(session, name.strip(), role.value, password)
    except UserError as exc:
        response = _users_page(request, db, str(exc))
        response.status_code = 400
        return response
    audit(request, AuditAction.USER_ADD, detail=f"{name.strip()} as {role.value}")
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{name}/{action}")
def change_user(request: Request, db: Db, name: str, action: str, account: Admin, csrf: Csrf) -> Response:
    check_csrf(request, csrf)
    if action not in tuple(Action):
        return error_response(request, 404, "unknown action")
    if action == Action.DISABLE and name == account.name:
        raise Forbidden("you cannot disable your own account")
    try:
        with db.begin() as session:
            set_disabled(session, name, action == Action.DISABLE)
    except UserError as exc:
        return error_response(request, 404, str(exc))
    audit(request, AuditAction.USER_DISABLE if action == Action.DISABLE else AuditAction.USER_ENABLE, detail=name)
    return RedirectResponse("/admin/users", status_code=303)
