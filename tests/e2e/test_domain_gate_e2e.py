"""The domain gate end to end, with the shipped model: pediatric films are in; an adult chest radiograph and a
film whose header says the patient is 45 are out, flagged (scored, marked, said why) or, under
PNEUMOSCAN_OUT_OF_DOMAIN=skip, not assessed. The verdict reaches the CLI's JSON and CSV, the API and the SR,
and the age is kept only as a band."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import invoke, pneumoscan_env
from support import dicoms, xrays

from pneumoscan.config import SHIPPED_MODEL_DIR, Settings
from pneumoscan.db import open_database
from pneumoscan.models.bundle import load_bundle
from pneumoscan.pipeline import classify_paths

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped() -> Any:
    return load_bundle(SHIPPED_MODEL_DIR)


def _inbox(folder: Path) -> dict[str, Path]:
    from pydicom.data import get_testdata_file

    adult = get_testdata_file("RG1_UNCI.dcm")  # an adult PA chest radiograph from the DICOM test data
    assert adult is not None
    folder.mkdir()
    return {
        "normal.jpeg": xrays.write_jpeg(xrays.NORMAL_IMAGES[0], folder / "normal.jpeg"),
        "pneumonia.jpeg": xrays.write_jpeg(xrays.PNEUMONIA_IMAGES[0], folder / "pneumonia.jpeg"),
        "adult.dcm": Path(shutil.copy(adult, folder / "adult.dcm")),
        # Pediatric films whose headers give the age: 45 (out by age alone) and 3 (in).
        "aged45.dcm": dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[1], folder / "aged45.dcm", PatientAge="045Y",
                                         PatientBirthDate="", **dicoms.IDENTITY_WINDOW_12),
        "aged3.dcm": dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[1], folder / "aged3.dcm", PatientAge="003Y",
                                        PatientBirthDate="", StudyInstanceUID="1.2.826.0.1.3680043.8.498.3",
                                        **dicoms.IDENTITY_WINDOW_12),
    }


def _run(tmp_path: Path, shipped: Any, out_of_domain: str) -> tuple[Settings, Any, dict[str, Any]]:
    settings = Settings(data_dir=tmp_path / "data", patient_salt="s", engine="tensorflow", out_of_domain=out_of_domain)
    sessions = open_database(settings.sqlalchemy_url)
    files = _inbox(tmp_path / "inbox")
    results = classify_paths(list(files.values()), bundle=shipped, sessions=sessions, settings=settings)
    return settings, sessions, {name: r for name, r in zip(files, results, strict=True)}


def test_flagged_images_are_scored_marked_and_say_why_everywhere(tmp_path: Path, shipped: Any) -> None:
    settings, sessions, by_name = _run(tmp_path, shipped, "flag")
    threshold = shipped.domain_gate.threshold
    assert {n: (r.status, r.domain) for n, r in by_name.items()} == {
        "normal.jpeg": ("done", "in"), "pneumonia.jpeg": ("done", "in"), "adult.dcm": ("done", "out"),
        "aged45.dcm": ("done", "out"), "aged3.dcm": ("done", "in")}
    assert all(r.label is not None and r.domain_score is not None for r in by_name.values())
    assert by_name["adult.dcm"].domain_score > threshold > by_name["normal.jpeg"].domain_score
    # Its header says adult (birth and study dates), and its picture is unlike the validated ones: both are said.
    assert "age 18-64y is outside the validated 1-5y; the image is unlike the validated images (domain score" \
        in by_name["adult.dcm"].reason
    assert by_name["aged45.dcm"].domain_score < threshold  # the picture is pediatric: the header marks it
    assert "age 18-64y is outside the validated 1-5y" in by_name["aged45.dcm"].reason

    # Only the band is kept: no age, no birth date, no name anywhere in the database file.
    with sessions() as session:
        from sqlalchemy import text

        bands = dict(session.execute(text("SELECT path, age_band FROM images")).all())
    assert {Path(p).name: b for p, b in bands.items()} == {
        "normal.jpeg": None, "pneumonia.jpeg": None, "adult.dcm": "18-64y", "aged45.dcm": "18-64y", "aged3.dcm": "1-5y"}
    stored = (settings.data_dir / "pneumoscan.db").read_bytes()
    for secret in (b"045Y", b"003Y", dicoms.PATIENT_NAME.encode()):
        assert secret not in stored

    env = pneumoscan_env(settings.data_dir, SHIPPED_MODEL_DIR, PNEUMOSCAN_PATIENT_SALT="s")
    rows = json.loads(invoke(["results", "--format", "json"], env).stdout)
    assert {Path(r["path"]).name: r["domain"] for r in rows} == {n: r.domain for n, r in by_name.items()}
    assert all(isinstance(r["domain_score"], float) for r in rows)
    table = list(csv.DictReader(io.StringIO(invoke(["results", "--format", "csv"], env).stdout)))
    assert {Path(r["path"]).name: r["domain"] for r in table} == {n: r.domain for n, r in by_name.items()}
    assert float(next(r for r in table if r["path"].endswith("adult.dcm"))["domain_score"]) > threshold
    marked = json.loads(invoke(["results", "--domain", "out", "--format", "json"], env).stdout)
    assert sorted(Path(r["path"]).name for r in marked) == ["adult.dcm", "aged45.dcm"]
    fresh = pneumoscan_env(tmp_path / "fresh", SHIPPED_MODEL_DIR, PNEUMOSCAN_ENGINE="tensorflow")
    summary = invoke(["scan", str(tmp_path / "inbox" / "adult.dcm")], fresh)
    assert summary.returncode == 0, summary.stderr
    assert "domain" in summary.stdout and "out" in summary.stdout.split("domain", 1)[1], summary.stdout
    assert "domain out: outside the validated population" in summary.stderr

    _api_and_report(settings, sessions, by_name)


def _api_and_report(settings: Settings, sessions: Any, by_name: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    from pneumoscan.db.schema import Image, Study
    from pneumoscan.db.studies import instances
    from pneumoscan.db.users import add_user
    from pneumoscan.dicomnet.sr import build_report
    from pneumoscan.web.app import create_app

    password = "a-long-enough-password"
    with sessions.begin() as session:
        add_user(session, "rex", "reviewer", password)
    client = TestClient(create_app(settings, sessions), base_url="http://testserver")
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token is not None
    signed_in = client.post("/login", data={"csrf_token": token.group(1), "name": "rex", "password": password},
                            follow_redirects=False)
    assert signed_in.status_code == 303
    rows = client.get("/api/results").json()["results"]
    assert {Path(r["path"]).name: r["domain"] for r in rows} == {n: r.domain for n, r in by_name.items()}
    aged45 = next(r for r in rows if r["path"].endswith("aged45.dcm"))
    detail = client.get(f"/api/images/{aged45['id']}").json()
    assert (detail["domain"], detail["dicom"]["age_band"]) == ("out", "18-64y")
    assert detail["domain_score"] == pytest.approx(by_name["aged45.dcm"].domain_score)

    # The structured report says whether the study is within the validated population.
    from pneumoscan.db.studies import settle

    with sessions.begin() as session:
        version = by_name["adult.dcm"].model_version
        assert len(settle(session, version, 0.0, send=False)) == 3  # the three DICOM studies complete
    with sessions() as session:
        for name, expected in (("adult.dcm", "OUTSIDE"), ("aged3.dcm", "WITHIN")):
            uid = session.scalar(select(Image.study_uid).where(Image.path.endswith(name)))
            study = session.scalar(select(Study).where(Study.study_uid == uid))
            assert study is not None
            report = build_report(study, instances(session, uid, study.model_version or ""))
            codes = [item.ConceptCodeSequence[0].CodeValue for item in _items(report) if "ConceptCodeSequence" in item]
            assert expected in codes and {"OUTSIDE", "WITHIN"} - {expected} & set(codes) == set()


def _items(dataset: Any) -> list[Any]:
    found = []
    for item in dataset.get("ContentSequence", []):
        found += [item, *_items(item)]
    return found


def test_under_skip_an_image_outside_the_population_is_not_assessed(tmp_path: Path, shipped: Any) -> None:
    _, _, by_name = _run(tmp_path, shipped, "skip")
    for name in ("adult.dcm", "aged45.dcm"):
        result = by_name[name]
        assert (result.status, result.domain, result.label, result.probability) == ("rejected", "out", None, None)
        assert result.reason.startswith("not assessed: outside the validated population (")
        assert result.domain_score is not None
    assert {by_name[n].status for n in ("normal.jpeg", "pneumonia.jpeg", "aged3.dcm")} == {"done"}
