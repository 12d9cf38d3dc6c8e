"""The accuracy cost and the speed of decoding DICOM at the model's resolution rather than at full size.

python -m bench.j2k_reduce [--n 100] [--noise 0,3] [--repeats 2] [--syntax dicom-j2k|dicom]
                           [--window CENTER,WIDTH] [--bundle DIR | --stand-in]

N test images of the real dataset (a fixed sample, half NORMAL and half PNEUMONIA) are upscaled
(bicubic) to 2000x1700, stored as 12-bit Digital X-Ray DICOM with a window (the whole range, or
--window, in stored values), JPEG 2000 lossless (the default) or uncompressed (--syntax dicom).
With --noise, grain of that standard deviation (in 8-bit grey levels) is added first, as
bench/make_inputs.py does, so that the files hold fine detail as real radiographs do and a smooth
upscale does not flatter the reduced decode; each level given is a separate run.

Each file is decoded to the model's input size by ``pneumoscan.imaging.decode`` twice: the
reduced way (JPEG 2000: Pillow's reader, resolution levels dropped while the picture still covers
the input; uncompressed: the sums of k x k blocks, their means windowed, ``imaging.dicom.reduced.BlockSums``) and
the full way (pydicom's full-size decode, the window, then the resize; ``DecodePolicy.reduced`` off).
Results go to bench/results/j2k_reduce.json, or native_reduce.json for --syntax dicom.
The two batches go through the model; the record has the largest and mean absolute
difference of the probabilities, the labels that flip at the card's threshold, each way's accuracy
against the folder labels, the pixel difference, and the decode time per image (one thread, the
best of --repeats, the two ways taking turns file by file).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import common, make_inputs
from pneumoscan.domain import Label

WIDTH, HEIGHT = 2000, 1700
CLASSES = (Label.NORMAL.value, Label.PNEUMONIA.value)  # the dataset's folder names, label 0 and 1


def sample(n: int) -> list[tuple[Path, int]]:
    """A fixed sample of ``n`` test images, (path, 1 for PNEUMONIA), evenly spaced in each class's sorted list.

    Half from each class, never more than a class holds (no image twice); ``n`` <= 0 takes the whole split.
    """
    picked: list[tuple[Path, int]] = []
    for label, name in enumerate(CLASSES):
        paths = sorted((common.DATASET / "test" / name).glob("*.jpeg"))
        if not paths:
            raise SystemExit(f"no images under {common.DATASET}/test/{name} (the benchmark needs the dataset)")
        count = len(paths) if n <= 0 else min(len(paths), n // 2 + (n % 2 if label == 0 else 0))
        step = len(paths) / count
        picked += [(paths[int(i * step)], label) for i in range(count)]
    return picked


REDUCED_WAY = {"dicom-j2k": "JPEG2000Levels", "dicom": "BlockSums"}  # the strategy that takes the reduced way


def big_dicom(source: Path, index: int, noise: float, syntax: str, window: tuple[float, float] | None) -> bytes:
    """``source`` upscaled to WIDTH x HEIGHT (with grain of ``noise`` grey levels), 12-bit DICOM in ``syntax``."""
    with Image.open(source) as image:
        big = np.asarray(image.convert("L").resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), np.float64)
    if noise:
        big = big + np.random.default_rng(index).normal(0.0, noise, big.shape)
    values = np.clip(np.rint(big * 4095.0 / 255.0), 0, 4095).astype(np.uint16)
    return make_inputs.dicom_of(values, index, syntax=syntax, window=window)


def decode_both(blobs: list[bytes], size: int, repeats: int, syntax: str) -> dict[str, Any]:
    """Decode every file both ways: the pixels, the best time per file, and how many took the reduced way."""
    import dataclasses

    from pneumoscan.imaging import decode
    from pneumoscan.imaging.dicom import reduced

    policy = common.decode_policy()
    ways = {"reduced": policy, "full": dataclasses.replace(policy, reduced=False)}
    counted_type = getattr(reduced, REDUCED_WAY[syntax])
    taken = [0]

    def counting(strategy: Any) -> Any:
        def counted(frame: Any, size: tuple[int, int]) -> Any:
            result = strategy(frame, size)
            taken[0] += result is not None
            return result

        return counted

    # The default strategies, in their order, with the measured one counting the files it takes.
    strategies = tuple(counting(s) if isinstance(s, counted_type) else s for s in reduced.DEFAULT)
    pixels: dict[str, list[np.ndarray]] = {"reduced": [], "full": []}
    ms: dict[str, list[float]] = {"reduced": [], "full": []}
    files_reduced = 0
    for blob in blobs:
        best = {"reduced": float("inf"), "full": float("inf")}
        for repeat in range(repeats):
            for way in ("reduced", "full"):  # taking turns: load from elsewhere hits both alike
                before = taken[0]
                started = time.perf_counter()
                image = decode(blob, (size, size), ways[way], strategies=strategies)
                best[way] = min(best[way], (time.perf_counter() - started) * 1000)
                if repeat == 0:
                    pixels[way].append(image.pixels)
                    files_reduced += way == "reduced" and taken[0] > before
        for way, value in best.items():
            ms[way].append(value)
    return {"pixels": pixels, "ms": ms, "reduced_taken": files_reduced}


def run(items: list[tuple[Path, int]], noise: float, bundle: Any, repeats: int, syntax: str,
        window: tuple[float, float] | None) -> dict[str, Any]:
    size = bundle.input_size
    started = time.perf_counter()
    blobs = [big_dicom(path, i, noise, syntax, window) for i, (path, _) in enumerate(items)]
    made_s = time.perf_counter() - started
    decoded = decode_both(blobs, size, repeats, syntax)
    reduced, full = (np.stack(decoded["pixels"][way]) for way in ("reduced", "full"))
    p_reduced, p_full = (np.asarray(bundle.predict(batch), np.float64) for batch in (reduced, full))
    truth = np.array([label for _, label in items])
    threshold = bundle.threshold
    diff = np.abs(p_reduced - p_full)
    flips = [{"file": items[i][0].name, "p_full": round(float(p_full[i]), 4),
              "p_reduced": round(float(p_reduced[i]), 4)}
             for i in np.flatnonzero((p_reduced >= threshold) != (p_full >= threshold))]
    pixel_mad = np.abs(reduced.astype(np.float64) - full).mean(axis=(1, 2))
    ms_reduced, ms_full = common.median(decoded["ms"]["reduced"]), common.median(decoded["ms"]["full"])
    return {
        "syntax": syntax,
        "window": window or "the whole range",
        "noise_grey_levels": noise,
        "n": len(items),
        "n_pneumonia": int(truth.sum()),
        "file_mb": round(sum(map(len, blobs)) / len(blobs) / 1e6, 2),
        "making_files_s": round(made_s, 1),
        "reduced_path_taken": decoded["reduced_taken"],
        "probability_abs_diff_max": float(diff.max()),
        "probability_abs_diff_mean": float(diff.mean()),
        "probability_abs_diff_p95": common.percentile(diff.tolist(), 95),
        "label_flips": len(flips),
        "flipped": flips,
        "accuracy_full": float(((p_full >= threshold) == truth).mean()),
        "accuracy_reduced": float(((p_reduced >= threshold) == truth).mean()),
        "pixel_abs_diff_mean": float(pixel_mad.mean()),
        "pixel_abs_diff_max_of_file_means": float(pixel_mad.max()),
        "decode_ms_per_image_reduced": ms_reduced,
        "decode_ms_per_image_full": ms_full,
        "decode_speedup": common.ratio(ms_full, ms_reduced),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100,
                        help="files (test images) per noise level; 0: the whole test split [default: 100]")
    parser.add_argument("--noise", default="0,3", help="grain levels to run, comma-separated [default: 0,3]")
    parser.add_argument("--repeats", type=int, default=2, help="decodes per file and way; the fastest counts")
    parser.add_argument("--syntax", choices=sorted(REDUCED_WAY), default="dicom-j2k",
                        help="JPEG 2000 lossless, or uncompressed [default: dicom-j2k]")
    parser.add_argument("--window", help="CENTER,WIDTH in stored values (12 bits) [default: the whole range]")
    parser.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    common.add_bundle_args(parser)
    parser.add_argument("--out", type=Path, help="write the record here [default: bench/results/j2k_reduce.json, "
                                                 "or native_reduce.json for --syntax dicom]")
    args = parser.parse_args()
    window = tuple(float(v) for v in args.window.split(",")) if args.window else None
    if window is not None and len(window) != 2:
        parser.error("--window takes CENTER,WIDTH")

    from pneumoscan.models.bundle import load_bundle

    info = common.machine()
    print(common.describe_machine(info))
    bundle_path, bundle_info = common.resolve_bundle(args, args.work)
    bundle = load_bundle(bundle_path)
    bundle.load()
    items = sample(args.n)
    print(f"{len(items)} test images at {WIDTH}x{HEIGHT}, {args.syntax}, window {window or 'whole range'}, "
          f"decoded to {bundle.input_size}, "
          f"model {bundle.version}, threshold {bundle.threshold}", flush=True)
    runs = []
    for noise in (float(level) for level in args.noise.split(",")):
        result = run(items, noise, bundle, args.repeats, args.syntax, window)  # type: ignore[arg-type]
        runs.append(result)
        print(f"noise {noise:g}: |dp| max {result['probability_abs_diff_max']:.4f} "
              f"mean {result['probability_abs_diff_mean']:.5f}, {result['label_flips']} label flips, "
              f"accuracy {result['accuracy_full']:.3f} full / {result['accuracy_reduced']:.3f} reduced; "
              f"decode {result['decode_ms_per_image_full']:.1f} ms full, "
              f"{result['decode_ms_per_image_reduced']:.1f} ms reduced ({result['decode_speedup']:.1f}x); "
              f"reduced path taken for {result['reduced_path_taken']}/{result['n']}", flush=True)
    payload = {"machine": info, "bundle": bundle_info, "width": WIDTH, "height": HEIGHT, "repeats": args.repeats,
               "runs": runs, "preliminary": common.preliminary(info, bundle_info)}
    common.write_result("j2k_reduce" if args.syntax == "dicom-j2k" else "native_reduce", payload, args.out)


if __name__ == "__main__":
    main()
