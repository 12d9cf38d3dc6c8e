"""Independent readings (no preselected answer, blinded reading, reader-alone agreement) and the audit trail,
against the real app on a real SQLite database, and the `pneumoscan review` and `audit` commands."""

from __future__ import annotations

import re
from typing import Any

import pytest
from helpers import invoke
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from support import dicoms, xrays
from web_support import PASSWORD, Site, csrf_of, login

from pneumoscan.db.schema import AuditEvent, Image, Prediction, Review


def _events(site: Site, action: str | None = None) -> list[AuditEvent]:
    with site.db() as session:
        query = select(AuditEvent).order_by(AuditEvent.id)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        return list(session.scalars(query))


def _blinded_client(site: Site, name: str) -> Any:
    from fastapi.testclient import TestClient

    from pneumoscan.web.app import create_app

    app = create_app(site.settings.model_copy(update={"blinded_reading": True}), site.db)
    site.user(name)
    client = TestClient(app, base_url="http://testserver")
    assert login(client, name, PASSWORD).status_code == 303
    return client


def _model_label(site: Site, image_id: int) -> str:
    """The model's call, read from the database (the blinded API withholds it)."""
    with site.db() as session:
        return str(session.scalars(select(Prediction.label).where(Prediction.image_id == image_id)).one())


def _env(site: Site) -> dict[str, str]:
    return {"PNEUMOSCAN_DATA_DIR": str(site.settings.data_dir), "PNEUMOSCAN_DATABASE_URL": site.settings.sqlalchemy_url,
            "PNEUMOSCAN_MODEL": str(site.settings.model_path), "PNEUMOSCAN_PATIENT_SALT": "test-salt"}


# --- independent readings -----------------------------------------------------------------------------------


def test_the_review_form_starts_with_nothing_selected_and_needs_a_choice(site: Site, reviewer: Any) -> None:
    image_id = site.ids["p0.png"]
    html = reviewer.get(f"/images/{image_id}").text
    radios = re.findall(r'<input type="radio" name="label"[^>]*>', html)
    assert len(radios) == 2
    assert all("checked" not in r and "required" in r for r in radios)
    token = csrf_of(html)
    assert reviewer.post(f"/images/{image_id}/reviews", data={"csrf_token": token}).status_code == 422
    with site.db() as session:
        assert session.scalars(select(Review)).first() is None


def test_a_blinded_reading_hides_the_call_until_the_reader_saves_theirs(site: Site) -> None:
    client = _blinded_client(site, "bea")
    image_id = site.ids["p0.png"]
    model_label = _model_label(site, image_id)
    page = client.get(f"/images/{image_id}").text
    assert 'id="blinded"' in page
    for hidden in ('id="model-label"', 'id="probability"', 'id="toggle-heatmap"', 'id="confirm"', "P(pneumonia)"):
        assert hidden not in page, hidden
    assert 'data-model-label=""' in page
    assert client.get(f"/api/images/{image_id}/heatmap.png").status_code == 403
    assert "P(pneumonia)" not in client.get("/worklist").text
    mine = "NORMAL" if model_label == "PNEUMONIA" else "PNEUMONIA"
    saved = client.post(f"/images/{image_id}/reviews", data={"csrf_token": csrf_of(page), "label": mine},
                        follow_redirects=False)
    assert saved.status_code == 303
    after = client.get(f"/images/{image_id}").text
    assert 'id="blinded"' not in after and 'id="model-label"' in after and 'id="toggle-heatmap"' in after
    # A second reading by the same reader has seen the call: not reader-alone.
    client.post(f"/images/{image_id}/reviews", data={"csrf_token": csrf_of(after), "label": model_label})
    with site.db() as session:
        assert [r.blinded for r in session.scalars(select(Review).order_by(Review.id))] == [True, False]
    # Another reader is still blinded on this case.
    other = _blinded_client(site, "cid")
    assert 'id="blinded"' in other.get(f"/images/{image_id}").text


def test_the_dashboard_reports_reader_alone_agreement_separately(site: Site) -> None:
    client = _blinded_client(site, "bea")
    for name in ("p0.png", "n0.png"):
        image_id = site.ids[name]
        model_label = _model_label(site, image_id)
        token = csrf_of(client.get(f"/images/{image_id}").text)
        client.post(f"/images/{image_id}/reviews", data={"csrf_token": token, "label": model_label})
    seeing = site.signed_in("dan")  # not blinded: counts in the overall figures only
    image_id = site.ids["p1.jpeg"]
    token = csrf_of(seeing.get(f"/images/{image_id}").text)
    seeing.post(f"/images/{image_id}/reviews", data={"csrf_token": token, "label": "NORMAL"})
    dashboard = seeing.get("/dashboard").text
    assert "3 reviewed images" in dashboard
    alone = re.search(r'<p id="alone-count">([^<]*)</p>', dashboard)
    assert alone and alone.group(1).startswith("2 readings saved before the reader saw the model's call; "
                                               "the model agrees on 2 (100.0%)")


