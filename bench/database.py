"""The `results` query with filters at 1,000,000 images, in SQLite and PostgreSQL: median ms per query.

python -m bench.database [--rows 1000000] [--backends sqlite,postgresql] [--repeats 15]
                         [--pg-admin postgresql://postgres@127.0.0.1:5432/test]

The schema comes from pneumoscan's own migrations (open_database). Rows are bulk-loaded
(sqlite3 executemany in one transaction; PostgreSQL COPY; secondary indexes rebuilt after the
load) with a realistic spread: updated_at over the last year in id order, 96% done / 2% rejected /
2% failed (the statuses pneumoscan has since issue 13), a prediction of the current model for every done image (30%
PNEUMONIA-leaning probabilities), and an older model's prediction for half of them. PostgreSQL
gets ANALYZE after the load (autovacuum would do it soon); SQLite is queried as pneumoscan leaves
it (the approximate ANALYZE that opening the database runs when the tables have outgrown their
statistics), and optionally once more after a full ANALYZE ("sqlite-analyzed").

Each query is pneumoscan.db.results.query_results (the code behind `pneumoscan results`) with a
ResultFilter and the CLI's default limit of 100, in a fresh session, run once to warm up and then
--repeats times. The PostgreSQL database is a throw-away one, created and dropped here.
Target: under 50 ms for a filtered, limited query.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench import common

CURRENT, OLD = "bench-v2", "bench-v1"
TARGET_MS = 50.0
IMAGE_COLUMNS = ("id", "sha256", "path", "kind", "byte_size", "status", "reason", "first_seen_at", "updated_at")
PREDICTION_COLUMNS = ("id", "image_id", "model_version", "probability", "label", "threshold", "created_at")


def synthetic_rows(n: int, now: datetime, seed: int = 0) -> tuple[Iterator[tuple[Any, ...]], Iterator[tuple[Any, ...]]]:
    """(image rows, prediction rows) as tuples in IMAGE_COLUMNS / PREDICTION_COLUMNS order; datetimes are UTC."""
    from pneumoscan.domain import Label, Status

    done, rejected, failed = Status.DONE.value, Status.REJECTED.value, Status.FAILED.value
    sick_label, well_label = Label.PNEUMONIA.value, Label.NORMAL.value
    rng = np.random.default_rng(seed)
    start = now - timedelta(days=365)
    offsets = np.sort(rng.uniform(0, 365 * 86400, n))
    statuses = rng.choice(np.array([done, rejected, failed]), n, p=[0.96, 0.02, 0.02])
    sick = rng.random(n) < 0.3
    probability = np.where(sick, rng.beta(8, 2, n), rng.beta(2, 8, n))
    old_too = rng.random(n) < 0.5
    reasons = {rejected: "modality CT is not a radiograph", failed: "permission denied reading the file"}

    def images() -> Iterator[tuple[Any, ...]]:
        for i in range(n):
            at = start + timedelta(seconds=float(offsets[i]))
            status = str(statuses[i])
            yield (i + 1, hashlib.sha256(i.to_bytes(8, "little")).hexdigest(), f"/inbox/{i // 1000:04d}/{i:07d}.jpeg",
                   "jpeg", 500_000, status, reasons.get(status), at, at)

    def predictions() -> Iterator[tuple[Any, ...]]:
        next_id = 1
        for i in range(n):
            if statuses[i] != done:
                continue
            at = start + timedelta(seconds=float(offsets[i]))
            p = float(probability[i])
            yield (next_id, i + 1, CURRENT, p, sick_label if p >= 0.5 else well_label, 0.5, at)
            next_id += 1
            if old_too[i]:
                q = min(1.0, max(0.0, p + float(rng.normal(0, 0.1))))
                yield (next_id, i + 1, OLD, q, sick_label if q >= 0.5 else well_label, 0.5, at - timedelta(days=30))
                next_id += 1

    return images(), predictions()


def _chunks(rows: Iterator[tuple[Any, ...]], size: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _sqlite_time(value: Any) -> Any:
    # SQLAlchemy keeps SQLite datetimes as naive UTC text in this format
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, datetime) else value


def load_sqlite(path: Path, n: int, now: datetime) -> None:
    """Bulk insert; the migrations' secondary indexes are dropped first and rebuilt after (same end state)."""
    images, predictions = synthetic_rows(n, now)
    with sqlite3.connect(path) as db:
        indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                             "AND tbl_name IN ('images', 'predictions')").fetchall()
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')
        tables = (("images", IMAGE_COLUMNS, images), ("predictions", PREDICTION_COLUMNS, predictions))
        for table, columns, rows in tables:
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
            for chunk in _chunks(rows):
                db.executemany(sql, [tuple(_sqlite_time(v) for v in row) for row in chunk])
        for _, sql in indexes:
            db.execute(sql)


def load_postgresql(url: str, n: int, now: datetime) -> None:
    """COPY; secondary indexes not backing a constraint are dropped first and rebuilt after."""
    import psycopg

    images, predictions = synthetic_rows(n, now)
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            indexes = cur.execute(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema() "
                "AND i.tablename IN ('images', 'predictions') "
                "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)").fetchall()
            for name, _ in indexes:
                cur.execute(f'DROP INDEX "{name}"')
            for table, columns, rows in (("images", IMAGE_COLUMNS, images),
                                         ("predictions", PREDICTION_COLUMNS, predictions)):
                with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            for table in ("images", "predictions"):  # the COPY gave explicit ids; move the sequences past them
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            for _, definition in indexes:
                cur.execute(definition)
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")


