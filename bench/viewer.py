"""The viewer in real headless Chromium: first paint of a 2000x1700 DICOM cold, full resolution, window/level.

python -m bench.viewer [--rounds 15] [--wl-changes 20] [--base COMMIT] [--base-tree DIR] [--current-src DIR]

A 2000x1700 12-bit frontal DICOM with two windows of its own (as tests/browser/test_viewer.py makes) is
scanned by `pneumoscan scan` (the shipped model) into a fresh data folder with one reviewer, and
`pneumoscan serve` serves it on a local port; Debian's Chromium (/usr/bin/chromium, driven by its
chromedriver at 1400x900, tests/browser/chromium.py) opens the viewer page /images/ID again and again:

- first paint, cold: the render cache emptied before the page is opened, so every picture is made from the
  DICOM again; the time from the start of navigation to the picture drawn into the canvas (the page's own
  mark, stage.dataset.firstPaintMs, in performance.now() time). Target: under 1 s. Each round starts a
  fresh `pneumoscan serve` and signs the reader in: its first opening (render cache empty too) is reported
  apart, as it also pays for the server's first use of the imaging code; then a second cold opening.
- full resolution, cold: from navigation to the full-resolution values (values.bin) windowed and drawn
  (stage.dataset.fullPaintMs); behind the first paint, then the values a window change works on.
- the same two, cached (the next opening, render cache full).
- window/level: in the page, a change of window preset (the same code path as a right-drag), from just
  before the input event is dispatched to the end of the next frame (requestAnimationFrame, then a task
  after it: the canvas redrawn and painted), --wl-changes changes a round. Target: under 100 ms.

Each figure is the median over --rounds rounds, with its range. With --base COMMIT, a second server runs
the source tree of COMMIT (a git worktree, as bench/compare_commits.py makes; this checkout's venv with
PYTHONPATH at the tree's src/; --current-src does the same for the current side) on a copy of the same data
folder, and the rounds alternate between the two sides (base first, then current first), so that the table's
current / base ratio comes from one run on one machine. The record goes to bench/results/viewer.json (--out).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench import common, compare_commits
from tests.browser import chromium

FIRST_PAINT_MS, WINDOW_MS = 1000.0, 100.0
PASSWORD = "bench-password-123"
READER = "bench"
STATE = "const s = document.getElementById('stage'); return s && {first: Number(s.dataset.firstPaintMs)," \
        " full: Number(s.dataset.fullPaintMs), done: s.dataset.full === 'true'};"
BREAKDOWN = "const nav = performance.getEntriesByType('navigation')[0];" \
            "const r = (part) => performance.getEntriesByType('resource').find((e) => e.name.includes(part));" \
            "const span = (e) => e ? {start: e.startTime, end: e.responseEnd} : null;" \
            "return {page: nav.responseEnd, image: span(r('preview.png') || r('image.png'))," \
            " values: span(r('values.bin'))};"
# In the page: change the window preset --wl-changes times; per change the handler's time, and the time to the
# end of the next frame (a task queued from requestAnimationFrame runs after that frame's paint).
WINDOW_LEVEL = """
const [changes, done] = arguments;
const select = document.getElementById('preset');
const stage = document.getElementById('stage');
const times = [];
const step = () => {
  if (times.length >= changes) { done(times); return; }
  select.value = String((Number(select.value) + 1) % select.options.length);
  const t0 = performance.now();
  select.dispatchEvent(new Event('change'));
  const handled = performance.now() - t0;
  requestAnimationFrame(() => setTimeout(() => {
    times.push({handled, painted: performance.now() - t0, app: Number(stage.dataset.windowMs)});
    step();
  }, 0));
};
step();
"""


def make_dicom(folder: Path) -> Path:
    """The 2000x1700 12-bit frontal DICOM of tests/browser/test_viewer.py, with its windows FULL and SOFT."""
    import numpy as np
    from PIL import Image

    from tests.support import dicoms, xrays

    source = xrays.PNEUMONIA_IMAGES[0]
    values = np.asarray(Image.fromarray(xrays.twelve_bit(source).astype(np.float32)).resize((2000, 1700)))
    stored = np.clip(values, 0, 4095).astype(np.uint16)
    return dicoms.write_dicom(source, folder / "frontal.dcm", stored=stored, ViewPosition="PA",
                              WindowCenter=[2048, 1200], WindowWidth=[4096, 1000],
                              WindowCenterWidthExplanation=["FULL", "SOFT"])


def prepare(work: Path, env: dict[str, str]) -> int:
    """Scan the DICOM into env's data folder and add the reader; the image's id."""
    import json
    import subprocess

    def cli(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run([str(common.PNEUMOSCAN_EXE), *args], env=env, input=stdin, capture_output=True,
                              text=True, timeout=600, cwd=common.REPO)
        if done.returncode != 0:
            raise SystemExit(f"pneumoscan {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    inbox = work / "inbox"
    inbox.mkdir(parents=True)
    make_dicom(inbox)
    cli("scan", str(inbox))
    cli("users", "add", READER, "--role", "reviewer", "--password-stdin", stdin=PASSWORD + "\n")
    (row,) = json.loads(cli("results", "--format", "json", "--limit", "0"))
    return int(row["id"])


def open_viewer(driver: Any, url: str, image_id: int) -> dict[str, Any]:
    """Open the viewer and wait for full resolution; its first paint, full-resolution paint and a breakdown."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/images/{image_id}")
    state = WebDriverWait(driver, 60, poll_frequency=0.05).until(
        lambda d: (s := d.execute_script(STATE)) and s["done"] and s["full"] and s)
    return {"first_paint_ms": state["first"], "full_resolution_ms": state["full"],
            "breakdown": driver.execute_script(BREAKDOWN)}


