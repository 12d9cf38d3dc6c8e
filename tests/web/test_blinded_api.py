"""Blinded reading in the JSON API: with PNEUMOSCAN_BLINDED_READING, /api/images/{id}, /api/results,
/api/images/{id}/reviews and /api/studies withhold the model's call (and earlier readings) from a reader who has not
saved their own reading of the image, as the viewer page does; once they have, it shows as before. Against the real
app on a real SQLite database the real pipeline filled."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from web_support import Site, csrf_of

from pneumoscan.db.schema import Prediction

MODEL_FIELDS = ("label", "probability", "threshold")


def _predicted(site: Site) -> dict[int, tuple[str, float, float]]:
    with site.db() as session:
        rows = session.execute(select(Prediction.image_id, Prediction.label, Prediction.probability,
                                      Prediction.threshold))
        return {image_id: (label, probability, threshold) for image_id, label, probability, threshold in rows}


def _read(client: Any, image_id: int, label: str) -> None:
    page = client.get(f"/images/{image_id}").text
    saved = client.post(f"/images/{image_id}/reviews", data={"csrf_token": csrf_of(page), "label": label},
                        follow_redirects=False)
    assert saved.status_code == 303, saved.text


def _results(client: Any) -> dict[int, dict[str, Any]]:
    answer = client.get("/api/results", params={"review": "all", "limit": 500})
    assert answer.status_code == 200, answer.text
    return {row["id"]: row for row in answer.json()["results"]}


def test_a_blinded_reader_gets_no_model_output_from_the_api_until_they_have_read_the_image(site: Site) -> None:
    predicted = _predicted(site)
    image_id = site.ids["p0.png"]
    other_id = site.ids["n0.png"]
    assert image_id in predicted and other_id in predicted
    bea = site.reader("bea")

    detail = bea.get(f"/api/images/{image_id}")
    assert detail.status_code == 200
    body = detail.json()
    assert body["predictions"] is None and body["reviews"] is None
    assert body["id"] == image_id and body["status"] == "done"  # the rest as before
    assert "PNEUMONIA" not in detail.text and "NORMAL" not in detail.text
    assert bea.get(f"/api/images/{image_id}/reviews").status_code == 403
    rows = _results(bea)
    assert set(predicted) <= set(rows)
    for row in rows.values():
        assert all(row[field] is None for field in MODEL_FIELDS), row
    for study in bea.get("/api/studies").json():
        assert study["label"] is None and study["probability"] is None

    label, probability, threshold = predicted[image_id]
    mine = "NORMAL" if label == "PNEUMONIA" else "PNEUMONIA"
    _read(bea, image_id, mine)

    after = bea.get(f"/api/images/{image_id}").json()
    assert [(p["label"], p["probability"], p["threshold"]) for p in after["predictions"]] == \
        [(label, probability, threshold)]
    assert [(r["reviewer"], r["label"]) for r in after["reviews"]] == [("bea", mine)]
    assert [r["label"] for r in bea.get(f"/api/images/{image_id}/reviews").json()] == [mine]
    rows = _results(bea)
    row = rows[image_id]
    assert (row["label"], row["probability"], row["threshold"]) == (label, probability, threshold)
    assert (row["review_label"], row["reviewed_by"]) == (mine, "bea")
    assert all(rows[other_id][field] is None for field in MODEL_FIELDS)  # not read yet: still withheld
    assert bea.get(f"/api/images/{other_id}").json()["predictions"] is None

    # Another blinded reader has not read it: neither the model's call nor bea's reading.
    cid = site.reader("cid")
    assert cid.get(f"/api/images/{image_id}").json()["reviews"] is None
    row = _results(cid)[image_id]
    assert all(row[field] is None for field in (*MODEL_FIELDS, "review_label", "reviewed_by")), row


def test_an_admin_is_blinded_as_on_the_page(site: Site) -> None:
    image_id = site.ids["p1.jpeg"]
    ada = site.reader("ada", "admin")
    assert 'id="blinded"' in ada.get(f"/images/{image_id}").text
    assert ada.get(f"/api/images/{image_id}").json()["predictions"] is None
    assert _results(ada)[image_id]["probability"] is None
    _read(ada, image_id, "NORMAL")
    assert ada.get(f"/api/images/{image_id}").json()["predictions"][0]["label"] == _predicted(site)[image_id][0]


def test_blinding_off_changes_nothing(site: Site) -> None:
    predicted = _predicted(site)
    other = site.reader("dan", blinded=False)
    _read(other, site.ids["n0.png"], "NORMAL")
    seeing = site.reader("eve", blinded=False)
    for image_id, (label, probability, threshold) in predicted.items():
        body = seeing.get(f"/api/images/{image_id}").json()
        assert [(p["label"], p["probability"], p["threshold"]) for p in body["predictions"]] == \
            [(label, probability, threshold)]
        assert isinstance(body["reviews"], list)
        assert seeing.get(f"/api/images/{image_id}/reviews").status_code == 200
    rows = _results(seeing)
    for image_id, (label, probability, threshold) in predicted.items():
        assert (rows[image_id]["label"], rows[image_id]["probability"], rows[image_id]["threshold"]) == \
            (label, probability, threshold)
    assert (rows[site.ids["n0.png"]]["review_label"], rows[site.ids["n0.png"]]["reviewed_by"]) == ("NORMAL", "dan")


def test_the_openapi_document_says_what_blinding_withholds(site: Site, reviewer: Any) -> None:
    schemas = reviewer.get("/openapi.json").json()["components"]["schemas"]
    for model, field in (("ImageOut", "predictions"), ("ImageOut", "reviews"), ("ResultOut", "probability"),
                         ("ResultOut", "label"), ("StudyOut", "label")):
        assert "blinded reading" in schemas[model]["properties"][field]["description"], (model, field)
