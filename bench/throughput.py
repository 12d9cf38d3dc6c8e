"""End-to-end throughput of embedded `pneumoscan scan` (folder -> database rows), beside three references.

python -m bench.throughput [--n 2000] [--dicom-n 500] [--kinds jpeg,dicom,dicom-j2k,dicom-htj2k,dicom-jpeg]
                          [--bundle DIR | --stand-in] [--engine auto|tensorflow|openvino] [--precision fp32|bf16]

For each input kind, in one run:
  e2e  `pneumoscan scan FOLDER` in a child process with a fresh data folder (SQLite): N full-size files
       to N rows. Reported two ways: steady state (rows after the second batch over the time from the
       second to the last batch commit, read from predictions.created_at; the second batch is left
       out too because it was prepared ahead during the start-up) and wall clock including the
       process start, TensorFlow import and model load.
  (a)  ceiling: the bundle's compiled predictor alone on already-decoded tensors, same batch size.
       Measured before and after the e2e run, and averaged (likewise (c)).
  (b)  the seed notebooks' way: Pillow/pydicom load, resize, then keras `model.predict` on one image
       at a time (on a subset, --seed-n).
  (c)  decoding alone: read + pneumoscan.imaging.decode in a thread pool on all cores, no model.
  (d)  the database work alone per batch (SQLite): one of the serial parts a pipeline that does
       not overlap its stages adds on top of (a) and (c).
  full for JPEG 2000, HTJ2K and JPEG baseline DICOM, e2e again on --full-n files with
       PNEUMOSCAN_REDUCED_DECODE=false: the pipeline as it was before decoding at the model's size.
  (a_tf) TensorFlow's model alone, the reference of issue 30's targets (e2e >= 1.5x it in fp32, >= 2.5x in a
       checked bf16); (a) is the engine the e2e run uses (--engine, --precision; the pipeline's default auto).
  limit = 1/(1/a + 1/c) on a CPU-only machine (decode and inference share the cores), min(a, c) with a GPU.
  CPU limit = cores / (CPU time per image of (a) + of (c)), every thread counted: what the cores allow when
       both stages keep them busy; with it, what bounds a run whatever the other load on a shared machine.
Targets: e2e >= 0.9 x limit for JPEG and uncompressed DICOM, e2e >= 5 x (b) for every kind.
This process keeps large buffers on the heap as `pneumoscan` does (``memory.keep_large_buffers``), so
(b) and (c) decode as fast as the e2e run can.

Inputs come from bench.make_inputs (cached under --work). Files are read from the page cache:
every reference and the e2e run read the same, already cached files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.make_inputs import cached_inputs, input_set

# The kinds whose decode is reduced to the model's resolution (issue 15), also run with it off.
REDUCED_KINDS = ("dicom-j2k", "dicom-htj2k", "dicom-jpeg")


def _keep_large_buffers() -> None:
    """The allocator setting `pneumoscan` makes, from where the measured tree keeps it.

    Older commits (bench.compare_commits) kept it in imaging; they are asked first, because pneumoscan is
    a namespace package, so a module only this checkout has would be found here for an older tree too.
    """
    try:
        from pneumoscan.imaging import keep_large_buffers  # type: ignore[attr-defined]
    except ImportError:
        from pneumoscan.memory import keep_large_buffers
    keep_large_buffers()


def decode_file(path: Path, size: int) -> np.ndarray:
    from pneumoscan.imaging import decode

    return decode(path.read_bytes(), (size, size), common.decode_policy()).pixels


def decode_alone(paths: list[Path], size: int, workers: int) -> dict[str, Any]:
    """(c): read and decode every file on ``workers`` threads; images/s."""
    decode_file(paths[0], size)  # import pydicom / codecs outside the timing
    cpu = time.process_time()
    with ThreadPoolExecutor(workers) as pool, common.Timer() as t:
        for _ in pool.map(lambda p: decode_file(p, size), paths):
            pass
    return {"images": len(paths), "seconds": t.seconds, "images_per_s": len(paths) / t.seconds,
            "threads": workers, "cpu_ms_per_image": (time.process_time() - cpu) / len(paths) * 1000}


_RUNTIME: dict[str, Any] = {}  # engine, precision, cache folder of the run (main sets them)


def ceiling(bundle_path: Path, batch: np.ndarray, min_seconds: float = 5.0, min_rounds: int = 10,
            engine: str | None = None) -> dict[str, Any]:
    """(a): the bundle's engine (what the pipeline calls) on one decoded batch, repeated."""
    from pneumoscan.models.bundle import load_bundle

    try:
        from pneumoscan.models.engine import EngineConfig
    except ImportError:  # an older tree (bench.compare_commits): TensorFlow only
        bundle = load_bundle(bundle_path)
    else:
        bundle = load_bundle(bundle_path, runtime=EngineConfig(
            engine or _RUNTIME.get("engine", "tensorflow"), "fp32" if engine == "tensorflow" else
            _RUNTIME.get("precision", "fp32"), _RUNTIME.get("cache"), _RUNTIME.get("threads", 0),
            *([_RUNTIME.get("streams", 0)] if "streams" in EngineConfig.__dataclass_fields__ else [])))
    bundle.predict(batch)  # load, trace and warm up
    bundle.predict(batch)
    times: list[float] = []
    start, cpu = time.perf_counter(), time.process_time()
    while len(times) < min_rounds or time.perf_counter() - start < min_seconds:
        with common.Timer() as t:
            bundle.predict(batch)
        times.append(t.seconds)
    per_batch = common.median(times)
    return {"batch_size": len(batch), "rounds": len(times), "median_batch_s": per_batch,
            "images_per_s": len(batch) / per_batch,
            "cpu_ms_per_image": (time.process_time() - cpu) / (len(times) * len(batch)) * 1000}


