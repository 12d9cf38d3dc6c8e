"""CPU inference speed of the shipped model against MobileNetV2 at 224x224, batch 32, side by side.

python -m bench.model_speed [--bundle DIR] [--repeats 20]

Both models run as compiled tf.functions on the same random batch, interleaved round by round so
that machine noise hits both alike. Reports the median ms per image and the speed ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from pneumoscan.config import SHIPPED_MODEL_DIR
from pneumoscan.models.bundle import MODEL_FILE, configure_devices, load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=SHIPPED_MODEL_DIR)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    configure_devices()
    import keras
    import tensorflow as tf

    import pneumoscan.models.layers  # noqa: F401

    bundle = load_bundle(args.bundle)
    ours = keras.models.load_model(bundle.path / MODEL_FILE, compile=False)
    reference = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1,
                                               classifier_activation="sigmoid")
    size = bundle.input_size
    batches = {
        "shipped": (tf.function(lambda x: ours(x, training=False)),
                    np.random.rand(args.batch, size, size, 1).astype(np.float32)),
        "mobilenetv2": (tf.function(lambda x: reference(x, training=False)),
                        np.random.rand(args.batch, 224, 224, 3).astype(np.float32)),
    }
    times: dict[str, list[float]] = {name: [] for name in batches}
    for fn, x in batches.values():
        fn(x).numpy()  # trace and warm up
    for _ in range(args.repeats):
        for name, (fn, x) in batches.items():
            start = time.perf_counter()
            fn(x).numpy()
            times[name].append((time.perf_counter() - start) / args.batch * 1000)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {os.cpu_count()} cores, {cpu}; TensorFlow {tf.__version__}")
    print(f"batch {args.batch}, median of {args.repeats} rounds")
    for name in batches:
        print(f"{name:<12} {statistics.median(times[name]):7.2f} ms/image")
    ratio = statistics.median(times["mobilenetv2"]) / statistics.median(times["shipped"])
    print(f"shipped model is {ratio:.2f}x the speed of MobileNetV2 "
          f"({bundle.version}, {(bundle.path / MODEL_FILE).stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
