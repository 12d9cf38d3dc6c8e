"""Spool retention: received files of complete, delivered studies removed after PNEUMOSCAN_SPOOL_RETENTION_DAYS."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pneumoscan.config import Settings
from pneumoscan.db import Database
from pneumoscan.db.retention import SpoolFile, delivered_spool_files
from pneumoscan.db.schema import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purged:
    """What one purge did: files removed, and files left because they are not as the receiver wrote them."""

    removed: int
    kept: int


def spool_folders(settings: Settings, inbox: Path | None = None) -> list[Path]:
    """The folders the DICOM receiver writes to under these settings: PNEUMOSCAN_DICOM_SPOOL, DATA_DIR/received,
    and INBOX/received for a `watch` or `scheduler` of INBOX (its receiver's spool). Never the inbox itself."""
    folders = [settings.dicom_spool or settings.data_dir / "received"]
    if inbox is not None:
        folders.append(inbox / "received")
    return list(dict.fromkeys(Path(os.path.abspath(f)) for f in folders))


def purge_spool(sessions: Database, folders: Sequence[Path], days: float, now: datetime | None = None) -> Purged:
    """Remove the received files of studies complete and delivered more than ``days`` ago, under ``folders`` only.

    A file goes only if it is still what was received: a regular file (not a link), directly named by the SOP
    Instance UID of the content recorded at that path (as the receiver names them), with the recorded size and
    modification time. Anything else (a file the receiver did not write, one replaced since) is left alone. The
    database keeps every row: results, studies and sightings are the record; only the copies go.
    """
    before = (now or utcnow()) - timedelta(days=days)
    with sessions() as session:
        candidates = delivered_spool_files(session, [str(f) for f in folders], before)
    removed = kept = 0
    for found in candidates:
        if _as_received(found):
            try:
                os.unlink(found.path)
            except FileNotFoundError:
                continue
            removed += 1
        elif os.path.lexists(found.path):
            kept += 1
    if removed or kept:
        log.info("spool retention: removed %d received files older than %g days, left %d not as received", removed,
                 days, kept)
    return Purged(removed, kept)


def _as_received(found: SpoolFile) -> bool:
    path = Path(found.path)
    if found.sop_instance_uid is None or path.name != f"{found.sop_instance_uid}.dcm":
        return False
    try:
        stat = path.lstat()
    except OSError:
        return False
    if not path.is_file() or path.is_symlink():
        return False
    return (found.byte_size is None or stat.st_size == found.byte_size) and (
        found.mtime is None or abs(stat.st_mtime - found.mtime) < 1e-3)
