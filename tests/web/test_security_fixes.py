"""The security defects of issue 29, each by the request that showed it, against the real app and database."""

from __future__ import annotations

import os
import stat
import time
from typing import Any

import pytest
from web_support import PASSWORD, Site, csrf_of, login

from pneumoscan.web.app import SESSION_COOKIE

HUGE_IDS = (2**63, 2**64, 10**30, 2**63 - 1)  # 2**63 - 1 fits, and names nothing


def _mode(path: Any) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sign_out_ends_the_session_so_a_replayed_cookie_gets_nothing(site: Site) -> None:
    client = site.signed_in("rex")
    copy = client.cookies.get(SESSION_COOKIE)
    assert copy and client.get("/worklist").status_code == 200
    token = csrf_of(client.get("/worklist").text)
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    replay = site.client()
    replay.cookies.set(SESSION_COOKIE, copy)
    assert replay.get("/worklist", follow_redirects=False).status_code == 303
    assert replay.get("/api/results").status_code == 401
    # Signing in again works, with a new session.
    assert login(site.client(), "rex", PASSWORD).status_code == 303


@pytest.mark.parametrize("image_id", HUGE_IDS)
def test_ids_beyond_64_bits_are_a_404_on_every_image_route(site: Site, reviewer: Any, image_id: int) -> None:
    token = csrf_of(reviewer.get("/worklist").text)
    for path in (f"/api/images/{image_id}", f"/api/images/{image_id}/image.png",
                 f"/api/images/{image_id}/heatmap.png", f"/api/images/{image_id}/reviews", f"/images/{image_id}"):
        response = reviewer.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert "Traceback" not in response.text
    posted = reviewer.post(f"/api/images/{image_id}/reviews", json={"label": "NORMAL"},
                           headers={"X-CSRF-Token": token})
    assert posted.status_code == 404
    form = reviewer.post(f"/images/{image_id}/reviews", data={"csrf_token": token, "label": "NORMAL"})
    assert form.status_code == 404


def test_an_unexpected_error_still_carries_every_security_header(site: Site) -> None:
    from fastapi.testclient import TestClient

    from pneumoscan.web.security import SECURITY_HEADERS

    def boom() -> None:
        raise RuntimeError("a bug of ours")

    site.app.add_api_route("/api/boom", boom)
    client = TestClient(site.app, raise_server_exceptions=False)
    response = client.get("/api/boom")
    assert response.status_code == 500
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.headers["cache-control"] == "no-store"


def test_a_locked_account_answers_as_a_wrong_password_does(site: Site) -> None:
    from pneumoscan.db.users import LOCK_AFTER

    site.user("rex")
    client = site.client()
    for _ in range(LOCK_AFTER):
        login(client, "rex", "not-the-password")
    locked = login(client, "rex", PASSWORD)  # the right password, on a locked account
    unknown = login(client, "nobody-at-all", PASSWORD)
    assert locked.status_code == unknown.status_code == 401
    assert "locked" not in locked.text
    message = "wrong name or password"
    assert message in locked.text and message in unknown.text


def test_a_locked_account_costs_the_same_password_hash_time(site: Site) -> None:
    """With the real (default) argon2 profile: a locked name must not answer in 3 ms where a wrong one takes 200."""
    from pneumoscan.db.users import LOCK_AFTER, add_user, authenticate, use_password_hashing

    previous = use_password_hashing("rfc9106-low-memory")
    try:
        with site.db.begin() as session:
            add_user(session, "lena", "reviewer", PASSWORD)
        for _ in range(LOCK_AFTER):
            with site.db.begin() as session:
                assert authenticate(session, "lena", "not-the-password").account is None

        def timed(name: str, password: str) -> float:
            with site.db.begin() as session:
                start = time.perf_counter()
                assert authenticate(session, name, password).account is None
                return time.perf_counter() - start

        locked = min(timed("lena", PASSWORD) for _ in range(3))
        wrong = min(timed("nobody", PASSWORD) for _ in range(3))
    finally:
        use_password_hashing(previous)
    assert locked > 0.5 * wrong, (locked, wrong)


def test_disabling_a_user_revokes_their_tokens_for_good(site: Site) -> None:
    from pneumoscan.db.users import issue_token, set_disabled

    site.user("bot")
    with site.db.begin() as session:
        token = issue_token(session, "bot")
    auth = {"Authorization": f"Bearer {token}"}
    client = site.client()
    assert client.get("/api/results", headers=auth).status_code == 200
    with site.db.begin() as session:
        set_disabled(session, "bot", True)
    with site.db.begin() as session:
        set_disabled(session, "bot", False)
    assert client.get("/api/results", headers=auth).status_code == 401


def test_the_database_file_and_the_render_cache_are_private(site: Site, reviewer: Any, tmp_path: Any) -> None:
    from pneumoscan.db import open_database

    old = os.umask(0o022)
    try:
        path = tmp_path / "fresh" / "pneumoscan.db"
        db = open_database(f"sqlite:///{path}")
        with db.begin() as session:
            from pneumoscan.db.images import ping

            ping(session)
        db.engine.dispose()
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    for sibling in path.parent.iterdir():  # -wal and -shm take the database's mode
        assert _mode(sibling) & 0o077 == 0, sibling
    assert reviewer.get(f"/api/images/{site.ids['n0.png']}/image.png").status_code == 200
    cache = site.app.state.renderer.cache
    assert _mode(cache) == 0o700 and _mode(cache.parent) == 0o700
    assert all(_mode(f) == 0o600 for f in cache.iterdir())


def test_the_dashboard_message_comes_from_the_session_never_the_address(site: Site, admin: Any) -> None:
    spoof = "Call 555-0100 to confirm your password"
    assert spoof not in admin.get("/dashboard", params={"message": spoof}).text
    token = csrf_of(admin.get("/dashboard").text)
    fitted = admin.post("/dashboard/calibrate", data={"csrf_token": token}, follow_redirects=False)
    assert fitted.status_code == 303 and fitted.headers["location"] == "/dashboard"
    first = admin.get("/dashboard").text
    assert 'id="message"' in first and "reviewed" in first
    assert 'id="message"' not in admin.get("/dashboard").text  # shown once


def test_patient_images_are_never_stored_by_a_cache(site: Site, reviewer: Any) -> None:
    image_id = site.ids["n0.png"]
    for path in (f"/api/images/{image_id}/image.png", f"/images/{image_id}", f"/api/images/{image_id}"):
        assert reviewer.get(path).headers["cache-control"] == "no-store", path


def test_favicon_docs_title_and_chart_axes(site: Site, reviewer: Any) -> None:
    import io

    from PIL import Image

    icon = site.client().get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/vnd.microsoft.icon"
    assert Image.open(io.BytesIO(icon.content)).size[0] >= 16
    docs = reviewer.get("/docs").text
    assert "`" not in docs and "pneumoscan API 1" not in docs and "The pneumoscan API</h1>" in docs
    plot = reviewer.get("/dashboard/activity.png")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png"


def test_the_files_waiting_axis_starts_at_zero_and_every_chart_labels_time(site: Site) -> None:
    from pneumoscan.web.routes.dashboard import _activity_figure

    figure = _activity_figure([], 48)
    figure.canvas.draw()
    axes = figure.get_axes()
    waiting = next(a for a in axes if a.get_ylabel() == "files waiting")
    low, high = waiting.get_ylim()
    assert low == 0 and high >= 1
    assert all(a.get_xlabel() == "hours before now" for a in axes)
    assert all(any(t.get_visible() and t.get_text() for t in a.get_xticklabels()) for a in axes)
