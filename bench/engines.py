"""Inference engines side by side: ms/image per engine and precision against TensorFlow in the same run,
and the time to a first prediction in a fresh process (a worker's start-up) with and without the cache.

python -m bench.engines [--data ../shared/datasets/chest_xray_224] [--rounds 15] [--batch 32]
                        [--threads 0,1,2] [--streams 0,1] [--startup-runs 3] [--check fp32,bf16]

Speed: one batch of real train-split radiographs (decoded as the pipeline decodes), every engine run on
it round by round, interleaved, so that the load of a shared machine hits all alike; the median per
engine and its ratio to TensorFlow's median. bf16 is timed where the CPU has BF16 (whether or not its
precision check passed: this is speed, not permission), and int8 where `pneumoscan model check --precision int8`
left a quantized model in the cache. Start-up: `python -c` that loads the bundle
and predicts one image, timed from the interpreter's start, for TensorFlow, OpenVINO with an empty cache
(conversion included) and OpenVINO with the cache filled (no TensorFlow import). Agreement (--check): the
precision check of `pneumoscan model check` (models.precision.run_check) on every validation image of the
bundle's own patient-wise split of DATA/train (never the test split), against fp32 TensorFlow.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from pneumoscan.config import SHIPPED_MODEL_DIR
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.dataset import list_split, load_images
from pneumoscan.models.engine import (
    EngineConfig,
    OpenVINOEngine,
    cpu_has_bf16,
    int8_dir,
    ir_dir,
    open_engine,
    openvino_version,
)

DEFAULT_DATA = Path(__file__).parents[2] / "shared" / "datasets" / "chest_xray_224"

_FIRST = """
import sys, time
t0 = float(sys.argv[1])
import numpy as np
from pathlib import Path
from pneumoscan.models.bundle import load_bundle
from pneumoscan.models.engine import EngineConfig
b = load_bundle(Path(sys.argv[2]), runtime=EngineConfig(sys.argv[3], "fp32", Path(sys.argv[4])))
b.predict(np.zeros((1, b.input_size, b.input_size), np.float32))
print(time.time() - t0, "tensorflow" in sys.modules)
"""


def first_prediction(bundle: Path, engine: str, cache: Path) -> tuple[float, bool]:
    done = subprocess.run([sys.executable, "-c", _FIRST, repr(time.time()), str(bundle), engine, str(cache)],
                          capture_output=True, text=True, check=True)
    seconds, tf = done.stdout.split()
    return float(seconds), tf == "True"


def startup(bundle: Path, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _ in range(runs):  # interleaved too
        with tempfile.TemporaryDirectory() as empty:
            cases = {"tensorflow": ("tensorflow", Path(empty)), "openvino_convert": ("openvino", Path(empty))}
            for name, (engine, cache) in cases.items():
                out.setdefault(name, []).append(first_prediction(bundle, engine, cache))
            out.setdefault("openvino_cached", []).append(first_prediction(bundle, "openvino", Path(empty)))
    return {name: {"median_s": statistics.median(s for s, _ in v), "runs_s": [s for s, _ in v],
                   "imports_tensorflow": any(tf for _, tf in v)} for name, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--bundle", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", default="0", help="OpenVINO inference threads to time (0: its default)")
    parser.add_argument("--streams", default="0,1",
                        help="OpenVINO streams to time (0: its choice, one per core; 1: one request, every thread)")
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--check", default="", help="precisions to check on the validation split (fp32,bf16)")
    parser.add_argument("--cache", type=Path, default=common.DEFAULT_WORK / "model-cache")
    common.add_output_arg(parser, "engines")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    examples = list_split(args.data, "train")[:: max(1, len(list_split(args.data, "train")) // args.batch)]
    batch = load_images(examples[: args.batch], bundle.input_size, common.decode_policy(), exact=True)[..., None]
    engines: dict[str, Any] = {"tensorflow": open_engine(bundle.model_sha256, bundle.input_size,
                                                         EngineConfig("tensorflow"), lambda: bundle.model)}
    open_engine(bundle.model_sha256, bundle.input_size, EngineConfig("openvino", "fp32", args.cache),
                lambda: bundle.model)  # fills the cache
    xml = ir_dir(args.cache, bundle.model_sha256) / "model.xml"
    precisions = ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]
    int8_xml = int8_dir(args.cache, bundle.model_sha256) / "model.xml"  # quantized by `model check --precision int8`
    if int8_xml.is_file():  # timed whether or not it passed its check: speed, not permission
        engines["openvino int8"] = OpenVINOEngine(int8_xml, "int8")
    for threads in (int(t) for t in args.threads.split(",")):
        for streams in (int(t) for t in args.streams.split(",")):
            for precision in precisions:
                engines[f"openvino {precision}" + (f" {threads} threads" if threads else "")
                        + (f" {streams} stream{'s' if streams > 1 else ''}" if streams else "")] = \
                    OpenVINOEngine(xml, precision, threads, streams)
    outputs = {name: np.asarray(engine(batch)) for name, engine in engines.items()}  # warm up
    times: dict[str, list[float]] = {name: [] for name in engines}
    cpu: dict[str, list[float]] = {name: [] for name in engines}  # CPU time of every thread of this process
    for _ in range(args.rounds):
        for name, engine in engines.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            engine(batch)
            times[name].append((time.perf_counter() - start) / len(batch) * 1000)
            cpu[name].append((time.process_time() - start_cpu) / len(batch) * 1000)
    tf_ms = statistics.median(times["tensorflow"])
    speed = {name: {"ms_per_image": statistics.median(t), "vs_tensorflow": tf_ms / statistics.median(t),
                    "cpu_ms_per_image": statistics.median(cpu[name]),
                    "max_abs_dp_raw_vs_tensorflow": float(np.abs(outputs[name] - outputs["tensorflow"]).max())}
             for name, t in times.items()}
    info = common.machine()
    print(common.describe_machine(info))
    print(f"OpenVINO {openvino_version()}, batch {len(batch)} real train images, median of {args.rounds} "
          "interleaved rounds")
    for name, s in speed.items():
        print(f"  {name:<36} {s['ms_per_image']:6.2f} ms/image  {s['vs_tensorflow']:5.2f}x TensorFlow  "
              f"CPU {s['cpu_ms_per_image']:6.2f} ms/image  "
              f"max |dp| {s['max_abs_dp_raw_vs_tensorflow']:.1e}")
    starts = startup(args.bundle, args.startup_runs) if args.startup_runs else {}
    for name, s in starts.items():
        print(f"  first prediction in a fresh process, {name:<17} {s['median_s']:5.1f} s "
              f"(imports TensorFlow: {s['imports_tensorflow']})")
    checks = {}
    for precision in filter(None, args.check.split(",")):
        from pneumoscan.models.precision import run_check

        checks[precision] = run_check(bundle, args.data, precision, EngineConfig("openvino", precision, args.cache),
                                      common.decode_policy())
        c = checks[precision]
        print(f"  check {precision}: {c['images']} validation images, label agreement {c['label_agreement']:.2%} "
              f"({c['labels_flipped']} flipped), mean |dp| {c['mean_abs_dp']:.2g}, p99 {c['p99_abs_dp']:.2g}, "
              f"max {c['max_abs_dp']:.2g}: {'passed' if c['passed'] else 'FAILED'}")
    common.write_result("engines", {"machine": info, "cpu": common.cpu_model(), "openvino": openvino_version(),
                                    "batch": len(batch), "rounds": args.rounds, "speed": speed,
                                    "first_prediction": starts, "checks": checks}, args.out)


if __name__ == "__main__":
    main()