def _seed_load(path: Path, size: int) -> np.ndarray:
    """How the seed notebooks loaded an image: full decode, no draft, no triage."""
    from PIL import Image

    if path.suffix == ".dcm":
        import pydicom

        values = pydicom.dcmread(path).pixel_array.astype(np.float32)
        values = (values - values.min()) / max(float(values.max() - values.min()), 1e-6)
        image = Image.fromarray(values, mode="F")
    else:
        with Image.open(path) as opened:
            image = opened.convert("L")
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.float32)
    return pixels / 255.0 if path.suffix != ".dcm" else pixels


def seed_way(bundle_path: Path, paths: list[Path], size: int) -> dict[str, Any]:
    """(b): load each image and call ``model.predict`` on it alone, as the seed notebooks did."""
    import keras

    import pneumoscan.models.layers  # noqa: F401  (custom layers)
    from pneumoscan.models.bundle import MODEL_FILE

    model = keras.models.load_model(bundle_path / MODEL_FILE, compile=False)
    model.predict(_seed_load(paths[0], size)[None, ..., None], verbose=0)  # warm-up, not timed
    with common.Timer() as t:
        for path in paths:
            model.predict(_seed_load(path, size)[None, ..., None], verbose=0)
    return {"images": len(paths), "seconds": t.seconds, "images_per_s": len(paths) / t.seconds,
            "ms_per_image": t.seconds / len(paths) * 1000}


