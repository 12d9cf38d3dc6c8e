"""Migrations and the results query on the real PostgreSQL: the same migrations as SQLite, and both plans."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cluster import Database

from pneumoscan.db import make_engine, refresh_statistics, upgrade
from pneumoscan.db.results import ResultFilter, plan_results, query_results, results_statement
from pneumoscan.db.writes import save_results
from pneumoscan.domain import Result

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CURRENT, OLD = "v2", "v1"


def _stored(n: int) -> list[Result]:
    results = []
    for i in range(n):
        sha = hashlib.sha256(str(i).encode()).hexdigest()
        for version in (CURRENT, OLD):
            p = (i * 37 % 100) / 100 if version == CURRENT else (i * 11 % 100) / 100
            results.append(Result(f"/scans/{i}", "done", sha256=sha, kind="png", probability=p,
                                  label="PNEUMONIA" if p >= 0.5 else "NORMAL", threshold=0.5, model_version=version))
    return results


def test_migration_0002_applies_to_a_postgresql_database_with_rows(database: Database) -> None:
    from support import legacy

    engine = make_engine(database.url)
    try:
        upgrade(engine, "0001")
        with engine.begin() as connection:
            legacy.insert_at_0001(connection, _stored(20), datetime(2026, 11, 1, tzinfo=UTC))
        upgrade(engine)
        upgrade(engine)  # again: nothing to do
        with engine.begin() as connection:
            assert not refresh_statistics(connection)  # autovacuum's job on PostgreSQL
    finally:
        engine.dispose()
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pneumoscan.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert database.rows("SELECT version_num FROM alembic_version") == [(head,)]
    indexes = dict(database.rows("SELECT indexname, indexdef FROM pg_indexes "
                                 "WHERE tablename IN ('images', 'predictions')"))
    assert "(model_version, probability)" in indexes["ix_predictions_model_probability"]
    assert "(status, updated_at, id)" in indexes["ix_images_status_updated_at"]
    assert "ix_images_status" not in indexes
    assert database.count("SELECT count(*) FROM predictions") == 40


@pytest.mark.parametrize("filters", [
    ResultFilter(label="PNEUMONIA", model_version=CURRENT, limit=5),
    ResultFilter(min_probability=0.95, model_version=CURRENT, limit=5),
    ResultFilter(label="NORMAL", max_probability=0.3, model_version=OLD, limit=4),
    ResultFilter(status="done", min_probability=0.5, limit=7),
])
def test_both_plans_return_the_rows_of_the_plain_statement(database: Database, filters: ResultFilter) -> None:
    from sqlalchemy import text
    from sqlalchemy.orm import sessionmaker

    engine = make_engine(database.url)
    try:
        upgrade(engine)
        sessions = sessionmaker(engine)
        with sessions.begin() as session:
            save_results(session, _stored(40))
            session.execute(text("UPDATE images SET updated_at = :start + (id * 13 % 50) * interval '1 hour'"),
                            {"start": datetime(2026, 1, 1, tzinfo=UTC) - timedelta(days=1)})
        with sessions() as session:
            expected = [dict(r._mapping) for r in session.execute(results_statement(filters))]
            ids = set(session.execute(text("SELECT id FROM images")).scalars())
            by_id = [dict(r._mapping) for r in session.execute(results_statement(filters, image_ids=ids))]
            walked = [dict(r._mapping) for r in session.execute(results_statement(filters, walk=True))]
            assert "images.id IN" in str(plan_results(session, filters))
            assert "images.id IN" not in str(plan_results(session, filters, sparse_matches=2))
            setting = "SELECT current_setting('max_parallel_workers_per_gather')"
            before = session.execute(text(setting)).scalar_one()
            chosen = query_results(session, filters)  # runs serially, then puts the setting back
            assert session.execute(text(setting)).scalar_one() == before
    finally:
        engine.dispose()
    assert expected
    assert by_id == expected
    assert walked == expected
    assert chosen == expected


def test_concurrent_batches_sharing_contents_neither_deadlock_nor_duplicate(database: Database) -> None:
    """Two writers save overlapping batches at once, in opposite orders, as two workers can on PostgreSQL."""
    import threading

    from sqlalchemy.orm import sessionmaker

    engine = make_engine(database.url)
    upgrade(engine)
    sessions = sessionmaker(engine)
    contents = [hashlib.sha256(f"shared-{i}".encode()).hexdigest() for i in range(60)]
    errors: list[BaseException] = []

    def writer(name: str, order: list[str]) -> None:
        try:
            for round_ in range(15):
                batch = [Result(f"/{name}/{round_}/{sha[:8]}", "skipped" if (i + round_) % 3 == 0 else "done",
                                sha256=sha, kind="png", probability=0.25, label="NORMAL", threshold=0.5,
                                model_version=CURRENT) for i, sha in enumerate(order)]
                with sessions.begin() as session:
                    save_results(session, batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=("a", contents)),
               threading.Thread(target=writer, args=("b", contents[::-1]))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        engine.dispose()
    assert not errors, errors
    assert database.count("SELECT count(DISTINCT sha256) FROM images") == database.count(
        "SELECT count(*) FROM images") == 60
    assert database.count("SELECT count(*) FROM predictions") == 60
