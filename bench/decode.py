"""Decode cost per full-size image, one thread: JPEG with and without Pillow's draft, DICOM with and without triage.

python -m bench.decode [--n 40] [--repeats 3] [--size 224] [--work /tmp/pneumoscan-bench]

Each row is the median ms per image over N different files, from bytes already in memory to a
(size, size) float32 array. Each file is decoded --repeats times and the fastest kept; the methods
take turns file by file, so that load from other processes hits them alike.

  jpeg  pillow full        Image.open -> convert("L") -> resize: the whole 2000x1700 picture is decoded
  jpeg  pillow draft       the same after draft("L", size): libjpeg's DCT scaling decodes at 1/2..1/8
  jpeg  pneumoscan.decode  the worker's decoder (uses draft)
  dicom one pass           pydicom.dcmread of everything -> pixel_array -> VOI -> resize, no triage
  dicom pneumoscan.decode  the worker's decoder: header-only read (stop_before_pixels) to check
                           modality, body part and size, then the full read
  dicom header only        the triage read alone (pydicom.dcmread with stop_before_pixels)
  dicom CT rejected ...    pneumoscan.decode on the same file marked Modality CT: what a file that
                           triage turns away costs (without triage it would be decoded in full)
The reference for the ratios is "pillow full" for JPEG and "one pass" (a straightforward pydicom
decode with pydicom's own LUT functions, no triage) for each DICOM kind. What triage adds to an
accepted file is the "header only" time.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import common
from bench.make_inputs import HEIGHT, WIDTH, cached_inputs


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(pixels.astype(np.float32, copy=False), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.float32)


def pillow_full(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        gray = image.convert("L")
    return np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255.0


def pillow_draft(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (size, size))
        gray = image.convert("L")
    return np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255.0


def dicom_one_pass(data: bytes, size: int) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(io.BytesIO(data))
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds).astype(np.float32), ds, index=0)
    low, high = float(values.min()), float(values.max())
    return _resize(np.clip((values - low) / (high - low), 0, 1), size)


def dicom_header(data: bytes, size: int) -> Any:
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def worker_decode(data: bytes, size: int) -> np.ndarray:
    from pneumoscan.imaging import decode

    return decode(data, (size, size), _POLICY).pixels


_MODALITY_DX = b"\x08\x00\x60\x00CS\x02\x00DX"  # (0008,0060) Modality, explicit VR little endian
_POLICY = common.decode_policy()
_NOT_A_RADIOGRAPH: dict[int, bytes] = {}  # id(original bytes) -> the same file saying Modality CT


def as_ct(data: bytes) -> bytes:
    """The same DICOM bytes with Modality CT: a file that triage rejects (same length, same pixels)."""
    assert data.count(_MODALITY_DX) == 1, "expected one explicit-VR Modality DX element"
    return data.replace(_MODALITY_DX, _MODALITY_DX[:-2] + b"CT")


def worker_rejects(data: bytes, size: int) -> None:
    """pneumoscan.decode on the CT variant: it stops after the header read."""
    from pneumoscan.imaging import Rejected, decode

    try:
        decode(_NOT_A_RADIOGRAPH[id(data)], (size, size), _POLICY)
    except Rejected:
        return
    raise AssertionError("a CT file was not rejected by triage")


METHODS: dict[str, list[tuple[str, Callable[[bytes, int], Any]]]] = {
    "jpeg": [("pillow full", pillow_full), ("pillow draft", pillow_draft), ("pneumoscan.decode", worker_decode)],
    "dicom": [("one pass", dicom_one_pass), ("pneumoscan.decode", worker_decode), ("header only", dicom_header),
              ("CT rejected by triage", worker_rejects)],
    "dicom-j2k": [("one pass", dicom_one_pass), ("pneumoscan.decode", worker_decode), ("header only", dicom_header),
                  ("CT rejected by triage", worker_rejects)],
}


def time_methods(methods: list[Callable[[bytes, int], Any]], blobs: list[bytes], size: int,
                 repeats: int) -> list[float]:
    """Per method, the median over files of the fastest of ``repeats`` decodes, in ms.

    The methods take turns on each file, so that load from other processes hits them alike.
    """
    for method in methods:
        method(blobs[0], size)  # imports and codec set-up outside the timing
    best: list[list[float]] = [[] for _ in methods]
    for data in blobs:
        times: list[list[float]] = [[] for _ in methods]
        for _ in range(repeats):
            for i, method in enumerate(methods):
                start = time.perf_counter()
                method(data, size)
                times[i].append(time.perf_counter() - start)
        for i in range(len(methods)):
            best[i].append(min(times[i]))
    return [common.median(b) * 1000 for b in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="different files per kind")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="model input size to decode to")
    parser.add_argument("--kinds", default="jpeg,dicom,dicom-j2k")
    parser.add_argument("--work", type=Path, default=common.DEFAULT_WORK)
    common.add_output_arg(parser, "decode")
    args = parser.parse_args()
    info = common.machine()
    print(common.describe_machine(info))
    print(f"one thread, median over {args.n} files of the best of {args.repeats}; decoded to {args.size}x{args.size}")
    rows = []
    for kind in args.kinds.split(","):
        blobs = [p.read_bytes() for p in cached_inputs(kind, args.n, args.work)]
        shape = f"{WIDTH}x{HEIGHT}"
        mb = sum(map(len, blobs)) / len(blobs) / 1e6
        if kind != "jpeg":
            _NOT_A_RADIOGRAPH.update({id(blob): as_ct(blob) for blob in blobs})
        names = [name for name, _ in METHODS[kind]]
        timings = time_methods([method for _, method in METHODS[kind]], blobs, args.size, args.repeats)
        reference = timings[0]
        for name, ms in zip(names, timings, strict=True):
            rows.append({"kind": kind, "method": name, "ms_per_image": ms, "speedup_vs_reference": reference / ms,
                         "file_mb": mb, "pixels": shape})
            print(f"{kind:<10} {name:<22} {ms:8.1f} ms/image  {reference / ms:5.2f}x reference  ({mb:.2f} MB, {shape})",
                  flush=True)
    payload = {"machine": info, "n": args.n, "repeats": args.repeats, "size": args.size, "rows": rows,
               "preliminary": common.preliminary(info)}
    common.write_result("decode", payload, args.out)


if __name__ == "__main__":
    main()