def test_cli_review_needs_an_enabled_user(site: Site) -> None:
    from pneumoscan.db.users import set_disabled

    image_id = str(site.ids["n0.png"])
    unknown = invoke(["review", image_id, "--label", "NORMAL", "--reviewer", "somebody"], _env(site))
    assert unknown.returncode != 0 and "not an enabled user" in unknown.stderr
    site.user("rex")
    ok = invoke(["review", image_id, "--label", "NORMAL", "--reviewer", "rex"], _env(site))
    assert ok.returncode == 0, ok.stderr
    with site.db.begin() as session:
        set_disabled(session, "rex", True)
    disabled = invoke(["review", image_id, "--label", "NORMAL", "--reviewer", "rex"], _env(site))
    assert disabled.returncode != 0
    with site.db() as session:
        assert [r.reviewer for r in session.scalars(select(Review))] == ["rex"]
    assert [(e.actor, e.address, e.image_id) for e in _events(site, "review")] == [("rex", "cli", int(image_id))]


# --- the audit trail ----------------------------------------------------------------------------------------


def test_opening_a_case_is_recorded_once_per_page_view_not_per_picture(site: Site, reviewer: Any) -> None:
    image_id = site.ids["n0.png"]
    reviewer.get(f"/images/{image_id}")
    for _ in range(3):
        assert reviewer.get(f"/api/images/{image_id}/image.png").status_code == 200
    reviewer.get(f"/api/images/{image_id}")
    opened = _events(site, "open")
    assert [(e.actor, e.image_id, e.address) for e in opened] == [("rex", image_id, "testclient")]
    reviewer.get(f"/images/{image_id}")
    assert len(_events(site, "open")) == 2


def test_reviews_sign_ins_users_and_calibration_are_recorded(site: Site, admin: Any) -> None:
    image_id = site.ids["p0.png"]
    token = csrf_of(admin.get(f"/images/{image_id}").text)
    admin.post(f"/images/{image_id}/reviews", data={"csrf_token": token, "label": "PNEUMONIA"})
    admin.post(f"/api/images/{image_id}/reviews", json={"label": "NORMAL"}, headers={"X-CSRF-Token": token})
    assert login(site.client(), "ada", "wrong-password-here").status_code == 401
    assert login(site.client(), "nobody", "wrong-password-here").status_code == 401
    admin.post("/admin/users", data={"csrf_token": token, "name": "newbie", "role": "reviewer",
                                     "password": PASSWORD})
    admin.post("/admin/users/newbie/disable", data={"csrf_token": token})
    admin.post("/admin/users/newbie/enable", data={"csrf_token": token})
    admin.post("/dashboard/calibrate", data={"csrf_token": token})
    admin.post("/logout", data={"csrf_token": token})
    seen = [(e.action, e.actor, e.image_id) for e in _events(site) if e.action != "open"]
    assert seen == [("sign-in", "ada", None), ("review", "ada", image_id), ("review", "ada", image_id),
                    ("sign-in.failed", "ada", None), ("sign-in.failed", "nobody", None), ("user.add", "ada", None),
                    ("user.disable", "ada", None), ("user.enable", "ada", None), ("calibrate", "ada", None),
                    ("sign-out", "ada", None)]
    assert all(e.address == "testclient" and e.at is not None for e in _events(site))


def test_the_audit_page_is_for_admins_with_filters(site: Site, admin: Any) -> None:
    reviewer = site.signed_in("rex")
    one, two = site.ids["n0.png"], site.ids["p0.png"]
    reviewer.get(f"/images/{one}")
    reviewer.get(f"/images/{two}")
    assert reviewer.get("/admin/audit").status_code == 403
    page = admin.get("/admin/audit").text
    assert page.count('data-action="open"') == 2 and 'data-action="sign-in"' in page
    filtered = admin.get("/admin/audit", params={"image": one}).text
    assert filtered.count('data-action="open"') == 1 and f'href="/images/{one}"' in filtered
    assert 'data-action="sign-in"' not in admin.get("/admin/audit", params={"action": "open"}).text
    assert 'data-action="open"' not in admin.get("/admin/audit", params={"user": "ada"}).text
    assert "No events" in admin.get("/admin/audit", params={"since": "2999-01-01"}).text
    for bad in ({"image": "2" * 30}, {"action": "drop table"}, {"since": "yesterday"}, {"limit": "0"}):
        assert admin.get("/admin/audit", params=bad).status_code == 422, bad


