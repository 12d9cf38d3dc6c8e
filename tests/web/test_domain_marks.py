"""The domain gate's mark on the review pages (issue 30): an image outside the validated population carries an
"outside validated population" badge, with its reason and score, in its worklist row and on its viewer page, and
its study carries one on the studies page; under blinded reading too (it is not the model's call). Against the real
app on a real SQLite database the real pipeline filled."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select, update
from web_support import Site

from pneumoscan.db.schema import Image

WHY = "outside the validated population: age band child"
BADGE = "outside validated population"


def _mark_out(site: Site, name: str) -> int:
    image_id = site.ids[name]
    with site.db.begin() as session:
        session.execute(update(Image).where(Image.id == image_id).values(domain="out", domain_score=0.123,
                                                                          reason=WHY))
    return image_id


def _row(html: str, marker: str) -> str:
    found = re.search(rf"<tr [^>]*{re.escape(marker)}.*?</tr>", html, re.S)
    assert found, marker
    return found.group(0)


def test_an_image_outside_the_validated_population_is_marked_everywhere(site: Site) -> None:
    out_id = _mark_out(site, "d0.dcm")
    inside_id = site.ids["n0.png"]
    for name, blinded in (("eve", False), ("bea", True)):
        client = site.reader(name, blinded=blinded)
        worklist = client.get("/worklist", params={"review": "all"}).text
        marked = _row(worklist, f'data-id="{out_id}"')
        assert BADGE in marked and WHY in marked and "0.123" in marked, name
        assert BADGE not in _row(worklist, f'data-id="{inside_id}"')
        viewer = client.get(f"/images/{out_id}").text
        assert 'id="out-of-domain"' in viewer and WHY in viewer, name
        assert 'id="out-of-domain"' not in client.get(f"/images/{inside_id}").text
        with site.db() as session:
            study_uid = session.scalar(select(Image.study_uid).where(Image.id == out_id))
        assert BADGE in _row(client.get("/studies").text, f'data-study="{study_uid}"'), name


def test_results_and_the_worklist_filter_by_domain(site: Site, reviewer: Any) -> None:
    out_id = _mark_out(site, "d0.dcm")
    with site.db.begin() as session:
        session.execute(update(Image).where(Image.id != out_id, Image.status == "done").values(domain="in"))
    out = reviewer.get("/api/results", params={"domain": "out", "review": "all"}).json()["results"]
    assert [r["id"] for r in out] == [out_id] and out[0]["domain"] == "out"
    inside = reviewer.get("/api/results", params={"domain": "in", "review": "all"}).json()["results"]
    assert inside and out_id not in {r["id"] for r in inside} and {r["domain"] for r in inside} == {"in"}
    assert reviewer.get("/api/results", params={"domain": "sideways"}).status_code == 422
    page = reviewer.get("/worklist", params={"domain": "out", "review": "all"}).text
    assert re.findall(r'<tr class="case" data-id="(\d+)"', page) == [str(out_id)]
    assert '<option value="out" selected>' in page
    bea = site.reader("bea", blinded=True)  # not the model's call: a blinded reader may filter by it
    assert [r["id"] for r in bea.get("/api/results", params={"domain": "out"}).json()["results"]] == [out_id]
