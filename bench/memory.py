"""Peak memory of embedded `pneumoscan reclassify` on backlogs of 1,000, 5,000 and 20,000 images.

python -m bench.memory [--sizes 1000,5000,20000] [--bundle DIR | --stand-in]

For each size N: a fresh SQLite database is bulk-loaded with N images, each with a prediction from
an older model version (the nightly case: a new model was installed), pointing at N small real
JPEGs with distinct contents. Then `pneumoscan reclassify` runs in a child process and
reclassifies all N with the bundle under test. Peak RSS is the kernel's high-water mark for the
child (wait4 rusage); the RSS is also sampled every --sample seconds to show its course. The
reference is the peak at the smallest N: streaming in batches means the ratio stays near 1.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common
from bench.make_inputs import small_jpegs

OLD_VERSION = "bench-old-model"


def build_backlog(db_url: str, files: list[Path]) -> None:
    """Images (one per file, by real SHA-256) classified by OLD_VERSION, inserted in bulk."""
    from sqlalchemy import insert, select

    from pneumoscan.db import open_database
    from pneumoscan.db.schema import Image, Prediction
    from pneumoscan.domain import Label, Status

    sessions = open_database(db_url)
    then = datetime.now(UTC) - timedelta(days=1)
    images = [{"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "path": str(p), "kind": "jpeg",
               "byte_size": p.stat().st_size, "status": Status.DONE, "first_seen_at": then, "updated_at": then}
              for p in files]
    with sessions.begin() as session:
        session.execute(insert(Image), images)
        ids = [row[0] for row in session.execute(select(Image.id))]
        session.execute(insert(Prediction), [
            {"image_id": i, "model_version": OLD_VERSION, "probability": 0.5, "label": Label.PNEUMONIA,
             "threshold": 0.5, "created_at": then} for i in ids])
    sessions.dispose()


def run_size(n: int, files: list[Path], args: argparse.Namespace, bundle_path: Path, version: str) -> dict[str, Any]:
    data = args.work / "memory" / f"data-{n}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    with common.Timer() as load:
        build_backlog(f"sqlite:///{data / 'pneumoscan.db'}", files[:n])
    # One model cache for every size (as a worker keeps one per machine), filled before the first: a run
    # measures the worker, not a conversion that imports TensorFlow once.
    env = common.pneumoscan_env(data, bundle_path, PNEUMOSCAN_BATCH_SIZE=str(args.batch_size),
                                PNEUMOSCAN_MODEL_CACHE_DIR=str(args.work / "model-cache"))
    run = common.run_child([str(common.PNEUMOSCAN_EXE), "reclassify"], env, sample_every=args.sample)
    if run.returncode != 0:
        raise RuntimeError(f"reclassify failed ({run.returncode}):\n{run.output[-3000:]}")
    with sqlite3.connect(data / "pneumoscan.db") as db:
        done = db.execute("SELECT count(*) FROM predictions WHERE model_version = ?", (version,)).fetchone()[0]
    rss = [mib for _, mib in run.rss_samples]
    quarter = len(rss) // 4
    return {"n": n, "reclassified": done, "seconds": run.seconds, "images_per_s": done / run.seconds,
            "peak_rss_mib": run.max_rss_mib, "load_seconds": load.seconds,
            # the first quarter holds the start-up (TensorFlow import, model load), so compare the second with the last
            "median_rss_q2_mib": common.median(rss[quarter:2 * quarter]) if quarter else None,
            "median_rss_q4_mib": common.median(rss[3 * quarter:]) if quarter else None,
            "rss_samples": run.rss_samples[:: max(1, len(run.rss_samples) // 200)]}


def fill_model_cache(bundle_path: Path, cache: Path) -> None:
    """Convert the model for the engine `auto` picks here into the cache every size's run shares (issue 30)."""
    try:
        from pneumoscan.models.engine import openvino_ir, resolve_engine
    except ImportError:  # an older tree: TensorFlow only, nothing to convert
        return
    if resolve_engine("auto") == "openvino":
        from pneumoscan.models.bundle import load_bundle

        bundle = load_bundle(bundle_path)
        openvino_ir(bundle.model_sha256, bundle.input_size, cache, lambda: bundle.model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--batch-size", type=int, default=None, help="[default: the Settings default]")
    parser.add_argument("--sample", type=float, default=0.5, help="RSS sampling interval, seconds")
    parser.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    common.add_bundle_args(parser)
    common.add_output_arg(parser, "memory")
    args = parser.parse_args()

    from pneumoscan.config import Settings

    args.batch_size = args.batch_size or Settings(data_dir=args.work / "unused").batch_size
    sizes = sorted(int(s) for s in args.sizes.split(","))
    bundle_path, bundle = common.resolve_bundle(args, args.work)
    info = common.machine()
    print(common.describe_machine(info))
    print(f"bundle {bundle['version']}, batch {args.batch_size}; backlog classified by {OLD_VERSION}")
    files = small_jpegs(sizes[-1], args.work / "memory" / "files")
    fill_model_cache(bundle_path, args.work / "model-cache")
    results: list[dict[str, Any]] = []
    for n in sizes:
        result = run_size(n, files, args, bundle_path, bundle["version"])
        result["peak_over_smallest"] = result["peak_rss_mib"] / (results[0] if results else result)["peak_rss_mib"]
        results.append(result)
        print(f"N={n:>6}  peak RSS {result['peak_rss_mib']:7.0f} MiB  "
              f"({result['peak_over_smallest']:.2f}x N={sizes[0]})"
              f"  median RSS 2nd/last quarter {result['median_rss_q2_mib'] or 0:.0f}/"
              f"{result['median_rss_q4_mib'] or 0:.0f} MiB  {result['reclassified']} reclassified in "
              f"{result['seconds']:.0f} s ({result['images_per_s']:.1f} images/s)", flush=True)
    payload = {"machine": info, "bundle": bundle, "batch_size": args.batch_size, "results": results,
               "preliminary": common.preliminary(info, bundle)}
    common.write_result("memory", payload, args.out)


if __name__ == "__main__":
    main()
