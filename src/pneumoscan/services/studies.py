"""The study round: complete the studies that went quiet, then send each result that is due back to PACS.

Run every few seconds by a Celery beat task in distributed mode, and by ``StudyMonitor``'s thread in
embedded mode's `watch`. Each result goes out as a structured report (``dicomnet.sr``) and, when
PNEUMOSCAN_RESULTS_HEATMAP is set, a Secondary Capture of the model heatmap over the study's most
suspicious image (drawn by ``services.heatmaps``, wrapped by ``dicomnet.capture``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pneumoscan.config import Settings
from pneumoscan.db import Database, studies
from pneumoscan.db.schema import Study
from pneumoscan.dicomnet.sender import SendError
from pneumoscan.domain import Status

if TYPE_CHECKING:
    from pneumoscan.models.bundle import ModelBundle

log = logging.getLogger(__name__)

# What a refused attempt raises: the peer's refusal or a network failure, and the report or capture that could not be
# built (a file gone or unreadable, a header highdicom refuses). Retried with backoff, a bounded number of times.
# Anything else is our bug: logged with its traceback and the result marked failed at once, never retried silently.
SEND_FAILURES: tuple[type[Exception], ...] = (SendError, OSError, ValueError)


class Sender(Protocol):
    """Hands a study's objects to the results destination; raises ``SendError`` unless each is accepted."""

    def send(self, objects: Sequence[Any]) -> None: ...


@dataclass(frozen=True)
class Round:
    """What one round did: studies completed, results sent, sends that failed (and wait for a retry)."""

    settled: int
    sent: int
    failed: int


def settle_and_send(db: Database, settings: Settings, bundle: ModelBundle, sender: Sender | None) -> Round:
    """One round: complete the studies that went quiet, then send every result that is due (each in its own
    transaction, so one unreachable peer or one bad study holds up nothing else).

    With no ``sender`` (no results destination) studies are completed and nothing is queued to send.
    """
    from pneumoscan.dicomnet.sr import output_uids

    model_version = bundle.version
    with db.begin() as session:
        settled = studies.settle(session, model_version, settings.study_stable_seconds, send=sender is not None,
                                 tolerance=settings.results_probability_tolerance)
        for study in settled:  # recorded before any is sent: a PACS that routes them back finds them known
            report_uid, capture_uid = output_uids(study.study_uid, study.revision)
            studies.record_outputs(session, study, report_uid, capture_uid if settings.results_heatmap else None)
    for study in settled:
        log.info("study %s complete: %s (%d of %d instances assessed, revision %d)", study.study_uid,
                 study.label or "not assessed", study.assessed_count, study.instance_count, study.revision)
    sent = failed = 0
    while sender is not None:
        with db.begin() as session:
            batch = studies.due(session, limit=1)
            if not batch:
                break
            study = batch[0]
            try:
                instances = studies.instances(session, study.study_uid, study.model_version or "")
                sender.send(study_objects(study, instances, bundle, settings, studies.predecessor(session, study)))
            except SEND_FAILURES as exc:
                failed += 1
                delay = studies.mark_failed(study, str(exc), max_attempts=settings.results_max_attempts,
                                            first_retry=settings.results_retry_seconds)
                if delay is None:
                    log.error("gave up sending the result of study %s after %d attempts: %s", study.study_uid,
                              study.send_attempts, exc)
                    continue
                log.warning("could not send the result of study %s (attempt %d of %d): %s; next try in %.0f s",
                            study.study_uid, study.send_attempts, settings.results_max_attempts, exc, delay)
                # Let the others wait for the next round rather than hammer a peer that is down.
                break
            except Exception as exc:  # our bug: say so with its traceback, and stop retrying it
                log.exception("internal error sending the result of study %s; marked failed, not retried",
                              study.study_uid)
                studies.mark_broken(study, f"internal error: {type(exc).__name__}: {exc}")
                failed += 1
                continue
            studies.mark_sent(session, study)
            sent += 1
            log.info("sent the result of study %s (revision %d) to %s", study.study_uid, study.revision,
                     getattr(sender, "peer", "the results destination"))
    return Round(len(settled), sent, failed)


def study_objects(study: Study, instances: list[studies.Instance], bundle: ModelBundle,
                  settings: Settings, predecessor: str | None = None) -> list[Any]:
    """What goes to PACS for ``study``: its report (naming the one it replaces, ``predecessor``), and its heatmap
    capture when PNEUMOSCAN_RESULTS_HEATMAP is set."""
    from pneumoscan.dicomnet.sr import build_report

    objects = [build_report(study, instances, predecessor)]
    if settings.results_heatmap:
        objects.append(heatmap_capture(study, instances, bundle, settings))
    return objects


def heatmap_capture(study: Study, instances: list[studies.Instance], bundle: ModelBundle,
                    settings: Settings) -> Any:
    """A Secondary Capture of the study's most suspicious assessed image with the model's heatmap drawn over it
    at the image's full size, captioned as a model heatmap, filed with the study like the report."""
    from pneumoscan.dicomnet.capture import build_capture, read_header
    from pneumoscan.imaging import ImagingError, decode
    from pneumoscan.inputs import read_content
    from pneumoscan.services.heatmaps import render_overlay

    scored = [i for i in instances if i.status == Status.DONE and i.probability is not None]
    if not scored:
        raise SendError(f"study {study.study_uid} has no assessed image to draw a heatmap on")
    top = max(scored, key=lambda i: float(i.probability or 0))
    found = read_content(top.paths, top.sha256) if top.sha256 else None
    if found is None:
        raise SendError(f"the file of instance {top.sop_instance_uid} is no longer on disk")
    data = found[1]
    try:
        pixels = decode(data, None, settings.decode_policy).pixels
        model_input = decode(data, (bundle.input_size, bundle.input_size), settings.decode_policy).pixels
    except ImagingError as exc:
        raise SendError(f"cannot decode instance {top.sop_instance_uid} for its heatmap: {exc.reason}") from None
    heatmap = render_overlay(bundle, model_input, display=pixels)
    return build_capture(heatmap.rgb, read_header(data), study_uid=study.study_uid, revision=study.revision,
                         model_version=bundle.version)


class StudyMonitor:
    """Runs ``settle_and_send`` every ``interval`` seconds in a thread while the context is open (embedded `watch`)."""

    def __init__(self, db: Database, settings: Settings, bundle: ModelBundle, sender: Sender | None,
                 interval: float = 2.0) -> None:
        self.db, self.settings, self.bundle, self.sender, self.interval = db, settings, bundle, sender, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="study-monitor", daemon=True)

    def __enter__(self) -> StudyMonitor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        while not self._stop.wait(self.interval):
            try:
                settle_and_send(self.db, self.settings, self.bundle, self.sender)
            except SQLAlchemyError as exc:
                log.warning("study results: the database did not answer (%s); trying again", exc)
            except Exception:  # our bug: keep the monitor alive (the next round may get past it), and say where
                log.exception("internal error in the study round; trying again in %.0f s", self.interval)
