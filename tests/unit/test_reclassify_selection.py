"""Which images reclassification picks: outdated and failed ones by default, in id order, page by page."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from pneumoscan.db.schema import Image
from pneumoscan.db.selection import (
    ReclassifySelection,
    count_for_reclassification,
    image_locations,
    iter_reclassification,
)
from pneumoscan.db.writes import save_results
from pneumoscan.domain import Result

CURRENT, OLD = "v2", "v1"


def _done(name: str, version: str) -> Result:
    return Result(f"/scans/{name}", "done", sha256=hashlib.sha256(name.encode()).hexdigest(), kind="png",
                  probability=0.5, label="PNEUMONIA", threshold=0.5, model_version=version)


@pytest.fixture
def stored(sessions: Any) -> Any:
    """current: predicted by v2; outdated: by v1 only; both: v1 and v2; unread and undecoded: failed;
    corrupt: rejected; old-failed: failed, last updated long ago."""
    sha = hashlib.sha256(b"undecoded").hexdigest()
    with sessions.begin() as session:
        save_results(session, [
            _done("current", CURRENT), _done("outdated", OLD), _done("both", OLD), _done("both", CURRENT),
            Result("/scans/unread", "failed", reason="permission denied reading the file"),
            Result("/scans/undecoded", "failed", sha256=sha, kind="png", reason="decoder busy"),
            Result("/scans/corrupt", "rejected", sha256=hashlib.sha256(b"c").hexdigest(), reason="not an image"),
            Result("/scans/old-failed", "failed", reason="permission denied reading the file"),
        ])
        session.execute(update(Image).where(Image.path == "/scans/old-failed")
                        .values(updated_at=datetime(2020, 1, 1, tzinfo=UTC)))
    return sessions


def _picked(sessions: Any, selection: ReclassifySelection, batch_size: int = 100) -> list[str]:
    with sessions() as session:
        pages = list(iter_reclassification(session, selection, CURRENT, batch_size))
        assert count_for_reclassification(session, selection, CURRENT) == sum(map(len, pages))
    return [path.removeprefix("/scans/") for page in pages for _, path in page]


@pytest.mark.parametrize(("selection", "expected"), [
    (ReclassifySelection(), ["outdated", "unread", "undecoded", "old-failed"]),
    (ReclassifySelection(status="failed"), ["unread", "undecoded", "old-failed"]),
    (ReclassifySelection(status="rejected"), ["corrupt"]),
    (ReclassifySelection(status="done"), ["outdated"]),
    (ReclassifySelection(everything=True),
     ["current", "outdated", "both", "unread", "undecoded", "corrupt", "old-failed"]),
    (ReclassifySelection(everything=True, status="done"), ["current", "outdated", "both"]),
    (ReclassifySelection(since=datetime.now(UTC) - timedelta(days=1)), ["outdated", "unread", "undecoded"]),
], ids=["default", "failed", "rejected", "done", "all", "all-done", "since"])
def test_selection(stored: Any, selection: ReclassifySelection, expected: list[str]) -> None:
    assert sorted(_picked(stored, selection)) == sorted(expected)


def test_pages_follow_the_id_and_pick_up_where_they_left_off(stored: Any) -> None:
    with stored() as session:
        pages = list(iter_reclassification(session, ReclassifySelection(everything=True), CURRENT, 3))
        assert [len(p) for p in pages] == [3, 3, 1]
        ids = [image_id for page in pages for image_id, _ in page]
        assert ids == sorted(ids)
        assert image_locations(session, [ids[2], ids[0], 10_000]) == [pages[0][2], pages[0][0]]
