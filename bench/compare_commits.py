"""The throughput and latency benches on two source trees, side by side on one machine, rounds interleaved.

python -m bench.compare_commits [--base b44595b] [--rounds 2] [--current-src DIR] [--bundle DIR | --stand-in]

The baseline is a git worktree of --base (default b44595b, the commit before issue 26) at --base-tree
(default /tmp/pneumoscan-base; made with `git worktree add` when missing, kept for the next run). The
current side is this checkout's src/ (its working tree, committed or not) unless --current-src says
otherwise. Both sides run this checkout's bench code in the same virtual environment, with PYTHONPATH
pointing at their own tree's src/, so the `pneumoscan` package (and the `pneumoscan scan` / `watch`
children) come from that tree; each run checks which package it imported. Both measure the same model
bundle (by default the one this checkout ships) and the same cached inputs.

Each round runs throughput on both sides, then latency on both sides; the order of the sides alternates
from round to round (base first, then current first), so that a drift in the machine's load favours
neither. The table gives, per figure, the median over the rounds of each side, the ratio current / base,
and each side's range over the rounds (the noise to judge a ratio against). Rates: higher is better;
latencies: lower is better. The defaults are small (a few minutes on 2 busy cores): they catch a
regression of the pipeline, not the figures BENCHMARKS.md reports from full-size runs.

Each run's record goes to --work/compare/; the summary to bench/results/compare_commits.json (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common

BASE = "b44595b"
SIDES = ("base", "current")


def ensure_worktree(commit: str, tree: Path) -> str:
    """A detached worktree of ``commit`` at ``tree`` (added when missing); returns the commit's full hash."""
    full = subprocess.run(["git", "-C", str(common.REPO), "rev-parse", f"{commit}^{{commit}}"], check=True,
                          capture_output=True, text=True).stdout.strip()
    if not tree.exists():
        subprocess.run(["git", "-C", str(common.REPO), "worktree", "add", "--detach", str(tree), full], check=True,
                       capture_output=True)
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    if head != full:
        raise SystemExit(f"{tree} is at {head[:10]}, not {commit}: remove it (git worktree remove {tree}) or "
                         "pass another --base-tree")
    return full


def side_env(src: Path) -> dict[str, str]:
    """This environment with ``src`` first on PYTHONPATH (before the editable install of this checkout)."""
    return {**os.environ, "PYTHONPATH": str(src)}


def check_import(src: Path) -> list[str]:
    """The folders `pneumoscan` is read from by a child of this side; fails unless ``src`` comes first.

    pneumoscan is a namespace package (src/pneumoscan has no __init__.py), so the editable install's
    path (this checkout's src/) joins the list after ``src``: a module both trees have comes from
    ``src``; only a module that ``src`` lacks could come from this checkout, and neither the older
    `pneumoscan` code nor this harness (which tries the older locations first) asks for one.
    """
    done = subprocess.run([sys.executable, "-c", "import pneumoscan; print('\\n'.join(pneumoscan.__path__))"],
                          env=side_env(src), cwd=common.REPO, capture_output=True, text=True, check=True)
    where = done.stdout.split()
    if not where or Path(where[0]).resolve() != (src / "pneumoscan").resolve():
        raise SystemExit(f"PYTHONPATH={src} imports pneumoscan from {where}")
    return where


