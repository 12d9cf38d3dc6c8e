"""Who is asking, and may they: session cookies, bearer tokens, roles, CSRF, login throttling, headers."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pneumoscan.db import Database
from pneumoscan.db.users import Account, current_account, token_account
from pneumoscan.domain import Role

# Pages may only load what the app itself serves; no inline script, no framing.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
MAX_BODY_BYTES = 64 * 1024  # forms and JSON bodies; the app takes no uploads
OWN_LIMIT_PREFIXES = ("/dicomweb/",)  # STOW-RS streams whole studies under its own limit (dicomweb_max_bytes)
CSRF_FIELD, CSRF_HEADER = "csrf_token", "x-csrf-token"


class LoginRequired(Exception):
    """No valid session or token: pages redirect to /login, the API answers 401."""


class Forbidden(Exception):
    """Signed in, but the role does not allow this (or the CSRF token is missing or wrong)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use (the login form has one before anyone signs in)."""
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def check_csrf(request: Request, submitted: str | None) -> None:
    expected = request.session.get("csrf")
    if not expected or not submitted or not secrets.compare_digest(str(expected), submitted):
        raise Forbidden("the form's security token is missing or out of date: reload the page and try again")


def sign_in(request: Request, account: Account) -> None:
    """A fresh session for ``account`` (a new CSRF token too: nothing from before sign-in carries over)."""
    request.session.clear()
    request.session.update({"uid": account.id, "epoch": account.session_epoch, "csrf": secrets.token_urlsafe(32),
                            "at": int(time.time())})


def account_of(request: Request) -> tuple[Account | None, bool]:
    """(the account making the request, whether it came by bearer token); (None, False) if nobody valid."""
    db: Database = request.app.state.db
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, False
        with db.begin() as session:
            return token_account(session, token.strip()), True
    uid, epoch, signed_at = (request.session.get(k) for k in ("uid", "epoch", "at"))
    if not isinstance(uid, int) or not isinstance(epoch, int) or not isinstance(signed_at, int):
        return None, False
    if time.time() - signed_at > request.app.state.settings.session_hours * 3600:
        request.session.clear()
        return None, False
    with db() as session:
        return current_account(session, uid, epoch), False


def require_account(request: Request) -> Account:
    """Dependency: the signed-in account, else LoginRequired."""
    account, by_token = account_of(request)
    if account is None:
        raise LoginRequired()
    if account.role == Role.SENDER:  # a machine's account: STOW-RS (routes/dicomweb.py) and nothing else
        raise Forbidden("a sender may only store studies (POST /dicomweb/studies)")
    request.state.account, request.state.by_token = account, by_token
    return account


def require_admin(request: Request) -> Account:
    account = require_account(request)
    if not account.is_admin:
        raise Forbidden("only an admin can manage users")
    return account


def check_api_write(request: Request) -> None:
    """A state-changing API call by cookie needs the CSRF header; a bearer token needs none."""
    if not getattr(request.state, "by_token", False):
        check_csrf(request, request.headers.get(CSRF_HEADER))


class LoginThrottle:
    """At most ``limit`` failed logins per client address in ``window`` seconds (kept in memory)."""

    def __init__(self, limit: int = 20, window: float = 300.0) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] < now - self.window:
            failures.popleft()
        return failures

    def blocked(self, client: str) -> bool:
        with self._lock:
            return len(self._recent(client, time.monotonic())) >= self.limit

    def failed(self, client: str) -> None:
        with self._lock:
            self._recent(client, time.monotonic()).append(time.monotonic())


class GuardMiddleware:
    """Security headers on every response, and a 413 for bodies over MAX_BODY_BYTES (declared or streamed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        limited = not str(scope.get("path", "")).startswith(OWN_LIMIT_PREFIXES)
        if limited and declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            await _too_large(send)
            return
        if limited and declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # Streamed without a length: read it here, up to the limit, and hand the app the whole body.
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > MAX_BODY_BYTES:
                    await _too_large(send)
                    return
            body, delivered = b"".join(chunks), False

            async def replay() -> Message:
                nonlocal delivered
                if delivered:
                    return await receive()
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}

            receive = replay

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if not any(k.lower() == b"cache-control" for k, _ in message.get("headers", [])):
                    extra.append((b"cache-control", b"no-store"))  # pages and JSON: never cached
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


async def _too_large(send: Send) -> None:
    body = b'{"detail": "request body too large"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *((k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


