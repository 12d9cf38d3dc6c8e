"""Where the time of embedded `pneumoscan scan` goes: py-spy samples of its main thread, by pipeline stage.

python bench/profile_scan.py [--kind jpeg] [--n 200] [--bundle DIR | --stand-in]

Needs py-spy (`pip install py-spy` into the venv; it is not a project dependency). Runs `pneumoscan
scan` on N full-size inputs under `py-spy record --idle --threads` and splits the main thread's
wall-clock samples inside pipeline._classify_batch by the source line of that function they were
on (read + hash, settled_hashes, decode, predict, save_results, ...). The model's one-time load
and its first trace are counted apart. A stage that waits on the decode pool shows up as the line that maps it: the
stages run one after another, so the shares say what overlapping them could win.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from make_inputs import input_set

FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+):(?P<line>\d+)\)$")


def stage_of(frames: list[str], pipeline_file: Path) -> str | None:
    """The labelled stage of one main-thread stack, or None when it is outside _classify_batch."""
    for i, frame in enumerate(frames):
        match = FRAME.match(frame)
        if match and match["func"] == "_classify_batch" and match["file"].endswith("pipeline.py"):
            rest = frames[i:]
            if any(f.startswith("ModelBundle._load (") for f in rest):
                return "(model load, once)"
            if any("func_graph" in f or "tracing_compilation" in f for f in rest):
                return "(tracing the model function, once)"
            source = linecache.getline(str(pipeline_file), int(match["line"])).strip()
            return f"pipeline.py:{match['line']}  {source[:80]}"
    return None


def summarize(raw: Path, pipeline_file: Path) -> dict[str, Any]:
    stages: Counter[str] = Counter()
    total = outside = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack.startswith("thread") or "MainThread" not in stack.split(";", 1)[0]:
            continue
        count = int(count_text)
        total += count
        stage = stage_of(stack.split(";")[1:], pipeline_file)
        if stage is None:
            outside += count
        else:
            stages[stage] += count
    return {"main_thread_samples": total, "outside_batches": outside, "stages": dict(stages.most_common())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="jpeg")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    common.add_bundle_args(parser)
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
    in_batches = sum(n for s, n in summary["stages"].items() if not s.startswith("("))
    print(f"{args.n} {args.kind} files, bundle {bundle['version']}; main thread inside _classify_batch, "
          f"excluding the one-time model load and trace ({in_batches} samples at {args.rate}/s):")
    rows = []
    for stage, count in summary["stages"].items():
        share = count / in_batches if not stage.startswith("(") else None
        rows.append({"stage": stage, "samples": count, "share": share})
        print(f"  {'' if share is None else f'{share:6.1%}':>6}  {count / args.rate:6.1f} s  {stage}")
    payload = {"machine": info, "bundle": bundle, "kind": args.kind, "n": args.n, "rate": args.rate,
               "raw_profile": str(raw), **summary, "rows": rows, "preliminary": common.preliminary(info, bundle)}
    common.write_result(f"profile-{args.kind}", payload)
    print(f"(raw py-spy stacks: {raw})")


if __name__ == "__main__":
    main()