def one_round(driver: Any, url: str, data_dir: Path, image_id: int, changes: int) -> dict[str, Any]:
    """On a server just started (the reader signed in): the first opening, a cold one, a cached one, window/level."""
    driver.delete_all_cookies()
    chromium.sign_in(driver, url, READER, PASSWORD)
    shutil.rmtree(data_dir / "cache" / "render", ignore_errors=True)
    fresh = open_viewer(driver, url, image_id)
    shutil.rmtree(data_dir / "cache" / "render", ignore_errors=True)
    cold = open_viewer(driver, url, image_id)
    cached = open_viewer(driver, url, image_id)
    window = driver.execute_async_script(WINDOW_LEVEL, changes)
    return {"fresh_server": fresh, "cold": cold, "cached": cached, "window_level": window,
            "figures": {"first paint, first opening after the server started, ms": fresh["first_paint_ms"],
                        "full resolution, first opening after the server started, ms": fresh["full_resolution_ms"],
                        "first paint, cold, ms": cold["first_paint_ms"],
                        "full resolution, cold, ms": cold["full_resolution_ms"],
                        "first paint, cached, ms": cached["first_paint_ms"],
                        "full resolution, cached, ms": cached["full_resolution_ms"],
                        "window/level to next frame (median of a round), ms":
                            common.median(w["painted"] for w in window),
                        "window/level to next frame (worst of a round), ms": max(w["painted"] for w in window),
                        "window/level handler (median of a round), ms": common.median(w["handled"] for w in window)}}


