"""Where the time of embedded `pneumoscan scan` goes: py-spy samples of its two pipeline threads, by stage.

python -m bench.profile_scan [--kind jpeg] [--n 200] [--bundle DIR | --stand-in]

Needs py-spy (`pip install py-spy` into the venv; it is not a project dependency). Runs `pneumoscan
scan` on N full-size inputs under `py-spy record --idle --threads` and splits wall-clock samples by
the pipeline line they were on:
  main     the calling thread: pipeline._finish (predict, save_results) or, in classify_paths,
           waiting for the next batch to be prepared;
  prepare  the thread that prepares batch k+1 meanwhile: pipeline._prepare (read + hash,
           settled_hashes, decode in the pool; a wait on the pool shows as the line that maps it).
The model's one-time load and its first trace are counted apart. Shares are per thread.
"""

from __future__ import annotations

import argparse
import linecache
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench import common
from bench.make_inputs import input_set

FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+):(?P<line>\d+)\)$")


STAGE_FUNCTIONS = {"main": ("_finish", "classify_paths"), "prepare": ("_prepare",)}


def stage_of(thread: str, frames: list[str], pipeline_file: Path) -> str | None:
    """The labelled stage of one stack of ``thread`` (main or prepare), or None outside the pipeline."""
    found = None
    for i, frame in enumerate(frames):  # root first: the innermost pipeline function wins
        match = FRAME.match(frame)
        if match and match["func"] in STAGE_FUNCTIONS[thread] and match["file"].endswith("pipeline.py"):
            found = i, match
    if found is None:
        return None
    i, match = found
    rest = frames[i:]
    if any(f.startswith("ModelBundle._load (") for f in rest):
        return "(model load, once)"
    if any("func_graph" in f or "tracing_compilation" in f for f in rest):
        return "(tracing the model function, once)"
    source = linecache.getline(str(pipeline_file), int(match["line"])).strip()
    return f"{thread:7} pipeline.py:{match['line']}  {source[:80]}"


def _thread(head: str) -> str | None:
    if "MainThread" in head:
        return "main"
    if "pneumoscan-prepare" in head:
        return "prepare"
    return None


def summarize(raw: Path, pipeline_file: Path) -> dict[str, Any]:
    stages: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        head, _, frames = stack.partition(";")
        thread = _thread(head) if head.startswith("thread") else None
        if thread is None:
            continue
        stage = stage_of(thread, frames.split(";"), pipeline_file)
        if stage is not None:
            stages[stage] += int(count_text)
            if not stage.startswith("("):
                totals[thread] += int(count_text)
    return {"samples_in_batches": dict(totals), "stages": dict(stages.most_common())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="jpeg")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    common.add_bundle_args(parser)
    parser.add_argument("--out", type=Path, help="write the record here [default: bench/results/profile-KIND.json]")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy not found: `.venv/bin/pip install py-spy` (not a project dependency)")
    import pneumoscan.pipeline

    bundle_path, bundle = common.resolve_bundle(args, args.work)
    info = common.machine()
    print(common.describe_machine(info))
    folder = input_set(args.kind, args.n, args.work)
    out = args.work / "profile" / args.kind
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    raw = out / "scan.raw"
    env = common.pneumoscan_env(out / "data", bundle_path)
    subprocess.run([py_spy, "record", "--idle", "--threads", "--format", "raw", "-r", str(args.rate), "-o", str(raw),
                    "--", str(common.PNEUMOSCAN_EXE), "scan", str(folder)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = summarize(raw, Path(pneumoscan.pipeline.__file__))
    totals = summary["samples_in_batches"]
    print(f"{args.n} {args.kind} files, bundle {bundle['version']}; samples at {args.rate}/s inside the pipeline, "
          f"excluding the one-time model load and trace; shares per thread:")
    rows = []
    for stage, count in summary["stages"].items():
        thread = stage.split()[0]
        share = count / totals[thread] if not stage.startswith("(") and totals.get(thread) else None
        rows.append({"stage": stage, "samples": count, "share": share})
        print(f"  {'' if share is None else f'{share:6.1%}':>6}  {count / args.rate:6.1f} s  {stage}")
    payload = {"machine": info, "bundle": bundle, "kind": args.kind, "n": args.n, "rate": args.rate,
               "raw_profile": str(raw), **summary, "rows": rows, "preliminary": common.preliminary(info, bundle)}
    common.write_result(f"profile-{args.kind}", payload, args.out)
    print(f"(raw py-spy stacks: {raw})")


if __name__ == "__main__":
    main()