def _timestamp(value: str) -> float:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:  # SQLite stores the UTC time without its offset
        from datetime import UTC

        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def end_to_end(folder: Path, bundle_path: Path, work: Path, batch_size: int, decode_workers: int,
               kind: str, **settings: str) -> dict[str, Any]:
    """`pneumoscan scan FOLDER` with a fresh SQLite database; rates from the batch commit times."""
    from pneumoscan.domain import Status

    data = work / "e2e-data" / kind
    shutil.rmtree(data, ignore_errors=True)
    runtime = {"PNEUMOSCAN_ENGINE": _RUNTIME["engine"], "PNEUMOSCAN_PRECISION": _RUNTIME["precision"],
               "PNEUMOSCAN_MODEL_CACHE_DIR": str(_RUNTIME["cache"]),
               "PNEUMOSCAN_ENGINE_THREADS": str(_RUNTIME["threads"]),
               "PNEUMOSCAN_ENGINE_STREAMS": str(_RUNTIME["streams"])} if _RUNTIME else {}
    env = common.pneumoscan_env(data, bundle_path, PNEUMOSCAN_BATCH_SIZE=str(batch_size),
                                PNEUMOSCAN_DECODE_WORKERS=str(decode_workers), **runtime, **settings)
    run = common.run_child([str(common.PNEUMOSCAN_EXE), "scan", str(folder)], env)
    if run.returncode != 0:
        raise RuntimeError(f"pneumoscan scan failed ({run.returncode}):\n{run.output[-3000:]}")
    with sqlite3.connect(data / "pneumoscan.db") as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall())
        batches = [(_timestamp(t), n) for t, n in db.execute(
            "SELECT created_at, count(*) FROM predictions GROUP BY created_at ORDER BY created_at")]
    done = statuses.get(Status.DONE.value, 0)
    result: dict[str, Any] = {"files": len(os.listdir(folder)), "statuses": statuses, "batches": len(batches),
                              "wall_s": run.seconds, "wall_images_per_s": done / run.seconds,
                              "max_rss_mib": run.max_rss_mib}
    # The pipeline prepares one batch ahead, so the second batch is decoded during the start-up and
    # the first batch. From the second commit on, every batch waits for its own preparation.
    steady = batches[1:]
    if len(steady) >= 2:
        span = steady[-1][0] - steady[0][0]
        rows = sum(n for _, n in steady[1:])
        result.update(steady_s=span, steady_rows=rows, images_per_s=rows / span)
        result["startup_and_first_batch_s"] = run.seconds - span
    else:
        result["images_per_s"] = result["wall_images_per_s"]
    return result


