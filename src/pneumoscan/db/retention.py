"""What spool retention may remove: the received files of studies that are complete and delivered, long enough ago."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from pneumoscan.db.schema import Image, Sighting, Study
from pneumoscan.domain import SendState, StudyStatus


@dataclass(frozen=True)
class SpoolFile:
    """A file seen under a spool folder, as its sighting recorded it, and the SOP Instance UID of its content."""

    path: str
    byte_size: int | None
    mtime: float | None
    sop_instance_uid: str | None


def _under(folder: str) -> str:
    """A LIKE pattern for every path below ``folder`` (``\\`` escapes)."""
    escaped = folder.rstrip("/").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}/%"


def delivered_spool_files(session: Session, folders: Sequence[str], before: datetime) -> list[SpoolFile]:
    """Files seen under ``folders`` whose study is complete and was delivered before ``before``.

    Delivered: its result was sent (``sent_at``), or it had nothing to send (no destination, nothing
    assessed: no send state) and completed before then. A study still open, waiting, retrying or failed keeps
    its files.
    """
    if not folders:
        return []
    delivered = or_(and_(Study.send_state == SendState.SENT, Study.sent_at < before),
                    and_(Study.send_state.is_(None), Study.completed_at < before))
    rows = session.execute(
        select(Sighting.path, Sighting.byte_size, Sighting.mtime, Image.sop_instance_uid)
        .join(Image, Image.id == Sighting.image_id)
        .join(Study, Study.study_uid == Image.study_uid)
        .where(Study.status == StudyStatus.COMPLETE, delivered,
               or_(*(Sighting.path.like(_under(folder), escape="\\") for folder in folders)))
        .order_by(Sighting.path))
    return [SpoolFile(*row) for row in rows]
