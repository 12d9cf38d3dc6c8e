"""The review web app: FastAPI with server-rendered pages, a JSON API beside them, and /metrics.

``create_app`` is the composition root; the routes live in ``routes`` (one module per resource) and stay thin.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp

from pneumoscan.config import Settings
from pneumoscan.db import Database, open_database
from pneumoscan.db.users import use_password_hashing
from pneumoscan.models.bundle import load_bundle
from pneumoscan.services import audit as audit_trail
from pneumoscan.web.deps import error_response, is_api
from pneumoscan.web.render import NotRenderable, Renderer, warm
from pneumoscan.web.routes import ROUTERS
from pneumoscan.web.security import Forbidden, GuardMiddleware, LoginRequired, LoginThrottle, csrf_token

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
SESSION_COOKIE = "pneumoscan_session"


class PneumoscanApp(FastAPI):
    """FastAPI with the guard (security headers, body limit) outside Starlette's error middleware too.

    ``add_middleware`` puts a middleware inside ServerErrorMiddleware, so an unexpected exception's 500 would
    leave without the headers; wrapping the whole stack puts them on every response, that one included.
    """

    def build_middleware_stack(self) -> ASGIApp:
        return GuardMiddleware(super().build_middleware_stack())


def code_spans(text: str | None) -> Markup:
    """Markdown's `code` spans (the API's descriptions use them) as <code>, everything else escaped."""
    parts = escape(text or "").split("`")
    return Markup("".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)))


def _version() -> str:
    try:
        return metadata.version("pneumoscan")
    except metadata.PackageNotFoundError:
        return "unknown"


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    warm()  # before the first request, not in the first case a reader opens
    yield


def create_app(settings: Settings, db: Database | None = None) -> FastAPI:
    """The app for ``settings``; ``db`` defaults to the configured database (migrated on open)."""
    app = PneumoscanApp(title="pneumoscan", version=_version(), docs_url=None, redoc_url=None, openapi_url=None,
                        lifespan=_lifespan,
                        description="Chest X-ray screening results and their reviews. Sign in with the session "
                                    "cookie of the web app, or send the header Authorization: Bearer TOKEN "
                                    "(a token from: pneumoscan users token NAME).")
    app.state.settings = settings
    use_password_hashing(settings.password_hashing)
    app.state.db = db or open_database(settings.sqlalchemy_url)
    pruned = audit_trail.prune(app.state.db, settings)
    if pruned:
        log.info("pruned %d audit events older than %d days", pruned, settings.audit_retention_days)
    app.state.model_version = load_bundle(settings.model_path).version
    app.state.renderer = Renderer(settings, app.state.db)
    app.state.throttle = LoginThrottle()
    templates = Jinja2Templates(directory=HERE / "templates")  # autoescaping on for .html
    templates.env.globals["csrf_token"] = csrf_token
    templates.env.filters["code_spans"] = code_spans
    app.state.templates = templates

    app.add_middleware(SessionMiddleware, secret_key=settings.web_secret(), session_cookie=SESSION_COOKIE,
                       max_age=int(settings.session_hours * 3600), same_site="lax",
                       https_only=settings.secure_cookies)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for router in ROUTERS:
        app.include_router(router)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        if is_api(request):
            return JSONResponse({"detail": "sign in first: a session cookie or Authorization: Bearer TOKEN"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return error_response(request, 403, exc.reason)

    @app.exception_handler(NotRenderable)
    async def not_renderable(request: Request, exc: NotRenderable) -> Response:
        return error_response(request, exc.status, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if any(e["loc"][:1] == ("path",) for e in exc.errors()):  # an id out of range names nothing
            return error_response(request, 404, "no such resource: the id in the address is not a valid id")
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}" for e in exc.errors())
        return error_response(request, 422, f"invalid request: {problems}")

    @app.exception_handler(SQLAlchemyError)
    async def database_down(request: Request, exc: SQLAlchemyError) -> Response:
        log.error("database error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(request, 503, "the database is not answering; try again shortly")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(request, exc.status_code, str(exc.detail))

    return app