def summary(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for name in rounds[0]["figures"]:
        values = [r["figures"][name] for r in rounds]
        out[name] = {"median": common.median(values), "min": min(values), "max": max(values)}
    return out


def table(sides: dict[str, dict[str, dict[str, float]]]) -> str:
    names = list(next(iter(sides.values())))
    head = "| figure | " + " | ".join(f"{s} median (range)" for s in sides) + (" | current / base |"
                                                                                  if len(sides) == 2 else " |")
    lines = [head, "|---" * (len(sides) + 1 + (len(sides) == 2)) + "|"]
    for name in names:
        cells = [f"{sides[s][name]['median']:.1f} ({sides[s][name]['min']:.1f} to {sides[s][name]['max']:.1f})"
                 for s in sides]
        ratio = ""
        if len(sides) == 2:
            ratio = f" {common.ratio(sides['current'][name]['median'], sides['base'][name]['median']):.2f} |"
        lines.append(f"| {name} | " + " | ".join(cells) + " |" + ratio)
    return "\n".join(lines)


def main() -> None:
    from pneumoscan.config import SHIPPED_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--wl-changes", type=int, default=20, help="window changes a round")
    parser.add_argument("--base", help="also measure this commit's viewer, side by side (a git worktree)")
    parser.add_argument("--base-tree", type=Path, default=Path(tempfile.gettempdir()) / "pneumoscan-viewer-base")
    parser.add_argument("--current-src", type=Path, help="the current side's src/ [default: this checkout's]")
    parser.add_argument("--work", type=Path, default=common.DEFAULT_WORK / "viewer")
    common.add_output_arg(parser, "viewer")
    args = parser.parse_args()
    if not chromium.available():
        raise SystemExit(f"needs {chromium.CHROMIUM} and {chromium.CHROMEDRIVER}")
    info = common.machine()
    print(common.describe_machine(info), flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    sides: dict[str, Path | None] = {"current": args.current_src}
    payload: dict[str, Any] = {"machine": info, "rounds": args.rounds, "wl_changes": args.wl_changes,
                               "targets_ms": {"first_paint_cold": FIRST_PAINT_MS, "window_level": WINDOW_MS}}
    if args.base:
        payload["base_commit"] = compare_commits.ensure_worktree(args.base, args.base_tree)
        compare_commits.check_import(args.base_tree / "src")
        sides = {"base": args.base_tree / "src", "current": args.current_src}
    if args.current_src:
        compare_commits.check_import(args.current_src)
    envs = {side: common.pneumoscan_env(args.work / side / "data", SHIPPED_MODEL_DIR,
                                        **({"PYTHONPATH": str(src)} if src else {}))
            for side, src in sides.items()}
    first = next(iter(sides))
    print(f"scanning the DICOM ({first} side)", flush=True)
    image_id = prepare(args.work / first, envs[first])
    for side in sides:
        if side != first:
            shutil.copytree(args.work / first / "data", args.work / side / "data",
                            ignore=shutil.ignore_patterns("cache"))
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with chromium.chromium(args.work / "profile", args.work / "chromedriver.log") as driver:
        for number in range(args.rounds):
            order = list(sides) if number % 2 == 0 else list(reversed(sides))
            for side in order:  # a fresh server each round: its first opening pays for the imaging imports
                with chromium.serving(common.PNEUMOSCAN_EXE, envs[side], chromium.free_port(),
                                      args.work / side / "serve.log") as url:
                    runs[side].append(one_round(driver, url, args.work / side / "data", image_id, args.wl_changes))
            print(f"round {number + 1}: " + "; ".join(
                f"{s} first paint {runs[s][-1]['figures']['first paint, cold, ms']:.0f} ms "
                f"({runs[s][-1]['figures']['first paint, first opening after the server started, ms']:.0f} ms "
                f"fresh), window {runs[s][-1]['figures']['window/level to next frame (median of a round), ms']:.1f} ms"
                for s in sides), flush=True)
    summaries = {side: summary(runs[side]) for side in sides}
    current = summaries["current"]
    payload.update({"summary": summaries, "rounds_detail": runs, "meets_targets": {
        "first_paint_cold": current["first paint, cold, ms"]["median"] < FIRST_PAINT_MS,
        "window_level": current["window/level to next frame (worst of a round), ms"]["median"] < WINDOW_MS}})
    payload["machine"]["competing_processes_during_run"] = common.competing_load_during_run()
    print(table(summaries))
    common.write_result("viewer", payload, args.out)


if __name__ == "__main__":
    main()
