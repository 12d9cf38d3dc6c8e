"""Blinded reading gives the model's call away through no filter or order: with PNEUMOSCAN_BLINDED_READING,
/api/results refuses `label`, `min_probability`, `max_probability` and `sort=probability` (400, saying why); the
worklist page ignores them visibly and lists newest first; the studies page has no urgent bucket and lists the most
recent first; "next case" is the newest unreviewed case, not the most suspicious. Without blinding, all as before.
Against the real app on a real SQLite database the real pipeline filled."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from web_support import Site, csrf_of

from pneumoscan.db.schema import Prediction, Study

CALL_QUERIES = ({"label": "PNEUMONIA"}, {"label": "NORMAL"}, {"min_probability": "0.5"},
                {"max_probability": "0.5"}, {"sort": "probability"})


def _worklist_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr class="case" data-id="(\d+)"', html)]


def _by_probability(site: Site) -> list[int]:
    with site.db() as session:
        rows = session.execute(select(Prediction.image_id).order_by(Prediction.probability.desc(),
                                                                    Prediction.image_id.desc()))
        return [image_id for (image_id,) in rows]


@pytest.mark.parametrize("query", CALL_QUERIES, ids=lambda q: "&".join(f"{k}={v}" for k, v in q.items()))
def test_the_api_refuses_a_filter_or_order_by_the_call(site: Site, query: dict[str, str]) -> None:
    bea = site.reader("bea")
    answer = bea.get("/api/results", params={"review": "all", **query})
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert "blinded reading" in detail and next(iter(query)) in detail
    assert bea.get("/api/results", params={"review": "all", "sort": "newest", "status": "done"}).status_code == 200
    seeing = site.reader("eve", blinded=False)
    assert seeing.get("/api/results", params={"review": "all", **query}).status_code == 200


def test_the_worklist_ignores_them_visibly_and_lists_newest_first(site: Site) -> None:
    bea = site.reader("bea")
    plain = bea.get("/worklist")
    assert plain.status_code == 200
    everything = _worklist_ids(plain.text)
    newest = [row["id"] for row in bea.get("/api/results", params={"review": "unreviewed"}).json()["results"]]
    assert everything == newest and len(everything) >= 3
    assert everything != [i for i in _by_probability(site) if i in everything]  # the two orders differ here
    assert 'id="blinded-filters"' in plain.text and "Ignored" not in plain.text
    for hidden in ('name="label"', 'name="min_probability"', 'name="max_probability"', 'value="probability"'):
        assert hidden not in plain.text, hidden
    for query in CALL_QUERIES:
        page = bea.get("/worklist", params=query)
        assert page.status_code == 200
        assert _worklist_ids(page.text) == everything, query  # not narrowed, not reordered
        notice = re.search(r'id="blinded-filters">(.*?)</p>', page.text, re.S)
        assert notice and "Ignored" in notice.group(1) and next(iter(query)) in notice.group(1), query

    seeing = site.reader("eve", blinded=False)
    with site.db() as session:
        probabilities = sorted(session.scalars(select(Prediction.probability)))
    middle = (probabilities[len(probabilities) // 2 - 1] + probabilities[len(probabilities) // 2]) / 2
    above = _worklist_ids(seeing.get("/worklist", params={"min_probability": str(middle)}).text)
    assert above and set(above) < set(everything)  # without blinding the filter works as before
    assert _worklist_ids(seeing.get("/worklist").text) == [i for i in _by_probability(site) if i in everything]


def test_the_studies_page_has_no_urgent_bucket_and_lists_the_most_recent_first(site: Site) -> None:
    now = datetime.now(UTC)
    with site.db.begin() as session:
        session.add(Study(study_uid="1.2.826.0.1.29.1", status="complete", last_instance_at=now - timedelta(days=2),
                          revision=1, instance_count=1, assessed_count=1, label="PNEUMONIA", probability=0.99,
                          send_attempts=0))
        session.add(Study(study_uid="1.2.826.0.1.29.2", status="complete", last_instance_at=now - timedelta(hours=1),
                          revision=1, instance_count=1, assessed_count=1, label="NORMAL", probability=0.1,
                          send_attempts=0))

    def order(html: str) -> list[str]:
        return [uid for uid in re.findall(r'data-study="([0-9.]+)"', html) if uid.startswith("1.2.826.0.1.29.")]

    blinded = site.reader("bea").get("/studies").text
    assert order(blinded) == ["1.2.826.0.1.29.2", "1.2.826.0.1.29.1"]
    assert "urgent" not in blinded.split('id="studies"')[1]  # no badge, no row class
    assert "Blinded reading" in blinded
    seeing = site.reader("eve", blinded=False).get("/studies").text
    assert order(seeing) == ["1.2.826.0.1.29.1", "1.2.826.0.1.29.2"]  # the urgent one first, as before
    assert 'class="study urgent"' in seeing


def test_next_case_is_the_newest_unreviewed_not_the_most_suspicious(site: Site) -> None:
    bea = site.reader("bea")
    newest = [row["id"] for row in bea.get("/api/results", params={"review": "unreviewed"}).json()["results"]]
    with site.db.begin() as session:  # the newest case the least suspicious, so that the two orders differ
        session.execute(update(Prediction).where(Prediction.image_id == newest[0]).values(probability=0.0001))
    suspicious = [i for i in _by_probability(site) if i in newest]
    current = next(i for i in newest if i not in (newest[0], suspicious[0]))

    def next_link(client: Any) -> int:
        found = re.search(r'id="viewer"[^>]*data-next="/images/(\d+)"', client.get(f"/images/{current}").text)
        assert found
        return int(found.group(1))

    assert next_link(bea) == newest[0]
    assert next_link(site.reader("eve", blinded=False)) == suspicious[0]
    # Saving a reading with "then next" goes to the same case.
    page = bea.get(f"/images/{current}").text
    saved = bea.post(f"/images/{current}/reviews", data={"csrf_token": csrf_of(page), "label": "NORMAL",
                                                          "then": "next"}, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == f"/images/{newest[0]}"