def run_bench(module: str, options: list[str], src: Path, out: Path, timeout: float) -> dict[str, Any]:
    """``python -m bench.MODULE OPTIONS --out OUT`` with ``src`` on PYTHONPATH; its record."""
    log = out.with_suffix(".log")
    argv = [sys.executable, "-m", f"bench.{module}", *options, "--out", str(out)]
    with log.open("wb") as fh:
        done = subprocess.run(argv, env=side_env(src), cwd=common.REPO, stdin=subprocess.DEVNULL, stdout=fh,
                              stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{log.read_text()[-3000:]}")
    record: dict[str, Any] = json.loads(out.read_text())
    return record


def throughput_figures(record: dict[str, Any]) -> dict[str, float]:
    figures = {"(d) database work per batch, ms": record["db_cost_sqlite"]["ms_per_batch"]}
    for k in record["results"]:
        kind = k["kind"]
        figures[f"{kind}: e2e steady, images/s"] = k["e2e"]["images_per_s"]
        figures[f"{kind}: e2e wall incl. start-up, images/s"] = k["e2e"]["wall_images_per_s"]
        figures[f"{kind}: (a) model alone, images/s"] = k["a_ceiling"]["images_per_s"]
        figures[f"{kind}: (c) decode alone, images/s"] = k["c_decode"]["images_per_s"]
        figures[f"{kind}: e2e / limit"] = k["e2e_over_limit"]
        if k["e2e_over_seed"] is not None:
            figures[f"{kind}: e2e / (b) one at a time"] = k["e2e_over_seed"]
    return figures


def latency_figures(record: dict[str, Any]) -> dict[str, float]:
    figures = {}
    for m in record["results"]:
        figures[f"latency {m['mode']}: p50, s"] = m["p50_s"]
        figures[f"latency {m['mode']}: p95, s"] = m["p95_s"]
    return figures


LOWER_IS_BETTER = (", s", ", ms")


def summarize(runs: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Per figure: each side's median and range over the rounds, and current / base of the medians."""
    rows = []
    for name in runs["base"][0]:
        values = {side: [r[name] for r in runs[side] if name in r] for side in SIDES}
        base, current = common.median(values["base"]), common.median(values["current"])
        rows.append({"figure": name, "base": base, "current": current, "ratio": common.ratio(current, base),
                     "base_range": [min(values["base"]), max(values["base"])],
                     "current_range": [min(values["current"]), max(values["current"])],
                     "better": "lower" if name.endswith(LOWER_IS_BETTER) else "higher"})
    return rows


def table(rows: list[dict[str, Any]], rounds: int) -> str:
    lines = [f"| figure (median of {rounds} rounds each) | base | current | current / base | base range "
             "| current range |", "|---|---|---|---|---|---|"]
    for r in rows:
        digits = 1 if r["figure"].endswith(("images/s", ", ms")) else 2
        lines.append(f"| {r['figure']} ({r['better']} is better) | {r['base']:.{digits}f} | {r['current']:.{digits}f} "
                     f"| **{r['ratio']:.2f}** | {r['base_range'][0]:.{digits}f} to {r['base_range'][1]:.{digits}f} "
                     f"| {r['current_range'][0]:.{digits}f} to {r['current_range'][1]:.{digits}f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=BASE, help=f"the baseline commit [default: {BASE}]")
    parser.add_argument("--base-tree", type=Path, default=Path("/tmp/pneumoscan-base"),
                        help="its worktree, added when missing [default: /tmp/pneumoscan-base]")
    parser.add_argument("--current-src", type=Path, default=common.REPO / "src",
                        help="the current side's package source [default: this checkout's src/]")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side, alternating [default: 2]")
    parser.add_argument("--n", type=int, default=160, help="JPEG files end to end [default: 160]")
    parser.add_argument("--dicom-n", type=int, default=96, help="uncompressed DICOM files end to end [default: 96]")
    parser.add_argument("--kinds", default="jpeg,dicom")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="both benches' batch size: small, so that a small N still gives a steady state over "
                             "a dozen batches or more [default: 8]")
    parser.add_argument("--seed-n", type=int, default=0,
                        help="files for throughput's one-at-a-time reference (b) [default: 0, skipped: it runs no "
                             "pneumoscan code and costs a Keras load per kind]")
    parser.add_argument("--files", type=int, default=8, help="latency: arrivals per mode [default: 8]")
    parser.add_argument("--interval", type=float, default=0.5, help="latency: seconds between arrivals")
    parser.add_argument("--modes", default="rename",
                        help="latency: how files arrive [default: rename; rename-outside adds the quiet period]")
    parser.add_argument("--bundle", type=Path, default=common.REPO / "src" / "pneumoscan" / "models" / "default",
                        help="the model bundle both sides measure [default: the one this checkout ships]")
    parser.add_argument("--stand-in", action="store_true", help="an untrained pneumonet instead (speed only)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per bench run")
    parser.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    common.add_output_arg(parser, "compare_commits")
    args = parser.parse_args()

    started = time.monotonic()
    base_commit = ensure_worktree(args.base, args.base_tree)
    head = subprocess.run(["git", "-C", str(common.REPO), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(common.REPO), "status", "--porcelain", "--", "src"], check=True,
                                capture_output=True, text=True).stdout.strip())
    sources = {"base": args.base_tree / "src", "current": args.current_src}
    imported = {side: check_import(src) for side, src in sources.items()}  # package folders, first wins
    info = common.machine()
    print(common.describe_machine(info))
    print(f"base {args.base} ({base_commit[:10]}) from {sources['base']}; current {head[:10]}"
          f"{' + uncommitted changes in src/' if dirty else ''} from {sources['current']}", flush=True)

    bundle = ["--stand-in"] if args.stand_in else ["--bundle", str(args.bundle)]
    throughput = [*bundle, "--kinds", args.kinds, "--n", str(args.n), "--dicom-n", str(args.dicom_n),
                  "--batch-size", str(args.batch_size), "--ref-n", "24", "--seed-n", str(args.seed_n),
                  "--full-n", "0", "--ceiling-seconds", "1", "--work", str(args.work)]
    latency = [*bundle, "--files", str(args.files), "--interval", str(args.interval), "--modes", args.modes,
               "--batch-size", str(args.batch_size), "--work", str(args.work)]
    # Make the inputs (this checkout's generator, shared by both sides) before any timed run.
    subprocess.run([sys.executable, "-m", "bench.make_inputs", "--n", str(args.n), "--kinds", "jpeg",
                    "--work", str(args.work)], cwd=common.REPO, check=True)
    if "dicom" in args.kinds.split(","):
        subprocess.run([sys.executable, "-m", "bench.make_inputs", "--n", str(args.dicom_n), "--kinds", "dicom",
                        "--work", str(args.work)], cwd=common.REPO, check=True)

    folder = args.work / "compare"
    folder.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    for r in range(args.rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        figures: dict[str, dict[str, float]] = {side: {} for side in SIDES}
        for module, options, extract in (("throughput", throughput, throughput_figures),
                                         ("latency", latency, latency_figures)):
            for side in order:
                t0 = time.monotonic()
                record = run_bench(module, options, sources[side], folder / f"{side}-{r + 1}-{module}.json",
                                   args.timeout)
                figures[side].update(extract(record))
                print(f"round {r + 1}: {module:<10} {side:<7} {time.monotonic() - t0:5.0f} s", flush=True)
        for side in SIDES:
            runs[side].append(figures[side])

    rows = summarize(runs)
    payload = {"machine": info, "base": {"commit": base_commit, "src": str(sources["base"]),
                                         "imported": imported["base"]},
               "current": {"commit": head, "uncommitted_src_changes": dirty, "src": str(sources["current"]),
                           "imported": imported["current"]},
               "bundle": "stand-in" if args.stand_in else str(args.bundle),
               "bundle_version": "stand-in" if args.stand_in else
               json.loads((args.bundle / "card.json").read_text())["version"], "rounds": args.rounds,
               "throughput_options": throughput, "latency_options": latency, "rows": rows, "runs": runs,
               "minutes": round((time.monotonic() - started) / 60, 1),
               "date": datetime.now(UTC).isoformat(timespec="seconds"), "preliminary": common.preliminary(info)}
    print()
    print(table(rows, args.rounds))
    print(f"\n{payload['minutes']} min; CPU: {info['cpu_model']}, {info['cores']} cores")
    common.write_result("compare_commits", payload, args.out)


if __name__ == "__main__":
    main()
