"""Shared pieces of the benchmarks: the machine, the bundle under test, timing, child processes, JSON output."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support import process

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_WORK = Path(os.environ.get("PNEUMOSCAN_BENCH_WORK", "/tmp/pneumoscan-bench"))
DATASET = REPO.parent / "shared" / "datasets" / "chest_xray_224"
STAND_IN_VERSION = "stand-in-untrained"
PNEUMOSCAN_EXE = Path(sys.executable).parent / "pneumoscan"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --- the machine ---------------------------------------------------------------------------------

def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cpu_ticks() -> dict[int, tuple[str, int]]:
    """pid -> (command name, utime + stime in clock ticks) for every process we can read."""
    ticks: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        ticks[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


_RUN_START: tuple[float, dict[int, tuple[str, int]]] | None = None  # set by machine()


def competing_load_during_run(min_cores: float = 0.1) -> list[dict[str, Any]]:
    """Average CPU of other long-lived processes (alive at both ends) since machine() was called."""
    if _RUN_START is None:
        return []
    started, before = _RUN_START
    after = _cpu_ticks()
    seconds = time.monotonic() - started
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (name, total) in after.items():
        if pid == os.getpid() or pid not in before or before[pid][0] != name:
            continue
        cores = (total - before[pid][1]) / hz / seconds
        if cores >= min_cores:
            busy.append({"pid": pid, "name": name, "cores": round(cores, 2), "cmd": _cmdline(pid)[:160]})
    return sorted(busy, key=lambda p: -p["cores"])


def competing_load(seconds: float = 1.0, min_cores: float = 0.2) -> list[dict[str, Any]]:
    """Processes other than this one that used at least ``min_cores`` of CPU over ``seconds``.

    A benchmark on a shared machine is only as good as what else ran beside it; the figures are
    recorded with this list so a reader can tell a clean run from a contended one.
    """
    before = _cpu_ticks()
    time.sleep(seconds)
    after = _cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (name, total) in after.items():
        if pid == os.getpid() or pid not in before:
            continue
        cores = (total - before[pid][1]) / hz / seconds
        if cores >= min_cores:
            busy.append({"pid": pid, "name": name, "cores": round(cores, 2), "cmd": _cmdline(pid)[:160]})
    return sorted(busy, key=lambda p: -p["cores"])


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, load, accelerators and the versions that matter, for the JSON record."""
    import numpy
    import PIL

    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "loadavg_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "hostname": platform.node(),
    }
    global _RUN_START
    _RUN_START = (time.monotonic(), _cpu_ticks())
    competing = competing_load()
    info["competing_processes"] = competing
    info["contended"] = sum(p["cores"] for p in competing) >= 0.5
    return info


def gpus() -> list[str]:
    """GPUs TensorFlow sees (imports TensorFlow)."""
    import tensorflow as tf

    return [g.name for g in tf.config.list_physical_devices("GPU")]


def describe_machine(info: dict[str, Any]) -> str:
    line = f"machine: {info['cores']} cores, {info['cpu_model']}, {info['memory_gib']} GiB"
    if info.get("gpus"):
        line += f", GPUs {info['gpus']}"
    if info["contended"]:
        names = ", ".join(f"{p['name']} ({p['cores']} cores)" for p in info["competing_processes"])
        line += f"\n  CONTENDED: other processes were using the CPU: {names} -> figures are PRELIMINARY"
    return line


# --- the database benches' options ---------------------------------------------------------------

def add_database_args(parser: argparse.ArgumentParser, backends_help: str | None = None) -> None:
    """The options of the benches that load a database of many images into SQLite and a scratch PostgreSQL."""
    parser.add_argument("--rows", type=int, default=1_000_000, help="images (predictions come on top)")
    parser.add_argument("--backends", default="sqlite,postgresql", help=backends_help)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL URL allowed to CREATE and DROP DATABASE")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)


# --- the bundle under test -----------------------------------------------------------------------

def add_bundle_args(parser: argparse.ArgumentParser) -> None:
    from pneumoscan.config import SHIPPED_MODEL_DIR

    parser.add_argument("--bundle", type=Path, default=SHIPPED_MODEL_DIR,
                        help="model bundle to measure [default: the shipped one]")
    parser.add_argument("--stand-in", action="store_true",
                        help="use an untrained pneumonet of the same architecture (speed only; also the "
                             "fallback when --bundle does not exist)")


