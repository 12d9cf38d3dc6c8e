"""The system: /health (no login), /metrics (Prometheus), /openapi.json and the API docs page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from pneumoscan.db.images import ping
from pneumoscan.web.deps import AppSettings, Db, ModelVersion, Signed, page
from pneumoscan.web.schemas import SIGNED_IN, Health

router = APIRouter()
STATIC = Path(__file__).parent.parent / "static"


@router.get("/health", tags=["system"], response_model=Health,
            responses={503: {"model": Health, "description": "The database is not answering."}},
            summary="Liveness and database reachability; needs no login")
def health(db: Db, model_version: ModelVersion) -> Health | JSONResponse:
    try:
        with db() as session:
            ping(session)
    except SQLAlchemyError:
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return Health(status="ok", database="ok", model_version=model_version)


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, _account: Signed) -> JSONResponse:
    return JSONResponse(request.app.openapi())


class MetricsResponse(Response):
    media_type = CONTENT_TYPE_LATEST


@router.get("/metrics", tags=["system"], response_class=MetricsResponse,
            responses={**SIGNED_IN, 200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                                          "description": "Prometheus text exposition."}},
            summary="Prometheus metrics")
def metrics(request: Request, settings: AppSettings, db: Db, model_version: ModelVersion,
            _account: Signed) -> MetricsResponse:
    from pneumoscan.web.metrics import registry

    state = request.app.state
    if not hasattr(state, "metrics"):
        state.metrics = registry(settings, db, model_version)
    return MetricsResponse(generate_latest(state.metrics))


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    """The tab icon (browsers ask for it at this address; it holds nothing private, so needs no login)."""
    return FileResponse(STATIC / "favicon.ico", media_type="image/vnd.microsoft.icon",
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
def docs(request: Request, account: Signed) -> HTMLResponse:
    """The API's OpenAPI schema as a page (FastAPI's Swagger UI would need a CDN and inline script)."""
    schema = request.app.openapi()
    return page(request, "docs.html", paths=schema.get("paths", {}), info=schema.get("info", {}))
