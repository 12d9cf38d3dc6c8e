"""Integration fixtures: the real Redis and PostgreSQL on this machine, per-test databases, real worker processes.

Each test gets its own PostgreSQL database (created and dropped here) and its own Redis database
number, so tests never see each other's rows or messages. Tests that stop a service stop a private
one (a redis-server, or a TCP proxy in front of PostgreSQL) and never the shared servers.
"""

from __future__ import annotations

import random
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import psycopg
import pytest
import redis
from cluster import (
    PG_ADMIN,
    READY_TIMEOUT,
    REDIS_HOST,
    REDIS_PORT,
    Database,
    PrivateRedis,
    Service,
    TcpProxy,
    services_problem,
)
from support.process import unavailable


@pytest.fixture(scope="session")
def services() -> None:
    """The shared Redis and PostgreSQL are up; CI (which starts them in .ci/run) fails without them."""
    problem = services_problem()
    if problem:
        unavailable(f"{problem}; `bash .ci/run` starts both")


@pytest.fixture
def database(services: None) -> Iterator[Database]:
    """A fresh, empty PostgreSQL database, dropped (with its connections) after the test."""
    name = f"pneumoscan_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield Database(name)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def broker_url(services: None) -> Iterator[str]:
    """A Redis database number of the shared server, claimed for this test and empty now; emptied again afterwards.

    The claim (a key in database 0, set only if absent) keeps two test processes running at once (pytest -n,
    or two people on one machine) from taking the same number between the emptiness check and the first task.
    """
    client = redis.Redis(REDIS_HOST, REDIS_PORT)
    token = uuid.uuid4().hex
    numbers = list(range(1, 16))
    random.shuffle(numbers)
    for number in numbers:
        claim = f"pneumoscan-tests:redis-db:{number}"
        if not client.set(claim, token, nx=True, ex=3600):
            continue
        db = redis.Redis(REDIS_HOST, REDIS_PORT, db=number)
        if db.dbsize() == 0:
            break
        db.close()
        client.delete(claim)
    else:
        client.close()
        pytest.fail("no empty, unclaimed Redis database number left on the shared server")
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{number}"
    db.flushdb()
    db.close()
    if client.get(claim) == token.encode():
        client.delete(claim)
    client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A started private redis-server; always stopped at the end."""
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_proxy(services: None) -> Iterator[TcpProxy]:
    """A running proxy in front of the shared PostgreSQL; always killed at the end."""
    proxy = TcpProxy()
    proxy.start()
    yield proxy
    proxy.kill()


@pytest.fixture
def launch(tmp_path: Path, pneumoscan_exe: Path) -> Iterator[Callable[..., Service]]:
    """Start `pneumoscan ARGS...` with an environment; every process started is stopped at the end."""
    started: list[Service] = []

    def start(args: list[str], env: dict[str, str], name: str) -> Service:
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([str(pneumoscan_exe), *args], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        service = Service(proc, log_path, [str(a) for a in args])
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.stop()


@pytest.fixture
def start_worker(launch: Callable[..., Service]) -> Callable[..., Service]:
    """Start a `pneumoscan worker` node (``concurrency`` pool processes) and wait until its model is loaded."""

    def start(env: dict[str, str], name: str, *, concurrency: int = 1, wait: bool = True) -> Service:
        worker = launch(["worker", "--concurrency", str(concurrency), "--hostname", f"{name}@%h"], env, name)
        if wait:
            worker.wait_for_log("worker process ready", READY_TIMEOUT, count=concurrency)
        return worker

    return start



@pytest.fixture
def cluster_env(tmp_path: Path, tiny_bundle: Any, database: Database, broker_url: str) -> dict[str, str]:
    """The environment of every process of one distributed test: tiny model, per-test database and broker."""
    return helpers.pneumoscan_env(tmp_path / "data", tiny_bundle.path, PNEUMOSCAN_DATABASE_URL=database.url,
                                  PNEUMOSCAN_BROKER_URL=broker_url)
