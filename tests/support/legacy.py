"""Rows as an old schema revision stored them, for tests of the migrations that follow it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text


def insert_at_0001(connection: Connection, results: Sequence[Any], when: datetime) -> None:
    """Write ``results`` (pneumoscan.domain.Result) with plain SQL into the revision-0001 tables.

    Today's save_results writes tables that 0001 does not have (sightings, the outbox), so it cannot.
    """
    ids: dict[str, int] = {}
    for result in results:
        sha = str(result.sha256)
        if sha not in ids:
            ids[sha] = len(ids) + 1
            connection.execute(text("INSERT INTO images (id, sha256, path, status, first_seen_at, updated_at) "
                                    "VALUES (:id, :sha, :path, :status, :t, :t)"),
                               {"id": ids[sha], "sha": sha, "path": result.path, "status": result.status, "t": when})
        if result.status == "done":
            connection.execute(text(
                "INSERT INTO predictions (image_id, model_version, probability, label, threshold, created_at) "
                "VALUES (:id, :v, :p, :label, 0.5, :t)"),
                {"id": ids[sha], "v": result.model_version, "p": result.probability, "label": result.label,
                 "t": when})
