"""Full-size benchmark inputs made from the real 224x224 chest X-rays: JPEG, and DICOM in four transfer syntaxes.

python -m bench.make_inputs [--n 2000] [--kinds jpeg,dicom,dicom-j2k,dicom-htj2k,dicom-jpeg] [--work DIR]

Each source image is upscaled (bicubic) to 2000x1700 and given a little per-file grain noise, so
that every file has distinct bytes (the pipeline skips duplicate contents) and compresses like a
real radiograph rather than like a smooth upscale. Files are cached under WORK/inputs/KIND and
made only once; ``input_set`` hard-links the first N into a folder of their own for `scan`.

- jpeg: 8-bit grayscale, quality 90 (about 0.5 MB).
- dicom: Digital X-Ray, 16 bits allocated, 12 stored, Explicit VR Little Endian, uncompressed (6.8 MB).
- dicom-j2k: the same, JPEG 2000 lossless (pydicom + pylibjpeg-openjpeg; about 3.4 MB).
- dicom-htj2k: the same, High-Throughput JPEG 2000 lossless (OpenJPH's ojph_compress, Debian openjph-tools).
- dicom-jpeg: 8 bits stored, JPEG baseline quality 90 in DICOM (about 0.5 MB).
Every DICOM kind carries a window (center/width), as DX "for presentation" files usually do.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import DATASET, DEFAULT_WORK
from tests.support import openjph

KINDS = ("jpeg", "dicom", "dicom-j2k", "dicom-htj2k", "dicom-jpeg")
SUFFIX = {kind: ".jpeg" if kind == "jpeg" else ".dcm" for kind in KINDS}
WIDTH, HEIGHT = 2000, 1700
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


@cache
def sources() -> list[Path]:
    """The real images, train then test, in a fixed order."""
    found = sorted(DATASET.glob("train/*/*.jpeg")) + sorted(DATASET.glob("test/*/*.jpeg"))
    if not found:
        raise SystemExit(f"no images under {DATASET}/{{train,test}}/*/ (the benchmarks need the dataset)")
    return found


def full_size(index: int, levels: int) -> np.ndarray:
    """Source ``index`` upscaled to HEIGHT x WIDTH with grain noise, as values in 0..levels-1 (float32)."""
    paths = sources()
    with Image.open(paths[index % len(paths)]) as image:
        big = np.asarray(image.convert("L").resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), np.float32)
    if (index // len(paths)) % 2:  # a second lap over the sources is mirrored, a third is not, ...
        big = big[:, ::-1]
    rng = np.random.default_rng(index)
    scale = (levels - 1) / 255.0
    noisy = big * scale + rng.normal(0.0, 3.0 * scale, big.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, levels - 1)


def jpeg_of(values: np.ndarray) -> bytes:
    """8-bit values as a grayscale JPEG, quality 90."""
    out = io.BytesIO()
    Image.fromarray(values.astype(np.uint8), mode="L").save(out, format="JPEG", quality=90)
    return out.getvalue()


def dicom_of(values: np.ndarray, index: int, *, syntax: str = "dicom",
             window: tuple[float, float] | None = None) -> bytes:
    """A chest DX DICOM of ``values``, its UIDs from ``index``, in the transfer syntax of input kind ``syntax``.

    12 bits stored (uint16 values) for dicom, dicom-j2k and dicom-htj2k; 8 (uint8) for dicom-jpeg. The
    window (center, width) covers the whole range unless ``window`` is given.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        UID,
        ExplicitVRLittleEndian,
        HTJ2KLossless,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        generate_uid,
    )

    uid = generate_uid(entropy_srcs=["pneumoscan-bench", str(index)])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(DX_SOP_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = UID(DX_SOP_CLASS)
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(index)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(index)])
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.StudyDate, ds.Manufacturer = "20240101", "pneumoscan bench"
    ds.PatientID, ds.PatientName = f"BENCH{index:06d}", "Bench^Patient"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = values.shape
    bits = 8 if syntax == "dicom-jpeg" else 12
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (bits + 7) // 8 * 8, bits, bits - 1, 0
    ds.WindowCenter, ds.WindowWidth = window or (1 << (bits - 1), 1 << bits)
    ds.PixelData = values.astype("<u1" if bits == 8 else "<u2").tobytes()
    if syntax == "dicom-j2k":
        ds.compress(JPEG2000Lossless, values, encoding_plugin="pylibjpeg")
    elif syntax in ("dicom-htj2k", "dicom-jpeg"):
        frame = openjph.encode_htj2k(values, 12, False) if syntax == "dicom-htj2k" else jpeg_of(values)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = HTJ2KLossless if syntax == "dicom-htj2k" else JPEGBaseline8Bit
        if syntax == "dicom-jpeg":
            ds.LossyImageCompression = "01"
    elif syntax != "dicom":
        raise ValueError(f"not a DICOM kind: {syntax}")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _make(job: tuple[str, int, str]) -> None:
    kind, index, dest = job
    if kind in ("jpeg", "dicom-jpeg"):
        values = full_size(index, 256).astype(np.uint8)
        data = jpeg_of(values) if kind == "jpeg" else dicom_of(values, index, syntax=kind)
    else:
        data = dicom_of(full_size(index, 4096).astype(np.uint16), index, syntax=kind)
    tmp = f"{dest}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, dest)


def cached_inputs(kind: str, n: int, work: Path = DEFAULT_WORK, *, processes: int | None = None) -> list[Path]:
    """The first ``n`` inputs of ``kind``, made (in parallel) where not cached yet."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    folder = work / "inputs" / kind
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}{SUFFIX[kind]}" for i in range(n)]
    missing = [(kind, i, str(p)) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        print(f"making {len(missing)} {kind} inputs in {folder} ...", file=sys.stderr, flush=True)
        with ProcessPoolExecutor(processes or os.cpu_count()) as pool:
            for _ in pool.map(_make, missing, chunksize=8):
                pass
    return paths


def input_set(kind: str, n: int, work: Path = DEFAULT_WORK) -> Path:
    """A folder holding exactly the first ``n`` inputs of ``kind`` (hard links to the cache)."""
    paths = cached_inputs(kind, n, work)
    folder = work / "sets" / f"{kind}-{n}"
    if folder.is_dir() and len(os.listdir(folder)) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in paths:
        os.link(path, folder / path.name)
    return folder


def small_jpegs(n: int, folder: Path) -> list[Path]:
    """``n`` small (224x224) real JPEGs with distinct bytes: each source file with a numbered comment segment.

    The pixels repeat every len(sources()) files, but the SHA-256 differs, so the pipeline treats
    each as new content. Cheap to make in the tens of thousands (for the memory benchmark).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = sources()
    raw = [p.read_bytes() for p in paths]
    made = []
    for i in range(n):
        dest = folder / f"s{i:06d}.jpeg"
        if not dest.exists():
            data = raw[i % len(raw)]
            comment = f"pneumoscan bench {i}".encode()
            segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
            dest.write_bytes(data[:2] + segment + data[2:])  # COM right after SOI
        made.append(dest)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = parser.parse_args()
    for kind in args.kinds.split(","):
        paths = cached_inputs(kind, args.n, args.work)
        size = sum(p.stat().st_size for p in paths)
        print(f"{kind:<10} {len(paths)} files, {size / len(paths) / 1e6:.2f} MB each, in {paths[0].parent}")


if __name__ == "__main__":
    main()