def stand_in_bundle(work: Path, input_size: int = 224) -> Path:
    """An untrained pneumonet bundle (cached under ``work``): the same graph and cost as the shipped model."""
    out = work / f"stand-in-pneumonet-{input_size}"
    if (out / "card.json").is_file() and (out / "model.keras").is_file():
        return out
    import keras

    from pneumoscan.models.architectures import build_model
    from pneumoscan.models.bundle import ModelCard, write_bundle

    keras.utils.set_random_seed(0)
    model = build_model("pneumonet", input_size)
    card = ModelCard(version=STAND_IN_VERSION, architecture="pneumonet", input_size=input_size, threshold=0.5,
                     extra={"note": "untrained weights, for speed benchmarks only"})
    write_bundle(out, model, card)
    return out


def resolve_bundle(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    """The bundle directory to use and a description of it for the record (stand-in or real)."""
    from pneumoscan.models.bundle import load_bundle

    path: Path = args.bundle
    if args.stand_in or not (path / "card.json").is_file():
        if not args.stand_in:
            print(f"WARNING: no bundle at {path}; using an untrained stand-in (figures are PRELIMINARY)",
                  file=sys.stderr)
        path = stand_in_bundle(work)
    bundle = load_bundle(path)
    return path, {"path": str(path), "version": bundle.version, "input_size": bundle.input_size,
                  "architecture": bundle.card.architecture, "stand_in": bundle.version == STAND_IN_VERSION}


# --- timing and statistics -----------------------------------------------------------------------

@dataclass
class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    seconds: float = 0.0
    _start: float = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self._start


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else math.nan


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


# --- child processes -----------------------------------------------------------------------------

def decode_policy() -> Any:
    """The decoding rules of a default install, with the benchmarks' fixed salt (no salt file written)."""
    from pneumoscan.config import Settings

    return Settings(patient_salt="bench-salt").decode_policy


def pneumoscan_env(data_dir: Path, bundle: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any PNEUMOSCAN_* setting, plus a fresh data folder and the bundle."""
    return process.pneumoscan_env(data_dir, bundle, **{"PNEUMOSCAN_PATIENT_SALT": "bench-salt", "COLUMNS": "200",
                                                       **extra})


@dataclass
class ChildRun:
    """A finished child process: exit code, wall time, peak RSS (from the kernel) and RSS samples."""

    returncode: int
    seconds: float
    max_rss_mib: float
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    output: str = ""


def _tree_rss_mib(pid: int) -> float:
    """Current RSS of ``pid`` and its descendants, in MiB."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, StopIteration):
            continue
    return total / 1024


def run_child(argv: Sequence[str], env: dict[str, str], *, sample_every: float = 0.0,
              log_path: Path | None = None, timeout: float | None = None) -> ChildRun:
    """Run ``argv`` to completion; peak RSS comes from wait4's rusage (the kernel's high-water mark).

    Output goes to ``log_path`` (or a temporary file) and comes back in ``output``. With
    ``sample_every`` the RSS of the process tree is also sampled from /proc while it runs.
    """
    with tempfile.TemporaryDirectory() as scratch:
        log = log_path or Path(scratch) / "output.log"
        with log.open("wb") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        samples: list[tuple[float, float]] = []
        deadline = None if timeout is None else start + timeout
        next_sample = start
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now_ = time.perf_counter()
            if sample_every and now_ >= next_sample:
                samples.append((round(now_ - start, 2), round(_tree_rss_mib(proc.pid), 1)))
                next_sample = now_ + sample_every
            if deadline is not None and now_ > deadline:
                proc.kill()
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        output = log.read_text(errors="replace")
    # ru_maxrss is in KiB on Linux
    return ChildRun(proc.returncode, seconds, usage.ru_maxrss / 1024, samples, output)


def self_max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- output --------------------------------------------------------------------------------------

def add_output_arg(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out FILE``: where the record goes; by default bench/results/NAME.json, the current figures."""
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json",
                        help=f"write the record here [default: bench/results/{name}.json, the current figures]")


def write_result(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``payload`` (with a timestamp and the command line) to ``out`` (default bench/results/NAME.json).

    bench/results holds one file per benchmark, its latest figures; older runs live in git's history.
    Prints why the run is preliminary, if ``payload["preliminary"]`` says so, and where it wrote.
    """
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "argv": sys.argv, **payload}
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    if payload.get("preliminary"):
        print(f"PRELIMINARY: {'; '.join(payload['preliminary'])}")
    print(f"wrote {path}")
    return path


def preliminary(info: dict[str, Any], bundle: dict[str, Any] | None = None) -> list[str]:
    """Reasons the figures of this run are preliminary (empty when it was a clean run of the real model).

    Records in ``info`` the average CPU that other processes used over the whole run.
    """
    during = competing_load_during_run()
    info["competing_processes_during_run"] = during
    info["contended"] = info.get("contended") or sum(p["cores"] for p in during) >= 0.5
    reasons = []
    if bundle is not None and bundle.get("stand_in"):
        reasons.append("untrained stand-in bundle")
    if info["contended"]:
        reasons.append("other processes competed for the CPU")
    return reasons


@dataclass(frozen=True)
class ScratchPostgres:
    """A throw-away PostgreSQL database: its libpq URL (psycopg) and its SQLAlchemy URL (pneumoscan)."""

    name: str
    pg_url: str
    db_url: str


@contextmanager
def scratch_postgres(pg_admin: str) -> Iterator[ScratchPostgres]:
    """Create a uniquely named database through ``pg_admin`` (a URL allowed to create databases), drop it after."""
    import psycopg

    name = f"pneumoscan_bench_{uuid.uuid4().hex[:10]}"
    base = pg_admin.rsplit("/", 1)[0]
    with psycopg.connect(pg_admin, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ScratchPostgres(name, f"{base}/{name}", f"postgresql+psycopg://{base.split('://', 1)[1]}/{name}")
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _write_path() -> tuple[Any, Any, Any]:
    """Result, save_results and settled_hashes from where the measured tree keeps them.

    bench.compare_commits runs this harness on older commits too, which kept all three in db/queries.py.
    """
    try:
        from pneumoscan.db.queries import Result, save_results, settled_hashes  # type: ignore[attr-defined]
    except ImportError:
        from pneumoscan.db.writes import save_results, settled_hashes
        from pneumoscan.domain import Result
    return Result, save_results, settled_hashes


def pipeline_db_cost(url: str, batch_size: int, batches: int = 30) -> dict[str, Any]:
    """ms per batch of the pipeline's database work alone, on a fresh database at ``url``.

    What classify_paths does per batch: settled_hashes (one read), then save_results of
    ``batch_size`` new done results in one transaction.
    """
    import hashlib

    from pneumoscan.db import open_database
    from pneumoscan.domain import Label, Outcome

    Result, save_results, settled_hashes = _write_path()
    sessions = open_database(url)
    times = []
    try:
        for b in range(batches + 1):
            results = [Result(f"/inbox/{b:04d}-{i:03d}.jpeg", Outcome.DONE,
                              sha256=hashlib.sha256(f"{url}-{b}-{i}".encode()).hexdigest(), kind="jpeg",
                              byte_size=500_000, probability=0.3, label=Label.NORMAL, threshold=0.5,
                              model_version="bench") for i in range(batch_size)]
            start = time.perf_counter()
            with sessions() as session:
                settled_hashes(session, [r.sha256 for r in results if r.sha256], "bench")
            with sessions.begin() as session:
                save_results(session, results)
            if b:  # the first batch opens the connection
                times.append(time.perf_counter() - start)
    finally:
        sessions.dispose()
    per_batch = median(times)
    return {"batch_size": batch_size, "batches": batches, "ms_per_batch": per_batch * 1000,
            "ms_per_image": per_batch * 1000 / batch_size, "rows_per_s_one_connection": batch_size / per_batch}


def now() -> float:
    """Wall-clock seconds (for comparing with timestamps written by another process)."""
    return time.time()


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy (tests' helper, shared); fails after ``timeout`` seconds."""
    return process.wait_for(predicate, timeout, interval, what)
