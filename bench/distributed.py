"""Distributed mode on one machine: throughput with 1 and with 2 worker processes on the same Redis and PostgreSQL.

python -m bench.distributed [--n 2000] [--workers 1,2] [--bundle DIR | --stand-in]
                            [--redis redis://127.0.0.1:6379] [--pg-admin postgresql://postgres@127.0.0.1:5432/test]

For each worker count W: a throw-away PostgreSQL database (created, migrated, dropped here) and an
empty Redis database number (flushed afterwards); W `pneumoscan worker --concurrency 1` nodes, each
waited for until its pool process has loaded the model; then N full-size JPEGs are enqueued in
batches of the configured size through the same CeleryDispatcher the scheduler uses, and the
clock runs until all N prediction rows are in PostgreSQL. Steady-state images/s comes from the
batches' commit times (predictions.created_at), as in throughput.py.

The same run also measures the pieces an estimate for N GPU workers rests on: the database's cost
per batch (settled_hashes + save_results of batch-size results in one transaction) and the
broker's cost per task (publishing a batch). See BENCHMARKS.md for the estimate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

from bench import common
from bench.make_inputs import input_set

READY = "worker process ready"


def empty_redis_db(base: str) -> int:
    import redis

    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{number}")
        try:
            if client.dbsize() == 0:
                return number
        finally:
            client.close()
    raise RuntimeError(f"no empty Redis database number on {base}")


class Scratch:
    """A throw-away PostgreSQL database and Redis database number for one configuration."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._admin = args.pg_admin
        self._stack = ExitStack()
        self.broker_url = f"{args.redis}/{empty_redis_db(args.redis)}"

    def __enter__(self) -> Scratch:
        from pneumoscan.db import open_database

        database = self._stack.enter_context(common.scratch_postgres(self._admin))
        self.pg_url, self.db_url = database.pg_url, database.db_url
        open_database(self.db_url).dispose()  # migrate once, before the workers race to
        return self

    def __exit__(self, *_: object) -> None:
        import redis

        self._stack.close()  # drops the database
        client = redis.Redis.from_url(self.broker_url)
        client.flushdb()
        client.close()

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.pg_url) as conn:
            return conn.execute(sql).fetchall()


def start_workers(count: int, env: dict[str, str], logs: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    workers = []
    for i in range(count):
        log_path = logs / f"worker{i}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([str(common.PNEUMOSCAN_EXE), "worker", "--concurrency", "1",
                                     "--hostname", f"bench{i}@%h"], env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        workers.append((proc, log_path))
    for proc, log_path in workers:
        common.wait_for(lambda p=proc, lp=log_path: READY in lp.read_text() or p.poll() is not None, 300,
                        interval=0.5, what="a worker's model to load")
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log_path.read_text()[-3000:]}")
    return workers


def stop_workers(workers: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    for proc, _ in workers:
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc, _ in workers:
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # pool processes left behind, if any
        proc.wait()


def run_config(count: int, paths: list[str], args: argparse.Namespace, bundle_path: Path) -> dict[str, Any]:
    from pneumoscan.config import Settings
    from pneumoscan.db import open_database
    from pneumoscan.worker.app import make_app
    from pneumoscan.worker.client import CeleryDispatcher

    logs = args.work / "distributed" / f"workers-{count}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    with Scratch(args) as scratch:
        env = common.pneumoscan_env(logs / "data", bundle_path, PNEUMOSCAN_BROKER_URL=scratch.broker_url,
                                    PNEUMOSCAN_DATABASE_URL=scratch.db_url,
                                    PNEUMOSCAN_BATCH_SIZE=str(args.batch_size))
        workers = start_workers(count, env, logs)
        try:
            settings = Settings(broker_url=scratch.broker_url, database_url=scratch.db_url,
                                batch_size=args.batch_size, data_dir=logs / "data",
                                patient_salt=env["PNEUMOSCAN_PATIENT_SALT"])
            dispatcher = CeleryDispatcher(make_app(settings), open_database(scratch.db_url))
            start = time.time()
            publish = []
            for i in range(0, len(paths), args.batch_size):
                with common.Timer() as t:
                    dispatcher.submit(paths[i:i + args.batch_size])
                publish.append(t.seconds)
            common.wait_for(lambda: scratch.rows("SELECT count(*) FROM predictions")[0][0] >= len(paths),
                            60 + len(paths), interval=0.25, what="every prediction row")
            wall = time.time() - start
            batches = scratch.rows("SELECT extract(epoch FROM created_at), count(*) FROM predictions "
                                   "GROUP BY created_at ORDER BY created_at")
            statuses = dict(scratch.rows("SELECT status, count(*) FROM images GROUP BY status"))
        finally:
            stop_workers(workers)
    first, last = float(batches[0][0]), float(batches[-1][0])
    steady_rows = sum(n for _, n in batches[1:])
    return {"workers": count, "images": len(paths), "statuses": statuses, "wall_s": wall,
            "wall_images_per_s": len(paths) / wall,
            "images_per_s": steady_rows / (last - first) if last > first else len(paths) / wall,
            "publish_ms_per_task": common.median(publish) * 1000}


def database_cost(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline's database work per batch on a throw-away PostgreSQL database (one connection)."""
    with Scratch(args) as scratch:
        return common.pipeline_db_cost(scratch.db_url, args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="full-size JPEGs per configuration")
    parser.add_argument("--workers", default="1,2", help="worker process counts to compare")
    parser.add_argument("--batch-size", type=int, default=None, help="[default: the Settings default]")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server (a free db number is used)")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL URL allowed to CREATE and DROP DATABASE")
    parser.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    common.add_bundle_args(parser)
    common.add_output_arg(parser, "distributed")
    args = parser.parse_args()

    from pneumoscan.config import Settings

    args.batch_size = args.batch_size or Settings(data_dir=args.work / "unused").batch_size
    bundle_path, bundle = common.resolve_bundle(args, args.work)
    info = common.machine()
    print(common.describe_machine(info))
    print(f"bundle {bundle['version']}, batch {args.batch_size}, {args.n} full-size JPEGs per configuration")
    paths = [str(p) for p in sorted(input_set("jpeg", args.n, args.work).iterdir())]
    results: list[dict[str, Any]] = []
    for count in (int(w) for w in args.workers.split(",")):
        result = run_config(count, paths, args, bundle_path)
        result["over_one_worker"] = result["images_per_s"] / results[0]["images_per_s"] if results else 1.0
        results.append(result)
        print(f"{count} worker process{'es' if count > 1 else ''}: {result['images_per_s']:6.1f} images/s steady "
              f"({result['over_one_worker']:.2f}x one worker; {result['wall_images_per_s']:.1f} images/s over "
              f"{result['wall_s']:.0f} s from first publish; {result['statuses']}; publish "
              f"{result['publish_ms_per_task']:.1f} ms/task)", flush=True)
    db = database_cost(args)
    print(f"database work per batch of {db['batch_size']} (PostgreSQL, one connection): {db['ms_per_batch']:.1f} ms "
          f"-> at most {db['rows_per_s_one_connection']:.0f} rows/s per worker connection")
    payload = {"machine": info, "bundle": bundle, "batch_size": args.batch_size, "n": args.n, "results": results,
               "database_cost": db, "preliminary": common.preliminary(info, bundle)}
    common.write_result("distributed", payload, args.out)


if __name__ == "__main__":
    main()
