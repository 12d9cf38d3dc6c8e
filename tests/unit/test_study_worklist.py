"""The worklist by study (db.images.study_worklist) on a real SQLite database: urgent studies first, then the most
recent; with no urgent threshold (blinded reading) the most recent first, none marked urgent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pneumoscan.db.images import study_worklist
from pneumoscan.db.schema import Study


def test_urgent_first_or_none_urgent(sessions: Any) -> None:
    now = datetime.now(UTC)
    with sessions.begin() as session:
        for uid, hours_ago, probability in (("1.9.1", 30, 0.95), ("1.9.2", 1, 0.2), ("1.9.3", 5, None)):
            session.add(Study(study_uid=uid, status="complete", last_instance_at=now - timedelta(hours=hours_ago),
                              revision=1, instance_count=1, assessed_count=1, probability=probability,
                              send_attempts=0))
    with sessions() as session:
        bucketed = study_worklist(session, 0.9, 10)
        flat = study_worklist(session, None, 10)
        assert [s.study_uid for s in study_worklist(session, None, 2)] == ["1.9.2", "1.9.3"]
    assert [(s.study_uid, s.urgent) for s in bucketed] == [("1.9.1", True), ("1.9.2", False), ("1.9.3", False)]
    assert [(s.study_uid, s.urgent) for s in flat] == [("1.9.2", False), ("1.9.3", False), ("1.9.1", False)]
