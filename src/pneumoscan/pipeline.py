"""Pipeline stage: hash, dedupe, decode, batch-predict and persist; the one place where models and db meet."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pneumoscan.config import Settings
from pneumoscan.db import Database, outbox
from pneumoscan.db.reviews import active_point
from pneumoscan.db.writes import save_results, settled_hashes
from pneumoscan.domain import Domain, Outcome, Result, SkipReason, display_path, label_at
from pneumoscan.imaging import DecodedImage, Ignored, ImagingError, InternalError, clean_text, decode, detect_kind
from pneumoscan.inputs import open_input
from pneumoscan.models.bundle import ModelBundle

log = logging.getLogger(__name__)

__all__ = ["classify_paths"]


@dataclass(frozen=True)
class _Read:
    path: str
    data: bytes | None = None
    sha256: str | None = None
    error: Result | None = None
    mtime: float | None = None


_FILE_TYPES = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _read(path: str, image_id: int | None = None) -> _Read:
    """Read and hash one regular file, without following links.

    Files that cannot be read now (permissions, vanished, changed while read) become ``failed``
    results, which a retry may fix; links, folders, special files and names that are not UTF-8
    become ``rejected`` ones.
    """
    def outcome(status: Outcome, reason: str) -> _Read:
        return _Read(path, error=Result(display_path(path), status, reason=reason, image_id=image_id))

    if display_path(path) != path:
        return outcome(Outcome.REJECTED, "file name is not valid UTF-8; rename the file to have it classified")
    try:
        fh = open_input(path)
    except FileNotFoundError:
        return outcome(Outcome.FAILED, "file disappeared before it could be read")
    except PermissionError:
        return outcome(Outcome.FAILED, "permission denied reading the file")
    except OSError as exc:
        if os.path.islink(path):
            return outcome(Outcome.REJECTED, "symbolic link: not followed (links may point outside the inbox)")
        return outcome(Outcome.FAILED, f"cannot read file: {exc.strerror or exc}")
    try:
        with fh:
            before = os.fstat(fh.fileno())
            if not stat.S_ISREG(before.st_mode):
                kind = next((name for test, name in _FILE_TYPES if test(before.st_mode)), "not a regular file")
                return outcome(Outcome.REJECTED, f"not a regular file: {kind}")
            data = fh.read()
            after = os.fstat(fh.fileno())
    except OSError as exc:
        return outcome(Outcome.FAILED, f"cannot read file: {exc.strerror or exc}")
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
        return outcome(Outcome.FAILED, "file changed while it was being read; it is read again once it is complete")
    return _Read(path, data, hashlib.sha256(data).hexdigest(), mtime=after.st_mtime)


def _decode(read: _Read, size: int, settings: Settings) -> DecodedImage | Result:
    """Decode one read file, or the result that says why it cannot be: rejected, or failed (to be retried).

    A bug of ours (``InternalError``, or anything else that escapes) is ``failed``, never
    ``rejected``: a rejection is final, so a bug would otherwise lose every file it touched for good.
    """
    assert read.data is not None and read.sha256 is not None
    dicom = None
    status: Outcome
    try:
        return decode(read.data, (size, size), settings.decode_policy)
    except ImagingError as exc:
        status, reason, dicom = (Outcome.FAILED if exc.transient else Outcome.IGNORED if isinstance(exc, Ignored)
                                 else Outcome.REJECTED), exc.reason, exc.dicom
    except Exception as exc:  # not the file's fault: keep the batch going, and log the traceback to fix it by
        log.exception("internal error decoding %s; recorded as failed, to be retried", read.path)
        status = Outcome.FAILED
        reason = exc.reason if isinstance(exc, InternalError) else clean_text(
            f"internal error while decoding: {type(exc).__name__}: {exc}")
    return Result(read.path, status, sha256=read.sha256, kind=detect_kind(read.data[:132]),
                  byte_size=len(read.data), reason=reason, dicom=dicom)


def classify_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    bundle: ModelBundle,
    sessions: Database,
    settings: Settings,
    on_batch: Callable[[list[Result]], None] | None = None,
    image_ids: Sequence[int] | None = None,
    force: bool = False,
) -> list[Result]:
    """Classify files and store the outcome: one result per path, in order.

    Works in batches of ``settings.batch_size``. One thread prepares batch k+1 (read and hash, skip
    contents already predicted by this model version or already rejected, or seen earlier in this
    call, then decode in a thread pool) while the calling thread predicts batch k as a whole and
    writes it in one transaction. A bad file gets a rejected/failed result with a reason and never
    stops its batch. ``on_batch`` is called after each batch is committed.

    ``image_ids`` (reclassification) names the stored image each path was read for: when that file
    cannot be read, the image itself is marked failed rather than a new row being added.
    ``force`` (``reclassify --all``) decodes and predicts known contents again, so that rejected files
    are triaged again under the current rules; an existing prediction of this model version is kept.
    """
    # Absolute and normalised, links not followed: a stored path means the same file from any folder.
    names = [os.path.abspath(os.fspath(p)) for p in paths]
    ids: list[int | None] = list(image_ids) if image_ids is not None else [None] * len(names)
    if len(ids) != len(names):
        raise ValueError(f"{len(ids)} image ids for {len(names)} paths")
    size = settings.batch_size
    batches = [(names[i:i + size], ids[i:i + size]) for i in range(0, len(names), size)]
    seen: dict[str, str] = {}  # sha256 -> path of the first file with that content in this call
    results: list[Result] = []
    with (ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="pneumoscan-decode") as pool,
          ThreadPoolExecutor(1, thread_name_prefix="pneumoscan-prepare") as ahead):
        def prepare(k: int) -> Future[_Prepared] | None:
            if k >= len(batches):
                return None
            return ahead.submit(_prepare, *batches[k], bundle, sessions, settings, pool, seen, force)

        upcoming = prepare(0)
        for k in range(len(batches)):
            assert upcoming is not None
            prepared = upcoming.result()
            upcoming = prepare(k + 1)  # batches are prepared one after another, so `seen` needs no lock
            batch = _finish(prepared, bundle, sessions, settings)
            results.extend(batch)
            if on_batch is not None:
                on_batch(batch)
    return results


@dataclass
class _Prepared:
    """A batch read, triaged and decoded: known outcomes by index, and the decoded images to predict."""

    reads: list[_Read]
    image_ids: Sequence[int | None]
    outcome: dict[int, Result]
    images: list[tuple[int, DecodedImage]]


def _prepare(
    paths: Sequence[str], image_ids: Sequence[int | None], bundle: ModelBundle, sessions: Database,
    settings: Settings, pool: Executor, seen: dict[str, str], force: bool,
) -> _Prepared:
    reads = list(pool.map(_read, paths, image_ids))
    settled: set[str] = set()
    if not force:
        with sessions() as session:
            settled = settled_hashes(session, (r.sha256 for r in reads if r.sha256), bundle.version)

    outcome: dict[int, Result] = {}
    to_decode: list[int] = []
    for i, read in enumerate(reads):
        if read.error is not None:
            outcome[i] = read.error
        elif read.sha256 in settled:
            outcome[i] = Result(read.path, Outcome.SKIPPED, sha256=read.sha256, model_version=bundle.version,
                                reason=f"already processed (model {bundle.version})", skip=SkipReason.SETTLED)
        elif read.sha256 in seen:
            outcome[i] = Result(read.path, Outcome.SKIPPED, sha256=read.sha256, model_version=bundle.version,
                                reason=f"same content as {seen[read.sha256]}", skip=SkipReason.DUPLICATE)
        else:
            seen[read.sha256] = read.path  # type: ignore[index]
            to_decode.append(i)

    decoded = list(pool.map(lambda i: _decode(reads[i], bundle.input_size, settings), to_decode))
    images = [(i, d) for i, d in zip(to_decode, decoded, strict=True) if isinstance(d, DecodedImage)]
    for i, d in zip(to_decode, decoded, strict=True):
        if isinstance(d, Result):
            outcome[i] = d
    return _Prepared(reads, image_ids, outcome, images)


def _finish(prepared: _Prepared, bundle: ModelBundle, sessions: Database, settings: Settings) -> list[Result]:
    """Predict a prepared batch and write all its results in one transaction.

    The label uses the site's operating point for this model when one is in force (read in the same
    transaction as the write), else the card's threshold. With a domain gate, each result says whether the
    image is like those the model was validated on; under ``out_of_domain=skip`` one that is not is stored
    as not assessed, without a label.
    """
    reads, outcome = prepared.reads, prepared.outcome
    probabilities, scores = (bundle.infer(np.stack([d.pixels for _, d in prepared.images])) if prepared.images
                             else (np.zeros(0), None))
    gate = bundle.domain_gate
    with sessions.begin() as session:
        point = active_point(session, bundle.version) if prepared.images else None
        threshold = point.threshold if point is not None else bundle.threshold
        for k, ((i, image), probability) in enumerate(zip(prepared.images, probabilities, strict=True)):
            read = reads[i]
            assert read.data is not None
            score = float(scores[k]) if scores is not None else None
            verdict = gate.verdict(score, image.dicom.age_band if image.dicom else None) if gate else None
            why_out = verdict.reason if verdict is not None and verdict.out else None
            notes = [*image.notes, *([f"outside the validated population: {why_out}"] if why_out else [])]
            result = Result(
                read.path, Outcome.DONE, sha256=read.sha256, kind=image.kind, byte_size=len(read.data),
                reason="; ".join(notes) or None, probability=float(probability),
                label=label_at(float(probability), threshold), threshold=threshold, model_version=bundle.version,
                dicom=image.dicom, domain=None if verdict is None else Domain.OUT if why_out else Domain.IN,
                domain_score=score,
            )
            if why_out and settings.out_of_domain == "skip":
                result = replace(result, status=Outcome.REJECTED, probability=None, label=None, threshold=None,
                                 reason=f"not assessed: outside the validated population ({why_out})")
            outcome[i] = result
        # Reclassification: each result names the stored image it was read for, so that image can be
        # told when its file now holds other content (see save_results).
        ordered = [replace(outcome[i], image_id=prepared.image_ids[i], mtime=read.mtime,
                           byte_size=len(read.data) if read.data is not None else outcome[i].byte_size)
                   for i, read in enumerate(reads)]
        ordered = save_results(session, ordered)  # as stored: our own outputs come back ignored
        outbox.settle(session, [r.path for r in reads])  # handed-over files leave the outbox with their result
    for result in ordered:
        if result.status in (Outcome.REJECTED, Outcome.FAILED):
            log.warning("%s %s: %s", result.status, Path(result.path).name, result.reason)
    return ordered
