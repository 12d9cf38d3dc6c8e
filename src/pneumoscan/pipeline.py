"""Pipeline stage: hash, dedupe, decode, batch-predict and persist; the one place where models and db meet."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from pneumoscan.config import Settings
from pneumoscan.db.queries import Result, save_results, settled_hashes
from pneumoscan.imaging import DecodedImage, ImagingError, decode, detect_kind
from pneumoscan.models.bundle import ModelBundle

log = logging.getLogger(__name__)

__all__ = ["Result", "classify_paths"]


@dataclass(frozen=True)
class _Read:
    path: str
    data: bytes | None = None
    sha256: str | None = None
    error: Result | None = None


def _read(path: str) -> _Read:
    """Read and hash one file. Unreadable files become ``failed`` results, which a retry may fix."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return _Read(path, error=Result(path, "failed", reason="file disappeared before it could be read"))
    except PermissionError:
        return _Read(path, error=Result(path, "failed", reason="permission denied reading the file"))
    except IsADirectoryError:
        return _Read(path, error=Result(path, "rejected", reason="is a directory, not a file"))
    except OSError as exc:
        return _Read(path, error=Result(path, "failed", reason=f"cannot read file: {exc.strerror or exc}"))
    return _Read(path, data, hashlib.sha256(data).hexdigest())


def _decode(read: _Read, size: int, settings: Settings) -> DecodedImage | Result:
    assert read.data is not None and read.sha256 is not None
    try:
        return decode(read.data, (size, size), salt=settings.salt, max_pixels=settings.max_pixels,
                      modalities=settings.modality_set, body_parts=settings.body_part_set)
    except ImagingError as exc:
        return Result(read.path, "failed" if exc.transient else "rejected", sha256=read.sha256,
                      kind=detect_kind(read.data[:132]), byte_size=len(read.data), reason=exc.reason)


def _chunks(paths: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(paths), size):
        yield paths[start:start + size]


def classify_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    bundle: ModelBundle,
    sessions: sessionmaker[Session],
    settings: Settings,
    on_batch: Callable[[list[Result]], None] | None = None,
) -> list[Result]:
    """Classify files and store the outcome: one result per path, in order.

    Works in batches of ``settings.batch_size``: read and hash, skip contents already predicted by
    this model version (or already rejected), decode in a thread pool, predict the batch as a
    whole, and write it in one transaction. A bad file gets a rejected/failed result with a reason
    and never stops its batch. ``on_batch`` is called after each batch is committed.
    """
    names = [os.fspath(p) for p in paths]
    results: list[Result] = []
    with ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="pneumoscan-decode") as pool:
        for chunk in _chunks(names, settings.batch_size):
            batch = _classify_batch(chunk, bundle, sessions, settings, pool)
            results.extend(batch)
            if on_batch is not None:
                on_batch(batch)
    return results


def _classify_batch(
    paths: Sequence[str], bundle: ModelBundle, sessions: sessionmaker[Session], settings: Settings,
    pool: Executor,
) -> list[Result]:
    reads = list(pool.map(_read, paths))
    with sessions() as session:
        settled = settled_hashes(session, (r.sha256 for r in reads if r.sha256), bundle.version)

    outcome: dict[int, Result] = {}
    first_of: dict[str, int] = {}  # sha256 -> index of the first read carrying it in this batch
    to_decode: list[int] = []
    for i, read in enumerate(reads):
        if read.error is not None:
            outcome[i] = read.error
        elif read.sha256 in settled:
            outcome[i] = Result(read.path, "skipped", sha256=read.sha256,
                                reason=f"already processed (model {bundle.version})")
        elif read.sha256 in first_of:
            outcome[i] = Result(read.path, "skipped", sha256=read.sha256,
                                reason=f"same content as {reads[first_of[read.sha256]].path}")
        else:
            first_of[read.sha256] = i  # type: ignore[index]
            to_decode.append(i)

    decoded = list(pool.map(lambda i: _decode(reads[i], bundle.input_size, settings), to_decode))
    images = [(i, d) for i, d in zip(to_decode, decoded, strict=True) if isinstance(d, DecodedImage)]
    for i, d in zip(to_decode, decoded, strict=True):
        if isinstance(d, Result):
            outcome[i] = d
    if images:
        probabilities = bundle.predict(np.stack([d.pixels for _, d in images]))
        for (i, image), probability in zip(images, probabilities, strict=True):
            read = reads[i]
            assert read.data is not None
            outcome[i] = Result(
                read.path, "done", sha256=read.sha256, kind=image.kind, byte_size=len(read.data),
                reason="; ".join(image.notes) or None, probability=float(probability),
                label=bundle.label(float(probability)), threshold=bundle.threshold,
                model_version=bundle.version, dicom=asdict(image.dicom) if image.dicom else {},
            )
    ordered = [outcome[i] for i in range(len(reads))]
    with sessions.begin() as session:
        save_results(session, ordered)
    for result in ordered:
        if result.status in ("rejected", "failed"):
            log.warning("%s %s: %s", result.status, Path(result.path).name, result.reason)
    return ordered
