"""The results query on a real SQLite file: migration 0002's indexes, statistics, and both query plans."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import Session, sessionmaker
from support import legacy

from pneumoscan.db import make_engine, open_database, refresh_statistics, upgrade
from pneumoscan.db.results import ResultFilter, plan_results, query_results, results_statement
from pneumoscan.db.writes import save_results
from pneumoscan.domain import Result

CURRENT, OLD = "v2", "v1"
START = datetime(2026, 1, 1, tzinfo=UTC)


def _stored(n: int) -> list[Result]:
    results = []
    for i in range(n):
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        if i % 7 == 3:
            results.append(Result(f"/scans/{i}", "rejected", sha256=sha, kind="png", reason="not an image"))
            continue
        for version, shift in ((CURRENT, 0.0), (OLD, 0.2)):
            p = (i * 37 % 100) / 100 if version == CURRENT else max(0.0, (i * 37 % 100) / 100 - shift)
            results.append(Result(f"/scans/{i}", "done", sha256=sha, kind="png", probability=p,
                                  label="PNEUMONIA" if p >= 0.5 else "NORMAL", threshold=0.5, model_version=version))
    return results


def _spread_in_time(session: Session) -> None:
    # save_results stamps one batch with one time; spread them so that the order is by time, not id
    for image_id in session.execute(text("SELECT id FROM images")).scalars():
        session.execute(text("UPDATE images SET updated_at = :at WHERE id = :id"),
                        {"at": START + timedelta(hours=(image_id * 13) % 60), "id": image_id})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'pneumoscan.db'}")
    yield engine
    engine.dispose()


def _indexes(engine: Engine, table: str) -> dict[str, list[str]]:
    return {ix["name"]: list(ix["column_names"]) for ix in inspect(engine).get_indexes(table)}


def test_migration_0002_adds_the_results_indexes_to_a_database_with_rows(engine: Engine) -> None:
    upgrade(engine, "0001")
    with engine.begin() as connection:
        legacy.insert_at_0001(connection, _stored(20), START)
    upgrade(engine)
    assert _indexes(engine, "predictions")["ix_predictions_model_probability"] == ["model_version", "probability"]
    images = _indexes(engine, "images")
    assert images["ix_images_status_updated_at"] == ["status", "updated_at", "id"]
    assert "ix_images_status" not in images
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM predictions")).scalar_one() == 2 * 17
        plan = " ".join(str(row[-1]) for row in connection.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT id FROM predictions WHERE model_version = 'v2' AND probability >= 0.99"))
    assert "ix_predictions_model_probability" in plan


def test_statistics_are_gathered_when_missing_or_outgrown_and_not_otherwise(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as connection:
        assert not refresh_statistics(connection)  # empty tables: nothing to learn
    with sessionmaker(engine).begin() as session:
        save_results(session, _stored(30))
    open_database(engine.url.render_as_string(hide_password=False)).dispose()  # what every open does
    with engine.begin() as connection:
        analyzed = set(connection.execute(text("SELECT idx FROM sqlite_stat1")).scalars())
        assert {"ix_predictions_model_probability", "ix_images_status_updated_at"} <= analyzed
        assert not refresh_statistics(connection)
    with sessionmaker(engine).begin() as session:
        save_results(session, [r for r in _stored(100) if r.path not in {f"/scans/{i}" for i in range(30)}])
    with engine.begin() as connection:
        assert refresh_statistics(connection)


FILTERS = [
    ResultFilter(model_version=CURRENT, limit=5),
    ResultFilter(label="pneumonia", model_version=CURRENT, limit=5),
    ResultFilter(label="NORMAL", max_probability=0.2, model_version=CURRENT, limit=3),
    ResultFilter(min_probability=0.97, model_version=CURRENT, limit=10),
    ResultFilter(min_probability=0.3, max_probability=0.4, since=START + timedelta(hours=30), model_version=OLD,
                 limit=4),
    ResultFilter(min_probability=0.9, limit=6),
    ResultFilter(status="rejected", model_version=None, limit=3),
    ResultFilter(status="done", label="PNEUMONIA", model_version=CURRENT, limit=None),
]


@pytest.mark.parametrize("filters", FILTERS)
def test_both_plans_return_the_rows_of_the_plain_statement(engine: Engine, filters: ResultFilter) -> None:
    upgrade(engine)
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        save_results(session, _stored(60))
        _spread_in_time(session)
    with sessions() as session:
        expected = [dict(r._mapping) for r in session.execute(results_statement(filters))]
        matched = set(session.execute(text("SELECT id FROM images")).scalars())
        walked = [dict(r._mapping) for r in session.execute(results_statement(filters, walk=True))]
        by_id = [dict(r._mapping) for r in session.execute(results_statement(filters, image_ids=matched))]
        chosen = query_results(session, filters)
    assert expected  # every filter above matches something
    assert walked == expected
    assert by_id == expected
    assert chosen == expected
    times = [row["updated_at"] for row in expected]
    assert times == sorted(times, reverse=True)


def test_a_narrow_filter_is_served_by_ids_and_a_common_one_by_walking(engine: Engine) -> None:
    upgrade(engine)
    with sessionmaker(engine).begin() as session:
        save_results(session, _stored(60))
    with sessionmaker(engine)() as session:
        narrow = plan_results(session, ResultFilter(min_probability=0.99, model_version=CURRENT))
        assert "images.id IN (" in str(narrow)
        common = plan_results(session, ResultFilter(label="NORMAL", model_version=CURRENT))
        assert "images.id IN (" in str(common)  # 60 images are few next to SPARSE_MATCHES
        common = plan_results(session, ResultFilter(label="NORMAL", model_version=CURRENT), sparse_matches=10)
        assert "images.id IN (" not in str(common) and "||" in str(common)
        assert plan_results(session, ResultFilter(status="failed")).compare(
            results_statement(ResultFilter(status="failed")))


def test_model_versions_are_listed_in_order_of_their_first_prediction(sessions: Any) -> None:
    from pneumoscan.db.results import model_versions
    from pneumoscan.db.schema import Image, Prediction

    start = datetime(2026, 1, 1, tzinfo=UTC)
    with sessions.begin() as session:
        assert model_versions(session) == []
        for i, (version, days) in enumerate([("zeta-1", 0), ("alpha-2", 5), ("zeta-1", 9), ("mid-3", 7)]):
            image = Image(sha256=f"{i:064x}", path=f"/x/{i}.png", status="done")
            session.add(image)
            session.flush()
            session.add(Prediction(image_id=image.id, model_version=version, probability=0.5, label="NORMAL",
                                   threshold=0.5, created_at=start + timedelta(days=days)))
    with sessions() as session:
        assert model_versions(session) == ["zeta-1", "alpha-2", "mid-3"]
