"""The reading workstation at 1,000,000 images: the worklist by study and the urgent counts, on both databases.

python -m bench.reading [--rows 1000000] [--backends sqlite,postgresql] [--repeats 15]

bench/database.py's synthetic images and predictions, each image given a study (three images a study) and one
studies row per study with a probability (a tenth of them urgent) and a last-instance time (PostgreSQL then
vacuumed and analysed, as autovacuum would after such a load). Timed through the
library calls the /studies page and the dashboard make (pneumoscan.db.images.study_worklist, a page of 200, also
as under blinded reading, with no urgent bucket; and urgent_counts), median and worst of --repeats after one
warm-up. Target: under 200 ms each.

The viewer's own figures (first paint of a 2000x1700 DICOM, a window/level change) are bench/viewer.py's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench import common, database

TARGET_MS = 200.0
PER_STUDY = 3
STUDIES_SQL = (
    "INSERT INTO studies (study_uid, status, last_instance_at, revision, instance_count, assessed_count, label, "
    "probability, send_attempts) SELECT study_uid, 'complete', max(first_seen_at), 1, count(*), count(*), "
    "CASE WHEN max(id) % 10 = 0 THEN 'PNEUMONIA' ELSE 'NORMAL' END, "
    "CASE WHEN max(id) % 10 = 0 THEN 0.95 ELSE 0.3 END, 0 FROM images GROUP BY study_uid")


def _add_studies(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE images SET study_uid = '1.2.826.0.1.' || (id / {PER_STUDY})"))
        connection.execute(text(STUDIES_SQL))
        if engine.dialect.name == "sqlite":
            connection.execute(text("ANALYZE"))
    if engine.dialect.name == "postgresql":  # what autovacuum does after a bulk load: statistics, visibility map
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def _time(call: Any, repeats: int) -> dict[str, float]:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "max_ms": max(times)}


def bench_backend(url: str, repeats: int) -> dict[str, Any]:
    from pneumoscan.db import open_database
    from pneumoscan.db.images import study_worklist, urgent_counts

    db = open_database(url)
    try:
        def worklist() -> None:
            with db() as session:
                rows = study_worklist(session, 0.9, 200)
            assert len(rows) == 200 and rows[0].urgent

        def blinded() -> None:  # the studies page under blinded reading: no urgent bucket, the most recent first
            with db() as session:
                rows = study_worklist(session, None, 200)
            assert len(rows) == 200 and not any(r.urgent for r in rows)

        def counts() -> None:
            with db() as session:
                urgent_counts(session, database.CURRENT, 0.9)

        return {"worklist_by_study": _time(worklist, repeats), "worklist_by_study_blinded": _time(blinded, repeats),
                "urgent_counts": _time(counts, repeats)}
    finally:
        db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_database_args(parser)
    common.add_output_arg(parser, "reading")
    args = parser.parse_args()
    from pneumoscan.db import open_database

    now = datetime.now(UTC)
    payload: dict[str, Any] = {"machine": common.machine(), "rows": args.rows, "target_ms": TARGET_MS,
                               "backends": {}}
    for backend in args.backends.split(","):
        print(f"{backend}: loading {args.rows:,} images", flush=True)
        if backend == "sqlite":
            args.work.mkdir(parents=True, exist_ok=True)
            path = args.work / "reading.db"
            path.unlink(missing_ok=True)
            url = f"sqlite:///{path}"
            open_database(url).dispose()
            database.load_sqlite(path, args.rows, now)
            _add_studies(url)
            payload["backends"][backend] = bench_backend(url, args.repeats)
        else:
            with common.scratch_postgres(args.pg_admin) as scratch:
                open_database(scratch.db_url).dispose()
                database.load_postgresql(scratch.pg_url, args.rows, now)
                _add_studies(scratch.db_url)
                payload["backends"][backend] = bench_backend(scratch.db_url, args.repeats)
        print(backend, payload["backends"][backend], flush=True)
    print(f"wrote {common.write_result('reading', payload, args.out)}")


if __name__ == "__main__":
    main()