def measure_kind(kind: str, n: int, args: argparse.Namespace, bundle_path: Path, size: int,
                 on_gpu: bool) -> dict[str, Any]:
    folder = input_set(kind, n, args.work)
    paths = sorted(folder.iterdir())
    ref = paths[: min(len(paths), args.ref_n)]
    print(f"\n[{kind}] {n} files in {folder}", flush=True)
    batch = np.stack([decode_file(p, size) for p in paths[: args.batch_size]])[..., None]
    # (a) and (c) are measured before and after the e2e run and averaged, so that a change in the
    # machine's load during the run does not favour either side of the ratio.
    c1 = decode_alone(ref, size, args.decode_workers)
    a1 = ceiling(bundle_path, batch, args.ceiling_seconds)
    b = seed_way(bundle_path, paths[: args.seed_n], size) if args.seed_n else None
    if b:
        print(f"  (b) seed notebooks    {b['images_per_s']:8.1f} images/s  ({b['ms_per_image']:.0f} ms/image, "
              f"{b['images']} files)", flush=True)
    e2e = end_to_end(folder, bundle_path, args.work, args.batch_size, args.decode_workers, kind)
    c2 = decode_alone(ref, size, args.decode_workers)
    a2 = ceiling(bundle_path, batch, args.ceiling_seconds)
    a_tf = ceiling(bundle_path, batch, args.ceiling_seconds, engine="tensorflow") if _RUNTIME else a2
    c = {**c2, "images_per_s": (c1["images_per_s"] + c2["images_per_s"]) / 2,
         "before_after": [c1["images_per_s"], c2["images_per_s"]],
         "cpu_ms_per_image": (c1["cpu_ms_per_image"] + c2["cpu_ms_per_image"]) / 2}
    a = {**a2, "images_per_s": (a1["images_per_s"] + a2["images_per_s"]) / 2,
         "before_after": [a1["images_per_s"], a2["images_per_s"]],
         "cpu_ms_per_image": (a1.get("cpu_ms_per_image", 0) + a2.get("cpu_ms_per_image", 0)) / 2}
    # What the cores allow when decoding and inference share them and both use all of their CPU time: the
    # CPU each costs per image (every thread of this process, measured with the references) over the cores.
    cpu_limit = (os.cpu_count() or 1) * 1000 / (a["cpu_ms_per_image"] + c["cpu_ms_per_image"])
    print(f"  (c) decode alone      {c['images_per_s']:8.1f} images/s  ({c['images']} files, {c['threads']} threads; "
          f"before/after {c1['images_per_s']:.1f}/{c2['images_per_s']:.1f})", flush=True)
    print(f"  (a) model alone       {a['images_per_s']:8.1f} images/s  (batch {a['batch_size']}; "
          f"before/after {a1['images_per_s']:.1f}/{a2['images_per_s']:.1f}; {args.engine} {args.precision})",
          flush=True)
    print(f"  (a_tf) TensorFlow     {a_tf['images_per_s']:8.1f} images/s  -> e2e/(a_tf) "
          f"{e2e['images_per_s'] / a_tf['images_per_s']:.2f}", flush=True)
    limit = min(a["images_per_s"], c["images_per_s"]) if on_gpu else \
        1 / (1 / a["images_per_s"] + 1 / c["images_per_s"])
    full = None
    if kind in REDUCED_KINDS and args.full_n:  # the same pipeline decoding at full size, as before issue 15
        full = end_to_end(input_set(kind, args.full_n, args.work), bundle_path, args.work, args.batch_size,
                          args.decode_workers, f"{kind}-full", PNEUMOSCAN_REDUCED_DECODE="false")
        print(f"  e2e full-size decode  {full['images_per_s']:8.1f} images/s  steady state ({args.full_n} files)",
              flush=True)
    out = {"kind": kind, "n": n, "e2e": e2e, "e2e_full_decode": full, "a_ceiling": a, "b_seed": b, "c_decode": c,
           "a_tensorflow": a_tf, "e2e_over_tensorflow_model": e2e["images_per_s"] / a_tf["images_per_s"],
           "limit_images_per_s": limit, "limit_rule": "min(a, c)" if on_gpu else "1/(1/a + 1/c)",
           "e2e_over_limit": e2e["images_per_s"] / limit,
           "e2e_over_seed": e2e["images_per_s"] / b["images_per_s"] if b else None,
           "wall_e2e_over_limit": e2e["wall_images_per_s"] / limit,
           "e2e_over_full_decode": e2e["images_per_s"] / full["images_per_s"] if full else None,
           "cpu_limit_images_per_s": cpu_limit, "e2e_over_cpu_limit": e2e["images_per_s"] / cpu_limit,
           "cpu_limit_over_tensorflow_model": cpu_limit / a_tf["images_per_s"]}
    print(f"  e2e scan              {e2e['images_per_s']:8.1f} images/s  steady state; "
          f"{e2e['wall_images_per_s']:.1f} images/s over the whole {e2e['wall_s']:.1f} s run, of which "
          f"{e2e.get('startup_and_first_batch_s', 0):.1f} s start-up and first batch; {e2e['statuses']}")
    print(f"  limit {out['limit_rule']} = {limit:.1f} images/s -> e2e/limit {out['e2e_over_limit']:.2f}"
          f"{'  (target >= 0.9)' if kind in ('jpeg', 'dicom') else ''}"
          + (f"; e2e/(b) {out['e2e_over_seed']:.1f} (target >= 5)" if b else ""), flush=True)
    print(f"  CPU per image: model {a['cpu_ms_per_image']:.1f} ms (TensorFlow {a_tf.get('cpu_ms_per_image', 0):.1f}), "
          f"decode {c['cpu_ms_per_image']:.1f} ms -> the cores allow {cpu_limit:.1f} images/s "
          f"({out['cpu_limit_over_tensorflow_model']:.2f}x a_tf); e2e/that {out['e2e_over_cpu_limit']:.2f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="JPEG files end to end [default: 2000]")
    parser.add_argument("--dicom-n", type=int, default=500,
                        help="DICOM files end to end, per DICOM kind (6.8 MB each uncompressed) [default: 500]")
    parser.add_argument("--kinds", default="jpeg,dicom,dicom-j2k,dicom-htj2k,dicom-jpeg")
    parser.add_argument("--ref-n", type=int, default=200, help="files for the decode-alone reference (c)")
    parser.add_argument("--seed-n", type=int, default=100, help="files for the one-at-a-time reference (b); 0: skip it")
    parser.add_argument("--full-n", type=int, default=128,
                        help="files for e2e with PNEUMOSCAN_REDUCED_DECODE=false, per compressed DICOM kind; 0: skip")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0,
                        help="time the model alone (a) for at least this long, before and after [default: 5]")
    parser.add_argument("--batch-size", type=int, default=None, help="[default: the Settings default]")
    parser.add_argument("--decode-workers", type=int, default=None, help="[default: the Settings default]")
    parser.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    parser.add_argument("--engine", default="auto", help="PNEUMOSCAN_ENGINE of the run [default: auto]")
    parser.add_argument("--precision", default="fp32", help="PNEUMOSCAN_PRECISION of the run [default: fp32]")
    parser.add_argument("--engine-threads", type=int, default=0, help="PNEUMOSCAN_ENGINE_THREADS [default: 0]")
    parser.add_argument("--engine-streams", type=int, default=0, help="PNEUMOSCAN_ENGINE_STREAMS [default: 0]")
    common.add_bundle_args(parser)
    common.add_output_arg(parser, "throughput")
    args = parser.parse_args()

    from pneumoscan.config import Settings

    _keep_large_buffers()
    defaults = Settings(data_dir=args.work / "unused")
    args.batch_size = args.batch_size or defaults.batch_size
    args.decode_workers = args.decode_workers or defaults.decode_workers
    bundle_path, bundle = common.resolve_bundle(args, args.work)
    if "engine" in Settings.model_fields:  # this tree has engines (issue 30); the cache outlives each e2e run
        _RUNTIME.update(engine=args.engine, precision=args.precision, cache=args.work / "model-cache",
                        threads=args.engine_threads, streams=args.engine_streams)
    info = common.machine()
    info["gpus"] = common.gpus()
    print(common.describe_machine(info))
    print(f"bundle {bundle['version']} ({bundle['input_size']} px), batch {args.batch_size}, "
          f"{args.decode_workers} decode threads")
    kinds = args.kinds.split(",")
    for kind in kinds:  # make every input first, so that generation never overlaps a measurement
        cached_inputs(kind, args.n if kind == "jpeg" else args.dicom_n, args.work)
    db_dir = args.work / "db-cost"
    shutil.rmtree(db_dir, ignore_errors=True)
    db_cost = common.pipeline_db_cost(f"sqlite:///{db_dir / 'cost.db'}", args.batch_size)
    print(f"(d) database work per batch of {args.batch_size} (SQLite, settled_hashes + save_results): "
          f"{db_cost['ms_per_batch']:.1f} ms = {db_cost['ms_per_image']:.2f} ms/image")
    results = [measure_kind(kind, args.n if kind == "jpeg" else args.dicom_n, args, bundle_path,
                            bundle["input_size"], bool(info["gpus"])) for kind in kinds]
    payload = {"machine": info, "bundle": bundle, "batch_size": args.batch_size, "engine": args.engine,
               "precision": args.precision, "engine_threads": args.engine_threads,
               "engine_streams": args.engine_streams,
               "decode_workers": args.decode_workers, "db_cost_sqlite": db_cost, "results": results,
               "preliminary": common.preliminary(info, bundle)}
    common.write_result("throughput", payload, args.out)


if __name__ == "__main__":
    main()
