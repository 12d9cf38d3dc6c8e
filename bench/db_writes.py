"""The pipeline's database work per batch, this checkout beside an earlier commit, in one run.

python -m bench.db_writes [--reference 51a2a2b] [--batch-size 32] [--batches 60] [--rounds 3]
                          [--pg-admin postgresql://postgres@127.0.0.1:5432/test]

What classify_paths does per batch (settled_hashes, then save_results of batch-size new results in
one transaction; bench/common.py pipeline_db_cost), on a fresh SQLite file and a fresh PostgreSQL
database. The reference is the same measurement with the package source of --reference (default:
the last commit with one statement per row), checked out into a temporary git worktree and put
first on PYTHONPATH. The two alternate, --rounds times each, and the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench import common

# Run from the repository root (so that `bench` imports), with the measured tree's src/ first on PYTHONPATH.
MEASURE = """
import json, pneumoscan
from bench import common
print(json.dumps({{"module": pneumoscan.__file__, **common.pipeline_db_cost({url!r}, {batch}, {batches})}}))
"""


def measure(source: Path, url: str, batch_size: int, batches: int) -> dict[str, Any]:
    """pipeline_db_cost in a child process whose `pneumoscan` package comes from ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    code = MEASURE.format(url=url, batch=batch_size, batches=batches)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=common.REPO, capture_output=True, text=True,
                         check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if not result["module"].startswith(str(source)):
        raise RuntimeError(f"measured {result['module']}, not the package under {source}")
    return result


def measure_on(backend: str, source: Path, work: Path, args: argparse.Namespace) -> float:
    """ms per batch on a fresh database of ``backend`` (a new SQLite file or a scratch PostgreSQL database)."""
    if backend == "sqlite":
        url = f"sqlite:///{work / uuid.uuid4().hex}.db"
        return float(measure(source, url, args.batch_size, args.batches)["ms_per_batch"])
    with common.scratch_postgres(args.pg_admin) as scratch:
        return float(measure(source, scratch.db_url, args.batch_size, args.batches)["ms_per_batch"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="51a2a2b", help="commit whose save_results is the reference")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/test")
    common.add_output_arg(parser, "db_writes")
    args = parser.parse_args()

    info = common.machine()
    print(common.describe_machine(info))
    current = common.REPO / "src"
    with tempfile.TemporaryDirectory(prefix="pneumoscan-ref-") as tmp:
        worktree = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(common.REPO), "worktree", "add", "--detach", str(worktree), args.reference],
                       check=True, capture_output=True)
        try:
            rows = []
            for backend in ("sqlite", "postgresql"):
                times: dict[str, list[float]] = {"current": [], "reference": []}
                for _ in range(args.rounds):
                    for name, source in (("reference", worktree / "src"), ("current", current)):
                        times[name].append(measure_on(backend, source, Path(tmp), args))
                row = {"backend": backend, "batch_size": args.batch_size,
                       "reference_ms_per_batch": common.median(times["reference"]),
                       "current_ms_per_batch": common.median(times["current"]), "runs": times}
                row["speedup"] = common.ratio(row["reference_ms_per_batch"], row["current_ms_per_batch"])
                rows.append(row)
                print(f"{backend}: {row['reference_ms_per_batch']:.1f} ms per batch of {args.batch_size} at "
                      f"{args.reference} (one statement per row) -> {row['current_ms_per_batch']:.1f} ms now "
                      f"({row['speedup']:.1f}x)", flush=True)
        finally:
            subprocess.run(["git", "-C", str(common.REPO), "worktree", "remove", "--force", str(worktree)],
                           check=False, capture_output=True)
    payload = {"machine": info, "reference_commit": args.reference, "results": rows,
               "preliminary": common.preliminary(info)}
    common.write_result("db_writes", payload, args.out)


if __name__ == "__main__":
    main()