def query_set(now: datetime) -> list[tuple[str, Any]]:
    from pneumoscan.db.results import ResultFilter
    from pneumoscan.domain import Label, Status

    return [
        ("default (current model, newest 100)", ResultFilter(model_version=CURRENT)),
        ("label PNEUMONIA", ResultFilter(label=Label.PNEUMONIA, model_version=CURRENT)),
        ("PNEUMONIA, probability >= 0.9", ResultFilter(label=Label.PNEUMONIA, min_probability=0.9,
                                                                    model_version=CURRENT)),
        ("status failed", ResultFilter(status=Status.FAILED, model_version=CURRENT)),
        ("since 1 day", ResultFilter(since=now - timedelta(days=1), model_version=CURRENT)),
        ("NORMAL, p <= 0.05, since 30 days",
         ResultFilter(label=Label.NORMAL, max_probability=0.05, since=now - timedelta(days=30), model_version=CURRENT)),
        ("probability >= 0.999 (rare)", ResultFilter(min_probability=0.999, model_version=CURRENT)),
        ("status rejected, all versions", ResultFilter(status=Status.REJECTED, model_version=None)),
        ("all versions, newest 100", ResultFilter(model_version=None)),
    ]


def query_plan(sessions: Any, filters: Any) -> list[str]:
    """The database's plan for the results query (EXPLAIN QUERY PLAN / EXPLAIN), to explain slow filters."""
    from pneumoscan.db.results import plan_results, serial_execution

    with sessions() as session, serial_execution(session, filters):  # as query_results runs it
        connection = session.connection()
        compiled = plan_results(session, filters).compile(dialect=connection.dialect,
                                                           compile_kwargs={"render_postcompile": True})
        params: Any = compiled.construct_params()
        if compiled.positional:
            params = tuple(params[name] for name in compiled.positiontup or ())
        sqlite_db = connection.dialect.name == "sqlite"
        prefix = "EXPLAIN QUERY PLAN " if sqlite_db else "EXPLAIN "
        rows = connection.exec_driver_sql(prefix + str(compiled), params).fetchall()
    return [str(row[-1]) for row in rows]


def time_queries(url: str, now: datetime, repeats: int) -> list[dict[str, Any]]:
    from pneumoscan.db import open_database
    from pneumoscan.db.results import query_results

    sessions = open_database(url)
    rows = []
    try:
        for name, filters in query_set(now):
            def run(f: Any = filters) -> int:
                with sessions() as session:
                    return len(query_results(session, f))

            count = run()  # warm the cache and the connection
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1000)
            rows.append({"query": name, "rows": count, "median_ms": common.median(times),
                         "p95_ms": common.percentile(times, 95), "meets_target": common.median(times) < TARGET_MS,
                         "plan": query_plan(sessions, filters)})
    finally:
        sessions.dispose()
    return rows


def bench_backend(backend: str, args: argparse.Namespace, now: datetime) -> dict[str, Any]:
    from pneumoscan.db import open_database

    if backend == "sqlite":
        folder = args.work / "database"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        path = folder / "results.db"
        url = f"sqlite:///{path}"
        open_database(url).dispose()
        with common.Timer() as load:
            load_sqlite(path, args.rows, now)
        return {"backend": backend, "load_s": load.seconds, "queries": time_queries(url, now, args.repeats)}
    if backend == "sqlite-analyzed":  # the same file after ANALYZE: what planner statistics would change
        path = args.work / "database" / "results.db"
        if not path.is_file():
            raise SystemExit("sqlite-analyzed needs the sqlite backend earlier in the same run")
        with common.Timer() as load, sqlite3.connect(path) as db:
            db.execute("ANALYZE")
        return {"backend": backend, "load_s": load.seconds,
                "queries": time_queries(f"sqlite:///{path}", now, args.repeats)}
    with common.scratch_postgres(args.pg_admin) as scratch:
        open_database(scratch.db_url).dispose()
        with common.Timer() as load:
            load_postgresql(scratch.pg_url, args.rows, now)
        return {"backend": backend, "load_s": load.seconds,
                "queries": time_queries(scratch.db_url, now, args.repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_database_args(parser, "sqlite-analyzed: the sqlite file again after ANALYZE (needs sqlite before it)")
    common.add_output_arg(parser, "database")
    args = parser.parse_args()
    info = common.machine()
    print(common.describe_machine(info))
    now = datetime.now(UTC)
    results = []
    for backend in args.backends.split(","):
        print(f"\n{backend}: {args.rows:,} images ...", flush=True)
        result = bench_backend(backend, args, now)
        results.append(result)
        print(f"{backend}: loaded (or analyzed) in {result['load_s']:.0f} s; median of {args.repeats}, limit 100, "
              f"target < {TARGET_MS:.0f} ms")
        for q in result["queries"]:
            print(f"  {q['query']:<38} {q['median_ms']:8.1f} ms  (p95 {q['p95_ms']:.1f}, {q['rows']} rows)  "
                  f"{q['median_ms'] / TARGET_MS:5.2f}x target{'' if q['meets_target'] else '  MISSES'}", flush=True)
    payload = {"machine": info, "rows": args.rows, "repeats": args.repeats, "target_ms": TARGET_MS,
               "results": results, "preliminary": common.preliminary(info)}
    common.write_result("database", payload, args.out)


if __name__ == "__main__":
    main()
