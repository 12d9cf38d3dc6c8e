"""Spool retention removes the receiver's copies of studies complete and delivered N days ago, and nothing else:
not the inbox, not a study still open, waiting or failed, not a file changed since it was received."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import helpers
import pytest

from pneumoscan.config import SHIPPED_MODEL_DIR
from pneumoscan.db import open_database
from pneumoscan.db.writes import save_results
from pneumoscan.domain import DicomMeta, Label, Outcome, Result
from pneumoscan.services.retention import purge_spool

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    data = tmp_path / "data"
    data.mkdir()
    sessions = open_database(f"sqlite:///{data / 'pneumoscan.db'}")
    yield sessions, tmp_path
    sessions.dispose()


def _file(path: Path, content: bytes) -> Result:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return Result(str(path), Outcome.DONE, sha256=hashlib.sha256(content).hexdigest(), kind="dicom",
                  byte_size=len(content), mtime=path.stat().st_mtime, probability=0.1, label=Label.NORMAL,
                  threshold=0.5, model_version="v1")


def _instance(folder: Path, study: str, n: int, name: str | None = None) -> tuple[Path, Result]:
    uid = f"{study}.{n}"
    path = folder / (name or f"{uid}.dcm")
    result = _file(path, f"instance {uid}".encode())
    return path, Result(**{**result.__dict__, "dicom": DicomMeta(study_uid=study, sop_instance_uid=uid)})


def _study(db: Path, study: str, **values: Any) -> None:
    with sqlite3.connect(db) as connection:
        sets = ", ".join(f"{key} = ?" for key in values)
        connection.execute(f"UPDATE studies SET {sets} WHERE study_uid = ?", [*values.values(), study])


def _ago(days: float) -> str:
    return (NOW - timedelta(days=days)).strftime("%Y-%m-%d %H:%M:%S.%f")


def test_delivered_studies_lose_their_spool_copies_and_nothing_else(site: tuple[Any, Path]) -> None:
    sessions, root = site
    spool, inbox = root / "data" / "received", root / "inbox"
    files: dict[str, Path] = {}
    results = []
    for study in ("1.1", "1.2", "1.3", "1.4", "1.5"):
        files[study], result = _instance(spool, study, 1)
        results.append(result)
    files["inbox copy"], result = _instance(inbox, "1.1", 2)  # the user's own file of a delivered study
    results.append(result)
    files["not ours"], result = _instance(spool, "1.1", 3, name="from-a-person.dcm")
    results.append(result)
    files["changed"], result = _instance(spool, "1.1", 4)
    results.append(result)
    with sessions.begin() as session:
        save_results(session, results)
    files["changed"].write_bytes(b"a different, longer instance")
    db = root / "data" / "pneumoscan.db"
    _study(db, "1.1", status="complete", send_state="sent", sent_at=_ago(10), completed_at=_ago(10))
    _study(db, "1.2", status="complete", send_state=None, completed_at=_ago(10))  # nothing to send
    _study(db, "1.3", status="complete", send_state="sent", sent_at=_ago(2), completed_at=_ago(2))  # too recent
    _study(db, "1.4", status="complete", send_state="failed", completed_at=_ago(10))  # never delivered
    _study(db, "1.5", status="open", completed_at=_ago(10))  # instances may still come

    done = purge_spool(sessions, [spool], days=7, now=NOW)

    assert (done.removed, done.kept) == (2, 2)  # "not ours" and "changed" are left, and counted
    assert not files["1.1"].exists() and not files["1.2"].exists()
    for kept in ("1.3", "1.4", "1.5", "inbox copy", "not ours", "changed"):
        assert files[kept].exists(), kept
    with sqlite3.connect(db) as connection:  # the record stays
        assert connection.execute("SELECT count(*) FROM images").fetchone() == (len(results),)


def test_a_link_in_the_spool_is_not_followed(site: tuple[Any, Path]) -> None:
    sessions, root = site
    spool = root / "data" / "received"
    target, result = _instance(root / "inbox", "2.1", 1)
    spool.mkdir(parents=True)
    link = spool / target.name
    os.symlink(target, link)
    with sessions.begin() as session:
        save_results(session, [Result(**{**result.__dict__, "path": str(link)})])
    _study(root / "data" / "pneumoscan.db", "2.1", status="complete", send_state="sent", sent_at=_ago(30))
    assert purge_spool(sessions, [spool], days=7, now=NOW).removed == 0
    assert target.exists() and link.is_symlink()


def test_purge_spool_command(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    data = tmp_path / "data"
    data.mkdir()
    sessions = open_database(f"sqlite:///{data / 'pneumoscan.db'}")
    received, result = _instance(inbox / "received", "3.1", 1)
    mine, own = _instance(inbox, "3.1", 2)
    with sessions.begin() as session:
        save_results(session, [result, own])
    sessions.dispose()
    _study(data / "pneumoscan.db", "3.1", status="complete", send_state="sent",
           sent_at=(datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%d %H:%M:%S.%f"))
    env = helpers.pneumoscan_env(data, SHIPPED_MODEL_DIR)
    proc = helpers.invoke(["purge-spool", "--inbox", str(inbox)], env)
    assert proc.returncode == 2 and "PNEUMOSCAN_SPOOL_RETENTION_DAYS" in proc.stderr  # no age given: nothing done
    assert received.exists()
    proc = helpers.invoke(["purge-spool", "--inbox", str(inbox)], {**env, "PNEUMOSCAN_SPOOL_RETENTION_DAYS": "2"})
    assert proc.returncode == 0 and "removed 1 received file" in proc.stdout, proc.stdout + proc.stderr
    assert not received.exists() and mine.exists()
