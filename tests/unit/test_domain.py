"""One vocabulary: the CLI's choices and the database's constraints come from pneumoscan.domain."""

from __future__ import annotations

from typing import Any

import click
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from pneumoscan.cli import main
from pneumoscan.domain import LABELS, STATUSES, Label, Status, label_at


def _choices(command: str, option: str) -> tuple[str, ...]:
    param = next(p for p in main.commands[command].params if p.name == option)
    assert isinstance(param.type, click.Choice)
    return tuple(param.type.choices)


def test_cli_choices_are_the_domain_vocabulary() -> None:
    assert STATUSES == ("done", "failed", "rejected", "ignored") and LABELS == ("NORMAL", "PNEUMONIA")
    assert _choices("results", "status") == _choices("reclassify", "status") == STATUSES
    assert _choices("results", "label") == _choices("review", "label") == LABELS


def test_threshold_rule() -> None:
    assert label_at(0.5, 0.5) is Label.PNEUMONIA and label_at(0.4999, 0.5) is Label.NORMAL


@pytest.mark.parametrize(("sql", "bad"), [
    ("INSERT INTO images (path, status, first_seen_at, updated_at) VALUES ('/x', :v, '2026-01-01', '2026-01-01')",
     "pending"),
    ("INSERT INTO reviews (image_id, reviewer, label, created_at) VALUES (1, 'a', :v, '2026-01-01')", "normal"),
])
def test_the_database_refuses_words_outside_the_vocabulary(sessions: Any, sql: str, bad: str) -> None:
    with sessions.begin() as session:
        session.execute(text("INSERT INTO images (path, status, first_seen_at, updated_at) "
                             "VALUES ('/ok', :v, '2026-01-01', '2026-01-01')"), {"v": Status.DONE.value})
    with pytest.raises(IntegrityError, match="CHECK constraint failed"), sessions.begin() as session:
        session.execute(text(sql), {"v": bad})


def test_the_images_table_stores_every_dicom_field_at_its_width() -> None:
    from dataclasses import fields

    from pneumoscan.db.schema import Image
    from pneumoscan.domain import DICOM_COLUMNS, DICOM_FIELDS, DicomMeta

    assert tuple(f.name for f in fields(DicomMeta)) == DICOM_COLUMNS
    for name, (_keyword, width) in DICOM_FIELDS.items():
        assert Image.__table__.c[name].type.length == width, name
    assert Image.__table__.c["patient_ref"].type.length == 64  # a SHA-256 in hex
