"""Migration 0011 on a real SQLite file: the `ignored` status joins the CHECK, old rows and results are kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from pneumoscan.db import make_engine, upgrade

_IMAGE = ("INSERT INTO images (sha256, path, status, first_seen_at, updated_at) "
          "VALUES (:sha, :path, :status, '2026-01-01', '2026-01-01')")


def test_ignored_is_a_status_after_0011_and_a_studys_results_keep_their_history(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine, "0010")
    with engine.begin() as connection:
        connection.execute(text(_IMAGE), {"sha": "0" * 64, "path": "/a.dcm", "status": "rejected"})
        connection.execute(text("INSERT INTO studies (study_uid, status, last_instance_at, revision, send_state) "
                                "VALUES ('1.2.3', 'complete', '2026-01-01', 1, 'sent')"))
        connection.execute(text("INSERT INTO study_results (study_id, revision, completed_at, instance_count, "
                                "assessed_count, label) VALUES (1, 1, '2026-01-01', 1, 1, 'NORMAL')"))
    with engine.begin() as connection, pytest.raises(IntegrityError):
        connection.execute(text(_IMAGE), {"sha": "1" * 64, "path": "/b.dcm", "status": "ignored"})

    upgrade(engine, "0011")
    with engine.begin() as connection:
        connection.execute(text(_IMAGE), {"sha": "1" * 64, "path": "/b.dcm", "status": "ignored"})
        assert connection.execute(text("SELECT status FROM images ORDER BY id")).scalars().all() == \
            ["rejected", "ignored"]
        row = connection.execute(text("SELECT revision, label, report_uid, sent_at FROM study_results")).one()
        assert tuple(row) == (1, "NORMAL", None, None)
        study = connection.execute(text("SELECT reassessed_at, assessed_key, send_state FROM studies")).one()
        assert tuple(study) == (None, None, "sent")
    with engine.begin() as connection, pytest.raises(IntegrityError):
        connection.execute(text(_IMAGE), {"sha": "2" * 64, "path": "/c.dcm", "status": "skipped"})
    engine.dispose()