def test_the_trail_is_append_only_and_pruned_by_the_retention_setting(site: Site, reviewer: Any) -> None:
    from datetime import timedelta

    from pneumoscan.db.schema import utcnow
    from pneumoscan.services import audit as audit_trail

    reviewer.get(f"/images/{site.ids['n0.png']}")
    with pytest.raises(DBAPIError, match="append-only"), site.db.begin() as session:
        session.execute(text("UPDATE audit_events SET actor = 'someone-else'"))
    with site.db.begin() as session:
        session.execute(text("INSERT INTO audit_events (at, actor, action) VALUES (:at, 'old', 'sign-in')"),
                        {"at": utcnow() - timedelta(days=40)})
    assert audit_trail.prune(site.db, site.settings.model_copy(update={"audit_retention_days": 0})) == 0
    assert audit_trail.prune(site.db, site.settings.model_copy(update={"audit_retention_days": 30})) == 1
    assert "old" not in {e.actor for e in _events(site)} and _events(site, "open")


def test_the_audit_command_prints_and_filters_the_trail(site: Site, reviewer: Any) -> None:
    image_id = site.ids["n0.png"]
    reviewer.get(f"/images/{image_id}")
    everything = invoke(["audit"], _env(site))
    assert everything.returncode == 0, everything.stderr
    assert "\trex\topen\t" in everything.stdout and "\trex\tsign-in\t" in everything.stdout
    by_image = invoke(["audit", "--image", str(image_id)], _env(site)).stdout.splitlines()
    assert len(by_image) == 1 and f"\topen\t{image_id}\t" in by_image[0]
    assert invoke(["audit", "--user", "nobody"], _env(site)).stdout == ""
    assert invoke(["audit", "--since", "2999-01-01"], _env(site)).stdout == ""
    assert invoke(["audit", "--image", "x"], _env(site)).returncode == 2
    pruned = invoke(["audit", "--prune"], _env(site))
    assert pruned.returncode == 0 and "pruned 0 events" in pruned.stdout


# --- study context and the urgent bucket ---------------------------------------------------------------------


def test_the_worklist_by_study_shows_study_context_urgent_first(site: Site, reviewer: Any) -> None:
    from pneumoscan.db.schema import Image, Study, utcnow

    image_id = site.ids["d0.dcm"]
    with site.db.begin() as session:
        image = session.get(Image, image_id)
        assert image is not None and image.study_uid and image.patient_ref
        uid, patient = image.study_uid, image.patient_ref
        study = session.scalars(select(Study).where(Study.study_uid == uid)).one()
        study.probability, study.label, study.assessed_count, study.instance_count = 0.97, "PNEUMONIA", 1, 1
        study.last_instance_at = utcnow().replace(year=2000)  # older than the other: urgent must still come first
        session.add(Study(study_uid="1.2.3.4", status="complete", last_instance_at=utcnow(), instance_count=2,
                          assessed_count=1, probability=0.2, label="NORMAL"))
    html = reviewer.get("/studies").text
    rows = re.findall(r'<tr class="study( urgent)?" data-study="([0-9.]+)">', html)
    assert rows == [(" urgent", uid), ("", "1.2.3.4")]
    first = html[html.index(f'data-study="{uid}"'):html.index('data-study="1.2.3.4"')]
    assert "urgent</span>" in first and "0.970" in first and "1 / 1" in first and "DX" in first
    assert patient[:8] in first and patient not in html  # a short reference only
    dashboard = reviewer.get("/dashboard").text
    assert re.search(r"<strong>1</strong> studies", dashboard)
    metrics = reviewer.get("/metrics").text
    assert "pneumoscan_urgent_studies 1.0" in metrics and "pneumoscan_urgent_unreviewed_images" in metrics
    calm = site.settings.model_copy(update={"urgent_probability": 0.99})
    from fastapi.testclient import TestClient

    from pneumoscan.web.app import create_app

    other = TestClient(create_app(calm, site.db))
    assert login(other, "rex", PASSWORD).status_code == 303
    assert "urgent</span>" not in other.get("/studies").text


def test_the_accession_number_is_stored_only_when_asked_else_a_salted_short_reference(site: Site, reviewer: Any,
                                                                                     tmp_path: Any) -> None:
    from pneumoscan.pipeline import classify_paths

    def stored(name: str, **changes: Any) -> str | None:
        path = dicoms.write_dicom(xrays.NORMAL_IMAGES[3], tmp_path / name, AccessionNumber="ACC-55501",
                                  StudyInstanceUID=f"1.2.3.{len(name)}")
        classify_paths([str(path)], bundle=site.app.state.renderer.bundle(), sessions=site.db,
                       settings=site.settings.model_copy(update=changes))
        with site.db() as session:
            image_id = session.scalar(select(Image.id).where(Image.path == str(path.resolve())))
        return reviewer.get(f"/api/images/{image_id}").json()["dicom"]["accession"]

    reference = stored("default.dcm")
    assert reference is not None and reference.startswith("ref-") and len(reference) == 16
    assert "ACC-55501" not in reviewer.get("/studies").text and reference in reviewer.get("/studies").text
    assert stored("kept.dcm", store_accession=True) == "ACC-55501"
    with site.db() as session:
        assert "ACC-55501" not in str(session.execute(text(
            "SELECT accession FROM images WHERE accession LIKE 'ref-%'")).all())
