"""The web app's routes, filters and security, against the real app on a real SQLite database.

Every request goes through the whole app (middleware, sessions, routes, templates) over httpx; the
database was filled by the real pipeline with the tiny test model.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from support import dicoms, xrays
from web_support import PASSWORD, Site, build_site, csrf_of, login

from pneumoscan.db.schema import ApiToken, Review, User

TINY = "tiny-test-1"  # the version of the tiny test bundle (tests/conftest.py)
PROTECTED_PAGES = ["/", "/worklist", "/images/1", "/dashboard", "/dashboard/activity.png", "/admin/users", "/docs"]
PROTECTED_API = ["/api/results", "/api/images/1", "/api/images/1/image.png", "/api/images/1/heatmap.png",
                 "/api/images/1/reviews", "/metrics", "/openapi.json"]


def _reviews(site: Site) -> list[tuple[int, str, str, str | None]]:
    with site.db() as session:
        reviews = session.scalars(select(Review).order_by(Review.id))
        return [(r.image_id, r.reviewer, r.label, r.comment) for r in reviews]


def _model_label(site: Site, client: Any, image_id: int) -> str:
    return str(client.get(f"/api/images/{image_id}").json()["predictions"][0]["label"])


# --- sign-in, sessions, tokens -----------------------------------------------------------------------


def test_everything_but_health_and_login_needs_a_login(site: Site) -> None:
    client = site.client()
    for path in PROTECTED_PAGES:
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next="), path
    for path in PROTECTED_API:
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/images/1/reviews", json={"label": "NORMAL"}).status_code == 401
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/login").status_code == 200
    assert _reviews(site) == []


def test_login_goes_back_to_the_page_asked_for_but_never_to_another_site(site: Site) -> None:
    site.user("rex")
    client = site.client()
    assert login(client, "rex", PASSWORD, "/dashboard").headers["location"] == "/dashboard"
    for hostile in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        client = site.client()
        assert login(client, "rex", PASSWORD, hostile).headers["location"] == "/worklist", hostile


def test_wrong_passwords_lock_the_account_and_an_admin_unlocks_it(site: Site) -> None:
    from pneumoscan.db.users import LOCK_AFTER, set_disabled

    site.user("rex")
    client = site.client()
    unknown = login(client, "nobody", PASSWORD)
    wrong = login(client, "rex", "not-the-password")
    assert unknown.status_code == wrong.status_code == 401
    assert "wrong name or password" in unknown.text and "wrong name or password" in wrong.text  # no name oracle
    for _ in range(LOCK_AFTER - 1):
        login(client, "rex", "not-the-password")
    locked = login(client, "rex", PASSWORD)  # the right password, too late
    assert locked.status_code == 401 and "wrong name or password" in locked.text  # a lock confirms no name
    assert client.get("/worklist", follow_redirects=False).status_code == 303
    with site.db.begin() as session:
        set_disabled(session, "rex", False)  # what `pneumoscan users enable rex` does
    assert login(client, "rex", PASSWORD).status_code == 303
    assert client.get("/worklist").status_code == 200


def test_failed_logins_from_one_address_are_throttled(site: Site) -> None:
    site.user("rex")
    client = site.client()
    limit = site.app.state.throttle.limit
    statuses = [login(client, f"guess{i}", "wrong-password").status_code for i in range(limit)]
    assert set(statuses) == {401}
    throttled = login(client, "rex", PASSWORD)
    assert throttled.status_code == 429 and "too many failed sign-ins" in throttled.text


def test_passwords_and_tokens_are_stored_only_as_hashes(site: Site) -> None:
    from pneumoscan.db.users import issue_token

    site.user("rex")
    with site.db.begin() as session:
        token = issue_token(session, "rex")
    with site.db() as session:
        user = session.scalars(select(User)).one()
        stored = session.scalars(select(ApiToken.token_hash)).one()
        dump = "\n".join(str(row) for table in ("users", "api_tokens")
                         for row in session.execute(text(f"SELECT * FROM {table}")))
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in dump and token not in dump and len(stored) == 64


def test_a_bearer_token_works_for_the_api_until_revoked_or_the_user_is_disabled(site: Site) -> None:
    from pneumoscan.db.users import issue_token, revoke_tokens, set_disabled

    site.user("bot")
    with site.db.begin() as session:
        token = issue_token(session, "bot")
    client = site.client()
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/results", headers=auth).status_code == 200
    image_id = site.ids["p0.png"]
    posted = client.post(f"/api/images/{image_id}/reviews", headers=auth, json={"label": "PNEUMONIA"})
    assert posted.status_code == 201 and posted.json()["reviewer"] == "bot"  # no CSRF needed: no cookie involved
    for bad in (f"Bearer {token}x", "Bearer ", f"Basic {token}", "Bearer psk_forged"):
        assert client.get("/api/results", headers={"Authorization": bad}).status_code == 401, bad
    with site.db.begin() as session:
        set_disabled(session, "bot", True)
    assert client.get("/api/results", headers=auth).status_code == 401
    with site.db.begin() as session:
        set_disabled(session, "bot", False)  # re-enabling revives no token: disabling revoked them
    assert client.get("/api/results", headers=auth).status_code == 401
    with site.db.begin() as session:
        assert revoke_tokens(session, "bot") == 0
        token = issue_token(session, "bot")
    assert client.get("/api/results", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with site.db.begin() as session:
        assert revoke_tokens(session, "bot") == 1
    assert client.get("/api/results", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_forged_or_expired_session_cookie_signs_nobody_in(site: Site, settings: Any) -> None:
    from pneumoscan.web.app import SESSION_COOKIE, create_app

    client = site.signed_in("rex")
    cookie = client.cookies[SESSION_COOKIE]
    payload, _, signature = cookie.partition(".")
    for forged in (payload + ".AAAA" + signature[4:], "e30=.forged.sig", cookie[:-3] + "xyz"):
        other = site.client()
        other.cookies.set(SESSION_COOKIE, forged)
        assert other.get("/worklist", follow_redirects=False).status_code == 303
        assert other.get("/api/results").status_code == 401
    # Signed by another install's key: refused too.
    stranger = create_app(settings.model_copy(update={"secret_key": "another-install"}), site.db)
    from fastapi.testclient import TestClient

    foreign = TestClient(stranger)
    foreign.cookies.set(SESSION_COOKIE, cookie)
    assert foreign.get("/worklist", follow_redirects=False).status_code == 303
    # Expired: an app whose sessions last one second.
    short = create_app(settings.model_copy(update={"session_hours": 1 / 3600}), site.db)
    brief = TestClient(short)
    assert login(brief, "rex", PASSWORD).status_code == 303
    assert brief.get("/worklist", follow_redirects=False).status_code == 200
    time.sleep(1.5)
    assert brief.get("/worklist", follow_redirects=False).status_code == 303


def test_disabling_a_user_ends_their_open_sessions(site: Site) -> None:
    from pneumoscan.db.users import set_disabled

    client = site.signed_in("rex")
    assert client.get("/worklist").status_code == 200
    with site.db.begin() as session:
        set_disabled(session, "rex", True)
    assert client.get("/worklist", follow_redirects=False).status_code == 303
    assert "disabled" in login(client, "rex", PASSWORD).text


def test_sign_out_needs_the_csrf_token_and_ends_the_session(site: Site) -> None:
    client = site.signed_in("rex")
    assert client.post("/logout", data={"csrf_token": "wrong"}).status_code == 403
    assert client.get("/worklist").status_code == 200
    token = csrf_of(client.get("/worklist").text)
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert client.get("/worklist", follow_redirects=False).status_code == 303


# --- roles and CSRF ------------------------------------------------------------------------------------


def test_reviewers_cannot_manage_users(site: Site, reviewer: Any) -> None:
    assert reviewer.get("/admin/users").status_code == 403
    token = csrf_of(reviewer.get("/worklist").text)
    made = reviewer.post("/admin/users", data={"csrf_token": token, "name": "mallory", "role": "admin",
                                               "password": PASSWORD})
    assert made.status_code == 403
    assert reviewer.post("/admin/users/rex/disable", data={"csrf_token": token}).status_code == 403
    assert reviewer.post("/dashboard/calibrate", data={"csrf_token": token}).status_code == 403
    with site.db() as session:
        assert [(u.name, u.disabled) for u in session.scalars(select(User))] == [("rex", False)]


def test_an_admin_adds_and_disables_users_in_the_page(site: Site, admin: Any) -> None:
    token = csrf_of(admin.get("/admin/users").text)
    made = admin.post("/admin/users", data={"csrf_token": token, "name": "rita", "role": "reviewer",
                                            "password": PASSWORD}, follow_redirects=False)
    assert made.status_code == 303
    short = admin.post("/admin/users", data={"csrf_token": token, "name": "tim", "role": "reviewer",
                                             "password": "short"})
    assert short.status_code == 400 and "at least 10 characters" in short.text
    assert admin.post("/admin/users", data={"name": "eve", "role": "admin", "password": PASSWORD}).status_code == 422
    disabled = admin.post("/admin/users/rita/disable", data={"csrf_token": token}, follow_redirects=False)
    assert disabled.status_code == 303
    assert admin.post("/admin/users/ada/disable", data={"csrf_token": token}).status_code == 403  # not oneself
    with site.db() as session:
        assert {u.name: u.disabled for u in session.scalars(select(User))} == {"ada": False, "rita": True}


def test_every_review_form_needs_the_sessions_csrf_token(site: Site, reviewer: Any) -> None:
    image_id = site.ids["p0.png"]
    page = reviewer.get(f"/images/{image_id}").text
    for token in (None, "", "forged", csrf_of(site.signed_in("other").get("/worklist").text)):
        data = {"label": "NORMAL", **({"csrf_token": token} if token is not None else {})}
        assert reviewer.post(f"/images/{image_id}/reviews", data=data).status_code in (403, 422), token
    assert reviewer.post(f"/api/images/{image_id}/reviews", json={"label": "NORMAL"}).status_code == 403
    assert _reviews(site) == []
    ok = reviewer.post(f"/images/{image_id}/reviews", data={"csrf_token": csrf_of(page), "label": "NORMAL"},
                       follow_redirects=False)
    assert ok.status_code == 303
    api = reviewer.post(f"/api/images/{image_id}/reviews", json={"label": "PNEUMONIA"},
                        headers={"X-CSRF-Token": csrf_of(page)})
    assert api.status_code == 201
    assert [(r[1], r[2]) for r in _reviews(site)] == [("rex", "NORMAL"), ("rex", "PNEUMONIA")]


def test_the_login_form_itself_needs_its_csrf_token(site: Site) -> None:
    site.user("rex")
    client = site.client()
    assert client.post("/login", data={"name": "rex", "password": PASSWORD}).status_code == 422
    assert client.post("/login", data={"csrf_token": "x", "name": "rex", "password": PASSWORD}).status_code == 403


# --- reviews -----------------------------------------------------------------------------------------------


def test_reviews_are_append_only_and_the_history_shows_who_said_what(site: Site, reviewer: Any) -> None:
    image_id = site.ids["n0.png"]
    token = csrf_of(reviewer.get(f"/images/{image_id}").text)
    headers = {"X-CSRF-Token": token}
    first = reviewer.post(f"/api/images/{image_id}/reviews", json={"label": "NORMAL", "comment": "clear"},
                          headers=headers).json()
    other = site.signed_in("rita")
    other_token = csrf_of(other.get("/worklist").text)
    second = other.post(f"/api/images/{image_id}/reviews", json={"label": "PNEUMONIA", "comment": "left base"},
                        headers={"X-CSRF-Token": other_token}).json()
    history = reviewer.get(f"/api/images/{image_id}/reviews").json()
    assert [(h["reviewer"], h["label"], h["comment"]) for h in history] == [
        ("rex", "NORMAL", "clear"), ("rita", "PNEUMONIA", "left base")]
    assert [h["id"] for h in history] == [first["id"], second["id"]]
    assert first["created_at"] <= second["created_at"]
    for method in ("put", "patch", "delete"):
        assert getattr(reviewer, method)(f"/api/images/{image_id}/reviews", headers=headers).status_code == 405
    page = reviewer.get(f"/images/{image_id}").text
    assert page.index("clear") < page.index("left base") and "rita" in page
    assert reviewer.post(f"/api/images/{image_id}/reviews", json={"label": "MAYBE"}, headers=headers).status_code == 422
    assert reviewer.post("/api/images/999999/reviews", json={"label": "NORMAL"}, headers=headers).status_code == 404
    assert len(_reviews(site)) == 2


def test_a_comment_with_markup_is_kept_as_typed_and_shown_escaped(site: Site, reviewer: Any) -> None:
    image_id = site.ids["p1.jpeg"]
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)> \' OR 1=1 --'
    token = csrf_of(reviewer.get(f"/images/{image_id}").text)
    reviewer.post(f"/images/{image_id}/reviews", data={"csrf_token": token, "label": "NORMAL", "comment": hostile})
    assert _reviews(site)[0][3] == hostile
    page = reviewer.get(f"/images/{image_id}").text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "<script" not in re.sub(r'<script src="/static/app.js" defer></script>', "", page)
    worklist = reviewer.get("/worklist?review=reviewed").text
    assert "<img src=x" not in worklist


def test_a_review_moves_on_to_the_next_most_suspicious_unreviewed_case(site: Site, reviewer: Any) -> None:
    rows = reviewer.get("/api/results?sort=probability&review=unreviewed").json()["results"]
    first, second = rows[0]["id"], rows[1]["id"]
    token = csrf_of(reviewer.get(f"/images/{first}").text)
    moved = reviewer.post(f"/images/{first}/reviews", data={"csrf_token": token, "label": "PNEUMONIA", "then": "next"},
                          follow_redirects=False)
    assert moved.headers["location"] == f"/images/{second}"
    worklist = reviewer.get("/worklist").text
    listed = [int(i) for i in re.findall(r'<tr class="case" data-id="(\d+)"', worklist)]
    assert first not in listed and listed[0] == second


# --- results and filters -------------------------------------------------------------------------------------


def _ids(client: Any, query: str) -> list[int]:
    response = client.get(f"/api/results?{query}")
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["results"]]


def test_each_results_filter_of_the_api(site: Site, reviewer: Any) -> None:
    from pneumoscan.db.results import ResultFilter, query_results

    everything = reviewer.get("/api/results?limit=500").json()
    rows = everything["results"]
    assert everything["total"] == len(rows) == 6
    done = [r for r in rows if r["status"] == "done"]
    by_probability = sorted(done, key=lambda r: (-r["probability"], -r["id"]))
    assert _ids(reviewer, "sort=probability")[:5] == [r["id"] for r in by_probability]
    assert _ids(reviewer, "status=rejected") == [site.ids["bad.png"]]
    pneumonia = {r["id"] for r in done if r["label"] == "PNEUMONIA"}
    assert set(_ids(reviewer, "label=PNEUMONIA")) == pneumonia
    middle = sorted(r["probability"] for r in done)[2]
    assert set(_ids(reviewer, f"min_probability={middle}")) == {r["id"] for r in done if r["probability"] >= middle}
    assert set(_ids(reviewer, f"max_probability={middle}")) == {r["id"] for r in done if r["probability"] <= middle}
    assert _ids(reviewer, f"since={(datetime.now(UTC) + timedelta(hours=1)).isoformat()}".replace("+", "%2B")) == []
    assert len(_ids(reviewer, "since=2000-01-01")) == 6
    assert _ids(reviewer, "path=*/d0.dcm") == [site.ids["d0.dcm"]]
    assert _ids(reviewer, f"model_version={TINY}") != []
    unknown = reviewer.get("/api/results?model_version=someone-else").json()["results"]
    assert len(unknown) == 6 and {r["probability"] for r in unknown} == {None}  # each image once, unpredicted
    # Paging: two pages of 2 are the first 4 rows, and the totals say how many there are.
    page1 = reviewer.get("/api/results?sort=probability&limit=2").json()
    page2 = reviewer.get("/api/results?sort=probability&limit=2&offset=2").json()
    assert [r["id"] for r in page1["results"] + page2["results"]] == _ids(reviewer, "sort=probability&limit=4")
    assert page1["total"] == page2["total"] == 6
    # Review states, against the library's own query.
    token = csrf_of(reviewer.get("/worklist").text)
    model = {r["id"]: r["label"] for r in done}
    agree, disagree = by_probability[0]["id"], by_probability[1]["id"]
    other = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}
    reviewer.post(f"/api/images/{agree}/reviews", json={"label": model[agree]}, headers={"X-CSRF-Token": token})
    reviewer.post(f"/api/images/{disagree}/reviews", json={"label": other[model[disagree]]},
                  headers={"X-CSRF-Token": token})
    assert set(_ids(reviewer, "review=reviewed")) == {agree, disagree}
    assert _ids(reviewer, "review=disagreement") == [disagree]
    disputed = reviewer.get("/api/results?review=disagreement&limit=1&offset=0").json()
    assert disputed["total"] == 1 and [r["id"] for r in disputed["results"]] == [disagree]
    assert reviewer.get("/api/results?review=disagreement&offset=1").json()["results"] == []
    assert set(_ids(reviewer, "review=unreviewed")) == {r["id"] for r in done} - {agree, disagree}
    with site.db() as session:
        library = query_results(session, ResultFilter(model_version=TINY, review="unreviewed", limit=100))
    assert set(_ids(reviewer, "review=unreviewed")) == {r["id"] for r in library}
    shown = {r["id"]: (r["review_label"], r["reviewed_by"]) for r in reviewer.get("/api/results").json()["results"]}
    assert shown[disagree] == (other[model[disagree]], "rex")


@pytest.mark.parametrize("query", [
    "status=finished", "label=maybe", "min_probability=2", "max_probability=-1", "min_probability=abc",
    "limit=0", "limit=100000", "offset=-1", "since=yesterday", "sort=random", "review=sometimes",
    "model_version=" + "x" * 65,
])
def test_invalid_filters_get_a_clear_422_and_no_traceback(reviewer: Any, query: str) -> None:
    response = reviewer.get(f"/api/results?{query}")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("invalid request: ") and "Traceback" not in response.text
    page = reviewer.get(f"/worklist?{query}")
    assert page.status_code == 422 and "invalid request" in page.text and "<h1>422</h1>" in page.text


@pytest.mark.parametrize("pattern", ["' OR 1=1 --", "%", "_", "\\", "*'; DROP TABLE images; --", "../../etc/passwd",
                                     "..%2F..%2Fetc%2Fpasswd", "\x00"])
def test_sql_metacharacters_and_dot_dot_in_filters_match_nothing_and_change_nothing(
        site: Site, reviewer: Any, pattern: str) -> None:
    before = reviewer.get("/api/results?limit=500").json()["results"]
    response = reviewer.get("/api/results", params={"path": pattern, "model_version": pattern[:60]})
    assert response.status_code in (200, 422)
    if response.status_code == 200:
        assert [r for r in response.json()["results"] if r["status"] == "done"] == []
    assert reviewer.get("/worklist", params={"path": pattern}).status_code in (200, 422)
    assert reviewer.get("/api/results?limit=500").json()["results"] == before


def test_non_numeric_and_unknown_ids_get_clean_4xx(site: Site, reviewer: Any) -> None:
    for path in ("/images/abc", "/images/1.5", "/images/..%2F..%2Fetc%2Fpasswd", "/api/images/abc",
                 "/api/images/abc/image.png", "/api/images/-1x/reviews"):
        response = reviewer.get(path)
        assert response.status_code in (404, 422), path
        assert "Traceback" not in response.text
    assert reviewer.get("/images/999999").status_code == 404
    assert reviewer.get("/api/images/999999").json() == {"detail": "no image with id 999999"}
    assert reviewer.get("/api/images/999999/image.png").status_code == 404


def test_no_route_reads_a_path_given_by_the_client(site: Site, reviewer: Any) -> None:
    for path in ("/static/../config.py", "/static/%2e%2e/config.py", "/static/..%2F..%2F..%2Fetc%2Fpasswd",
                 "/api/images/1/image.png?path=/etc/passwd", "/static//etc/passwd"):
        response = reviewer.get(path)
        assert "root:" not in response.text and "class Settings" not in response.text, path
        assert response.status_code in (200, 404) if "?" in path else response.status_code == 404, path
    assert reviewer.get("/static/app.js").status_code == 200


def test_oversized_bodies_are_refused_before_they_are_read(site: Site, reviewer: Any) -> None:
    image_id = site.ids["n0.png"]
    token = csrf_of(reviewer.get(f"/images/{image_id}").text)
    big = {"csrf_token": token, "label": "NORMAL", "comment": "x" * 100_000}
    assert reviewer.post(f"/images/{image_id}/reviews", data=big).status_code == 413
    body = b'{"label": "NORMAL", "comment": "' + b"y" * 70_000 + b'"}'
    response = reviewer.post(f"/api/images/{image_id}/reviews", content=body,
                             headers={"X-CSRF-Token": token, "Content-Type": "application/json"})
    assert response.status_code == 413

    def chunks() -> Any:  # no Content-Length: counted as it streams
        yield b'{"label": "NORMAL", "comment": "'
        for _ in range(100):
            yield b"z" * 1000
        yield b'"}'

    streamed = reviewer.post(f"/api/images/{image_id}/reviews", content=chunks(),
                             headers={"X-CSRF-Token": token, "Content-Type": "application/json"})
    assert streamed.status_code == 413
    too_long = reviewer.post(f"/api/images/{image_id}/reviews", json={"label": "NORMAL", "comment": "c" * 2001},
                             headers={"X-CSRF-Token": token})
    assert too_long.status_code == 422
    assert _reviews(site) == []


def test_security_headers_on_pages_api_errors_and_assets(site: Site, reviewer: Any) -> None:
    for path in ("/worklist", "/api/results", "/images/999999", "/static/app.js", "/login", "/health",
                 f"/api/images/{site.ids['n0.png']}/image.png"):
        headers = reviewer.get(path).headers
        assert "script-src 'self'" in headers["content-security-policy"] and "unsafe-inline" not in \
            headers["content-security-policy"], path
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff", path
    site.user("sam")
    signed = login(site.client(), "sam", PASSWORD)
    cookie = [v for k, v in signed.headers.multi_items() if k == "set-cookie"]
    assert cookie and all("httponly" in c.lower() and "samesite=lax" in c.lower() for c in cookie)
    for path in ("/worklist", "/dashboard", "/docs", "/login", f"/images/{site.ids['n0.png']}"):
        html = reviewer.get(path).text
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/app.js" defer>'], path
        assert " on" not in re.sub(r"[^<]*(<[^>]*>)[^<]*", r"\1", html).lower().replace(" one", ""), path
        assert "http://" not in html and "https://" not in html, path  # nothing from a CDN


# --- images, heatmaps, details ------------------------------------------------------------------------------


def test_image_and_heatmap_render_by_id_and_a_second_view_comes_from_the_cache(site: Site, reviewer: Any) -> None:
    import io

    from PIL import Image as PILImage

    image_id = site.ids["d0.dcm"]
    first = reviewer.get(f"/api/images/{image_id}/image.png")
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    picture = PILImage.open(io.BytesIO(first.content))
    assert picture.mode == "L" and max(picture.size) <= 1024 and min(picture.size) > 100
    heatmap = reviewer.get(f"/api/images/{image_id}/heatmap.png")
    assert heatmap.status_code == 200
    overlay = PILImage.open(io.BytesIO(heatmap.content))
    assert overlay.mode == "RGB" and overlay.size == picture.size
    cached = sorted(p.name for p in (site.settings.data_dir / "cache" / "render").iterdir())
    assert len(cached) == 2 and all(".tmp" not in name for name in cached)
    site.paths["d0.dcm"].unlink()  # the cache still has it
    assert reviewer.get(f"/api/images/{image_id}/image.png").content == first.content


def test_a_file_gone_or_changed_on_disk_gives_a_clear_404_never_another_picture(site: Site, reviewer: Any) -> None:
    gone, changed = site.ids["n0.png"], site.ids["p0.png"]
    site.paths["n0.png"].unlink()
    xrays.write_png(xrays.NORMAL_IMAGES[3], site.paths["p0.png"])  # other content, same path
    for image_id in (gone, changed):
        response = reviewer.get(f"/api/images/{image_id}/image.png")
        assert response.status_code == 404
        assert "no longer on disk" in response.json()["detail"]
        page = reviewer.get(f"/images/{image_id}")
        assert page.status_code == 200  # the facts are still shown; the picture says why it is missing
    assert reviewer.get(f"/api/images/{site.ids['bad.png']}/image.png").status_code == 422


def test_a_copy_elsewhere_is_shown_when_the_stored_path_is_gone(site: Site, reviewer: Any, tmp_path: Any) -> None:
    from pneumoscan.pipeline import classify_paths

    copy = tmp_path / "copy" / "n1-again.jpeg"
    xrays.write_jpeg(xrays.NORMAL_IMAGES[1], copy)
    bundle = site.app.state.renderer.bundle()
    classify_paths([str(copy)], bundle=bundle, sessions=site.db, settings=site.settings)
    site.paths["n1.jpeg"].unlink()
    assert reviewer.get(f"/api/images/{site.ids['n1.jpeg']}/image.png").status_code == 200


def test_the_image_page_shows_what_the_database_holds_and_no_patient_identity(site: Site, reviewer: Any) -> None:
    image_id = site.ids["d0.dcm"]
    page = reviewer.get(f"/images/{image_id}").text
    detail = reviewer.get(f"/api/images/{image_id}").json()
    for text_ in (page, str(detail)):
        assert dicoms.PATIENT_NAME not in text_ and "Doe" not in text_ and dicoms.PATIENT_BIRTH_DATE not in text_
        assert dicoms.PATIENT_ID not in text_.replace(detail["dicom"]["patient_ref"], "")
    assert detail["dicom"]["modality"] and detail["dicom"]["patient_ref"] and len(detail["dicom"]["patient_ref"]) == 64
    assert detail["dicom"]["sop_instance_uid"] in page and detail["sha256"] in page
    assert [p["path"] for p in detail["paths"]] == [str(site.paths["d0.dcm"].resolve())]
    prediction = detail["predictions"][0]
    assert prediction["model_version"] == TINY and f"{prediction['probability']:.3f}" in page


# --- dashboard, metrics, docs, health ------------------------------------------------------------------------


def test_dashboard_counts_the_model_against_the_latest_reviews(site: Site, reviewer: Any) -> None:
    rows = [r for r in reviewer.get("/api/results?sort=probability").json()["results"] if r["status"] == "done"]
    token = csrf_of(reviewer.get("/worklist").text)
    other = {"NORMAL": "PNEUMONIA", "PNEUMONIA": "NORMAL"}
    readings = [rows[0]["label"], other[rows[1]["label"]], rows[2]["label"]]
    for row, label in zip(rows, readings, strict=False):
        reviewer.post(f"/api/images/{row['id']}/reviews", json={"label": label}, headers={"X-CSRF-Token": token})
    # A correction: the latest review counts.
    reviewer.post(f"/api/images/{rows[2]['id']}/reviews", json={"label": other[rows[2]["label"]]},
                  headers={"X-CSRF-Token": token})
    page = reviewer.get("/dashboard").text
    assert "3 reviewed images; the model agrees on 1." in page
    cells = {(t, m): int(n) for t, m, n in re.findall(r'data-truth="(\w+)" data-model="(\w+)">(\d+)<', page)}
    expected: dict[tuple[str, str], int] = {}
    final = [rows[0]["label"], other[rows[1]["label"]], other[rows[2]["label"]]]
    for row, truth in zip(rows, final, strict=False):
        expected[(truth, row["label"])] = expected.get((truth, row["label"]), 0) + 1
    assert {k: v for k, v in cells.items() if v} == expected
    plot = reviewer.get("/dashboard/activity.png")
    assert plot.status_code == 200 and plot.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Fit the site operating point" not in page  # reviewers never see it, and 3 reviews are too few


def test_metrics_are_prometheus_text_with_every_promised_name(site: Site, reviewer: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    token = csrf_of(reviewer.get("/worklist").text)
    image_id = site.ids["p0.png"]
    label = _model_label(site, reviewer, image_id)
    reviewer.post(f"/api/images/{image_id}/reviews", json={"label": label}, headers={"X-CSRF-Token": token})
    response = reviewer.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {"pneumoscan_images", "pneumoscan_predictions", "pneumoscan_queued_files",
            "pneumoscan_oldest_queued_file_age_seconds", "pneumoscan_drop_to_result_seconds", "pneumoscan_reviews",
            "pneumoscan_reviewed_images", "pneumoscan_reviewer_agreement_ratio"} <= set(families)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("pneumoscan_images", (("status", "done"),))] == 5
    assert samples[("pneumoscan_images", (("status", "rejected"),))] == 1
    predicted = sum(v for (name, _), v in samples.items() if name == "pneumoscan_predictions")
    assert predicted == 5
    assert samples[("pneumoscan_reviews_total", (("label", label),))] == 1
    assert samples[("pneumoscan_reviewer_agreement_ratio", (("model_version", TINY),))] == 1.0
    assert samples[("pneumoscan_drop_to_result_seconds_count", ())] == 5  # each file's first result
    assert samples[("pneumoscan_drop_to_result_seconds_bucket", (("le", "+Inf"),))] == 5


def test_health_needs_no_login_and_docs_describe_the_api(site: Site, reviewer: Any) -> None:
    assert site.client().get("/health").json() == {"status": "ok", "database": "ok", "model_version": TINY}
    docs = reviewer.get("/docs").text
    for route in ("GET /api/results", "GET /api/images/{image_id}/heatmap.png", "POST /api/images/{image_id}/reviews"):
        assert route in docs
    schema = reviewer.get("/openapi.json").json()
    assert "/api/results" in schema["paths"] and "/worklist" not in schema["paths"]
    assert {p["name"] for p in schema["paths"]["/api/results"]["get"]["parameters"]} >= {
        "status", "label", "min_probability", "max_probability", "since", "model_version", "path", "review",
        "sort", "limit", "offset"}


def test_health_says_when_the_database_is_gone(settings: Any, tiny_bundle: Any, tmp_path: Any) -> None:
    from pneumoscan.db import open_database

    db = open_database(f"sqlite:///{tmp_path / 'gone' / 'db.sqlite'}")
    site = build_site(settings, db, tiny_bundle, tmp_path / "in")
    client = site.signed_in("rex")
    db.dispose()
    for path in (tmp_path / "gone").iterdir():
        path.unlink()
    (tmp_path / "gone").rmdir()
    (tmp_path / "gone").write_text("not a folder any more")  # SQLite cannot open the database again
    health = site.client().get("/health")
    assert health.status_code == 503 and health.json()["database"] == "unreachable"
    page = client.get("/worklist")
    assert page.status_code == 503 and "database is not answering" in page.text
    assert client.get("/api/results").json() == {"detail": "the database is not answering; try again shortly"}


def test_studies_page_and_the_study_filter(site: Site, reviewer: Any) -> None:
    image_id = site.ids["d0.dcm"]
    study = reviewer.get(f"/api/images/{image_id}").json()["dicom"]["study_uid"]
    assert _ids(reviewer, f"study={study}") == [image_id]
    listed = reviewer.get("/api/studies").json()
    assert [(s["study_uid"], s["status"]) for s in listed] == [(study, "open")]  # instances may still come
    page = reviewer.get("/studies").text
    assert f'href="/worklist?study={study}"' in page
    token = csrf_of(reviewer.get(f"/images/{image_id}").text)
    reviewer.post(f"/api/images/{image_id}/reviews", json={"label": "NORMAL"}, headers={"X-CSRF-Token": token})
    worklist = reviewer.get(f"/worklist?study={study}").text  # a study's instances, reviewed ones too
    assert re.findall(r'<tr class="case" data-id="(\d+)"', worklist) == [str(image_id)]
    assert reviewer.get("/api/results?study=1.2;DROP").status_code == 422


def test_the_dashboard_calibrate_button_refuses_with_too_few_reviews_and_fits_with_enough(
        site: Site, admin: Any) -> None:
    from pneumoscan.db.reviews import active_point
    from pneumoscan.db.schema import Image, Prediction
    from pneumoscan.services import calibration

    token = csrf_of(admin.get("/dashboard").text)
    refused = admin.post("/dashboard/calibrate", data={"csrf_token": token})
    assert refused.status_code == 200 and "too few reviewed cases to calibrate" in refused.text
    assert admin.post("/dashboard/calibrate", data={"csrf_token": "forged"}).status_code == 403
    # Enough reviews of each class (as many as the button asks for), on predictions of the current model.
    version = site.app.state.model_version
    with site.db.begin() as session:
        for i in range(2 * calibration.MIN_REVIEWS):
            sick = i % 2 == 1
            image = Image(sha256=f"{i + 1000:064x}", path=f"/cal/{i}.png", status="done")
            session.add(image)
            session.flush()
            session.add(Prediction(image_id=image.id, model_version=version, probability=0.3 + 0.4 * sick + i / 1000,
                                   label="NORMAL", threshold=0.5))
            session.add(Review(image_id=image.id, reviewer="ada", label="PNEUMONIA" if sick else "NORMAL"))
    page = admin.get("/dashboard").text
    assert 'id="calibrate"' in page
    fitted = admin.post("/dashboard/calibrate", data={"csrf_token": token})
    assert "operating point 1: threshold" in fitted.text and "labels changed" in fitted.text
    with site.db() as session:
        point = active_point(session, version)
    assert point is not None and 0.3 < point.threshold <= 0.75
    expected = json.loads(point.figures)["expected_sensitivity"]
    assert expected >= calibration.TARGET_SENSITIVITY
    assert f"sensitivity {expected:.3f} to expect on new cases" in fitted.text
