"""DICOMweb in: STOW-RS (``POST /dicomweb/studies``), for a machine with a `sender` token and nobody else.

The body (a whole study, often chunked) is streamed to an unnamed temporary file in the spool folder under
its own limit (PNEUMOSCAN_DICOMWEB_MAX_BYTES; the app's 64 KiB one does not apply here), read only after the
token is checked, and stored instance by instance as the C-STORE receiver stores them (``dicomnet.stow``).
"""

from __future__ import annotations

import tempfile

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pneumoscan.config import Settings
from pneumoscan.dicomnet.stow import DICOM_JSON, MultipartError, boundary_of, store_study, stow_reply
from pneumoscan.domain import Role
from pneumoscan.web.security import account_of

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])


def _problem(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def _refusal(request: Request) -> Response | None:
    """401 without a valid bearer token, 403 for any role but sender; None when the sender may store."""
    account, by_token = account_of(request)
    if account is None or not by_token:
        return _problem(401, "STOW-RS needs Authorization: Bearer TOKEN, a token of a user with the sender role",
                        **{"WWW-Authenticate": "Bearer"})
    if account.role != Role.SENDER:
        return _problem(403, "only a user with the sender role may store studies")
    return None


@router.post("/studies", summary="Store instances (STOW-RS, PS3.18 10.5)",
             responses={200: {"description": "all stored"}, 202: {"description": "some failed"},
                        409: {"description": "none stored"}})
async def store_instances(request: Request) -> Response:
    """Store a ``multipart/related; type="application/dicom"`` body's instances; a DICOM JSON reply with
    ReferencedSOPSequence (0008,1199) for each stored and FailedSOPSequence (0008,1198) for each refused."""
    if (refused := _refusal(request)) is not None:
        return refused
    try:
        boundary = boundary_of(request.headers.get("content-type", ""))
    except ValueError as exc:
        return _problem(415, str(exc))
    settings: Settings = request.app.state.settings
    limit = settings.dicomweb_max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return _problem(413, f"the body is over PNEUMOSCAN_DICOMWEB_MAX_BYTES ({limit} bytes)")
    spool = settings.dicom_spool or settings.data_dir / "received"
    await run_in_threadpool(spool.mkdir, parents=True, exist_ok=True)
    # Unnamed where the OS can (else hidden and unlinked at once): the watcher never takes it, a crash leaves nothing.
    with tempfile.TemporaryFile(dir=spool, prefix=".stow-", suffix=".tmp") as body:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return _problem(413, f"the body is over PNEUMOSCAN_DICOMWEB_MAX_BYTES ({limit} bytes)")
            await run_in_threadpool(body.write, chunk)
        try:
            outcomes = await run_in_threadpool(store_study, spool, body, boundary)
        except MultipartError as exc:
            return _problem(400, f"not a multipart/related body: {exc}")
    if not outcomes:
        return _problem(400, "the body holds no instance")
    status, reply = stow_reply(outcomes)
    return JSONResponse(reply, status_code=status, media_type=DICOM_JSON)
