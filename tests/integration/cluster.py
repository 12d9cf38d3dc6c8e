"""Integration helpers: per-test databases, private services to stop and start, and `pneumoscan` processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helpers
import psycopg
import redis

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
READY_TIMEOUT = 90.0  # a pool process loads TensorFlow; on a busy two-core machine that can take a while
STOP_TIMEOUT = 20.0


def services_problem() -> str | None:
    try:
        redis.Redis(REDIS_HOST, REDIS_PORT, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} is not answering ({exc})"
    try:
        psycopg.connect(PG_ADMIN, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_ADMIN} is not answering ({exc})"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Database:
    """A per-test PostgreSQL database: the URL for pneumoscan and a direct connection for checks."""

    name: str
    port: int = 5432

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.name}"

    def via(self, port: int) -> str:
        """The pneumoscan URL of this database through another port (a proxy)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{self.name}"

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run a query on the real server (never through a proxy) and return all rows."""
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{self.name}", connect_timeout=5) as conn:
            return conn.execute(sql, args).fetchall()

    def count(self, sql: str, *args: Any) -> int:
        """The single number a counting query returns; 0 while the schema does not exist yet."""
        try:
            return int(self.rows(sql, *args)[0][0])
        except psycopg.errors.UndefinedTable:
            return 0


class PrivateRedis:
    """A redis-server of our own on a free port, which a test may stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed"
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self._workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        helpers.wait_for(self._answers, 10, message=f"private redis on port {self.port}")

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis("127.0.0.1", self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=STOP_TIMEOUT)
        self._proc = None


class TcpProxy:
    """A TCP forwarder to the shared PostgreSQL, in its own process: killing it is "the database went away".

    Stopping the shared PostgreSQL would break everything else using it, and a private cluster costs
    an initdb and a start-up on every run. To a client the two look the same: open connections drop
    and new ones are refused until the server (here: the proxy) is back on the same port.
    """

    def __init__(self, target_port: int = 5432) -> None:
        self.port = free_port()
        self._target = target_port
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        script = Path(__file__).with_name("tcp_proxy.py")
        self._proc = subprocess.Popen([sys.executable, str(script), str(self.port), str(self._target)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        assert line.strip() == b"ready", line

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=STOP_TIMEOUT)
        self._proc = None


@dataclass
class Service:
    """A `pneumoscan` subprocess (worker, watch, scheduler) in its own process group, logging to a file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, text: str, timeout: float, count: int = 1) -> None:
        """Wait until ``text`` appears ``count`` times in the log; fail early if the process died."""
        helpers.wait_for(lambda: self.log().count(text) >= count or not self.alive(), timeout, interval=0.2,
                         message=f"{text!r} in the log of {' '.join(self.args)}")
        assert self.alive(), f"{' '.join(self.args)} exited with {self.proc.returncode}:\n{self.log()}"

    def pool_children(self) -> list[int]:
        """Process ids of this worker's pool processes (the children of the main process)."""
        children: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            text = (task / "children").read_text().split()
            children.extend(int(pid) for pid in text)
        return children

    def stop(self) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL to the whole group if it takes too long."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # pool processes left behind, if any
        if self.proc.poll() is None:
            self.proc.wait(timeout=STOP_TIMEOUT)


def settled(db: Database, expected: int) -> Callable[[], bool]:
    """A predicate for helpers.wait_for: ``expected`` predictions are stored."""
    return lambda: db.count("SELECT count(*) FROM predictions") >= expected


def assert_each_once(db: Database, paths: list[Path], model_version: str) -> None:
    """Every path has exactly one image row, done, with exactly one prediction of ``model_version``."""
    rows = db.rows("SELECT i.path, i.status, count(p.id) FROM images i LEFT JOIN predictions p "
                   "ON p.image_id = i.id AND p.model_version = %s GROUP BY i.id, i.path, i.status", model_version)
    by_path: dict[str, list[tuple[str, int]]] = {}
    for path, status, n in rows:
        by_path.setdefault(path, []).append((status, n))
    wanted = {str(p) for p in paths}
    assert set(by_path) == wanted, (sorted(wanted - set(by_path))[:5], sorted(set(by_path) - wanted)[:5])
    bad = {p: v for p, v in by_path.items() if v != [("done", 1)]}
    assert not bad, list(bad.items())[:5]
    assert db.count("SELECT count(*) FROM images") == len(paths)
    assert db.count("SELECT count(*) FROM predictions") == len(paths)
    assert db.count("SELECT count(DISTINCT sha256) FROM images") == len(paths)


def wait_quiet(seconds: float) -> None:
    """Sleep on purpose (to let a backoff or an outage run its course); every use says why."""
    time.sleep(seconds)
