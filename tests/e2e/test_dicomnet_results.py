"""Results in the PACS that never loop or duplicate (issue 27): the study round against real DICOM peers.

In process, on a real SQLite database and the tiny real model: the pipeline classifies DICOM files, the
study round (``services.studies.settle_and_send``) completes studies and sends their reports. dcmtk's
storescp is the PACS; pneumoscan's own receiver takes back what a PACS routing rule would return; a
pynetdicom storage SCP started here answers Warning and Failure statuses.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
from support import dcmtk, dicoms, xrays

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

STABLE = 0.05  # seconds: the study round is driven by hand here, after a short sleep


@pytest.fixture(scope="module", autouse=True)
def _dcmtk_installed() -> None:
    dcmtk.require_tools()


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[dcmtk.Storescp]:
    server = dcmtk.Storescp(tmp_path / "pacs", dcmtk.free_port())
    server.start()
    yield server
    server.stop()


class StatusPacs:
    """A pynetdicom storage SCP that answers each C-STORE with the next of ``statuses`` (the last one repeats)."""

    def __init__(self, statuses: list[int], comment: str = "") -> None:
        self.statuses, self.comment, self.port = list(statuses), comment, dcmtk.free_port()
        self.received: list[str] = []
        self._server: Any = None

    @property
    def destination(self) -> str:
        return f"PACS@127.0.0.1:{self.port}"

    def __enter__(self) -> StatusPacs:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        ae = AE(ae_title="PACS")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()

    def _store(self, event: Any) -> Any:
        from pydicom.dataset import Dataset

        self.received.append(str(event.request.AffectedSOPInstanceUID))
        reply = Dataset()
        reply.Status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if self.comment:
            reply.ErrorComment = self.comment
        return reply


# --- the site: settings, classification, the study round ------------------------------------------------------


def configure(settings: Any, destination: str, **changes: Any) -> Any:
    return settings.model_copy(update={"study_stable_seconds": STABLE, "results_destination": destination,
                                       "results_retry_seconds": 0.1, **changes})


def classify(paths: list[Path], settings: Any, sessions: Any, bundle: Any, **options: Any) -> list[Any]:
    from pneumoscan.pipeline import classify_paths

    return classify_paths([str(p) for p in paths], bundle=bundle, sessions=sessions, settings=settings, **options)


def round_(settings: Any, sessions: Any, bundle: Any, sender: Any = None) -> Any:
    from pneumoscan.dicomnet.sender import StoreSCU
    from pneumoscan.services.studies import settle_and_send

    time.sleep(STABLE * 2)
    return settle_and_send(sessions, settings, bundle, sender or StoreSCU.for_results(settings))


def study_row(sessions: Any, study_uid: str) -> Any:
    from sqlalchemy import select

    from pneumoscan.db.schema import Study

    with sessions() as session:
        return session.scalars(select(Study).where(Study.study_uid == study_uid)).one()


def new_study(folder: Path, count: int = 2) -> tuple[str, list[Path]]:
    from pydicom.uid import generate_uid

    study_uid = str(generate_uid())
    sources = [xrays.PNEUMONIA_IMAGES[0], xrays.NORMAL_IMAGES[0], xrays.NORMAL_IMAGES[1]]
    return study_uid, [dicoms.write_dicom(sources[i], folder / f"{study_uid[-6:]}-{i}.dcm",
                                          StudyInstanceUID=study_uid, ViewPosition="PA") for i in range(count)]


def reported(folder: Path, count: int, settings: Any, sessions: Any, bundle: Any, pacs: dcmtk.Storescp,
             **changes: Any) -> tuple[Any, str, list[Path]]:
    """A new study of ``count`` instances, classified, completed and its first report sent to ``pacs``:
    (the site's settings, the study's UID, its files)."""
    site = configure(settings, pacs.destination, **changes)
    study_uid, files = new_study(folder, count)
    classify(files, site, sessions, bundle)
    assert round_(site, sessions, bundle).sent == 1
    return site, study_uid, files


def received(pacs: dcmtk.Storescp, count: int) -> list[Any]:
    return pacs.read(count, 30, interval=0.1)


# --- 1. our own outputs and non-image objects never reopen a study ---------------------------------------------


def test_a_pacs_that_routes_our_report_and_heatmap_back_gets_nothing_more_and_they_are_ignored_once(
        tmp_path: Path, settings: Any, sessions: Any, tiny_bundle: Any, pacs: dcmtk.Storescp) -> None:
    from pneumoscan.db.results import ResultFilter, query_results
    from pneumoscan.dicomnet.receiver import Receiver
    from pneumoscan.domain import Status

    site = configure(settings, pacs.destination, results_heatmap=True)
    study_uid, files = new_study(tmp_path / "modality")
    spool, port = tmp_path / "spool", dcmtk.free_port()
    receiver = Receiver(spool, port=port)
    receiver.start()
    try:
        sent = dcmtk.storescu(port, files, "MODALITY")
        assert sent.returncode == 0, sent.output
        classify(sorted(spool.glob("*.dcm")), site, sessions, tiny_bundle)
        assert round_(site, sessions, tiny_bundle).sent == 1
        objects = received(pacs, 2)
        assert sorted(str(ds.SOPClassUID) for ds in objects) == ["1.2.840.10008.5.1.4.1.1.7",
                                                                   "1.2.840.10008.5.1.4.1.1.88.22"]
        first = study_row(sessions, study_uid)
        assert (first.status, first.revision, first.instance_count, first.assessed_count) == ("complete", 1, 2, 2)

        # The PACS routes the whole study back, our report and heatmap included, twice over.
        for _ in range(2):
            back = dcmtk.storescu(port, [*files, *pacs.received()], "PACS")
            assert back.returncode == 0, back.output
    finally:
        receiver.stop()
    returned = sorted(spool.glob("*.dcm"))
    assert len(returned) == 4
    outcomes = {Path(r.path).name: r for r in classify(returned, site, sessions, tiny_bundle)}
    for ds in objects:
        outcome = outcomes[f"{ds.SOPInstanceUID}.dcm"]
        assert outcome.status == Status.IGNORED, outcome
    report = next(ds for ds in objects if ds.Modality == "SR")
    capture = next(ds for ds in objects if ds.Modality != "SR")
    assert outcomes[f"{report.SOPInstanceUID}.dcm"].reason == \
        f"pneumoscan's own report of study {study_uid} (revision 1)"
    assert outcomes[f"{capture.SOPInstanceUID}.dcm"].reason == \
        f"pneumoscan's own heatmap of study {study_uid} (revision 1)"

    assert round_(site, sessions, tiny_bundle).sent == 0
    time.sleep(0.5)
    assert len(pacs.received()) == 2, "a report was sent again"
    again = study_row(sessions, study_uid)
    assert (again.status, again.revision, again.instance_count, again.assessed_count) == ("complete", 1, 2, 2)

    # Recorded once each, as ignored; not in the default results view, listed when asked for.
    with sessions() as session:
        shown = query_results(session, ResultFilter(limit=None))
        ignored = query_results(session, ResultFilter(status=Status.IGNORED, limit=None))
    assert {r["status"] for r in shown} == {Status.DONE}
    assert sorted(r["sop_instance_uid"] for r in ignored) == sorted(str(ds.SOPInstanceUID) for ds in objects)
    assert round_(site, sessions, tiny_bundle).settled == 0


def test_a_foreign_report_or_key_object_is_ignored_and_does_not_count_in_its_study(
        tmp_path: Path, settings: Any, sessions: Any, tiny_bundle: Any, pacs: dcmtk.Storescp) -> None:
    from pneumoscan.domain import Status

    site, study_uid, _files = reported(tmp_path / "modality", 1, settings, sessions, tiny_bundle, pacs)
    # An image-shaped object whose modality says it is a presentation state, from another system.
    other = dicoms.write_dicom(xrays.NORMAL_IMAGES[2], tmp_path / "other" / "pr.dcm", StudyInstanceUID=study_uid,
                               modality="PR")
    [outcome] = classify([other], site, sessions, tiny_bundle)
    assert (outcome.status, outcome.reason) == (Status.IGNORED, "not an image: modality PR")
    assert round_(site, sessions, tiny_bundle).settled == 0
    row = study_row(sessions, study_uid)
    assert (row.status, row.revision, row.instance_count) == ("complete", 1, 1)
    assert len(received(pacs, 1)) == 1


# --- 2. a result goes out again only when what it says changes ------------------------------------------------


def test_reclassifying_everything_sends_nothing_and_a_changed_result_names_the_report_it_replaces(
        tmp_path: Path, settings: Any, sessions: Any, tiny_bundle: Any, pacs: dcmtk.Storescp) -> None:
    from pneumoscan.db.selection import ReclassifySelection
    from pneumoscan.scheduler.dispatch import InlineDispatcher
    from pneumoscan.services import reclassify

    site, study_uid, _files = reported(tmp_path / "modality", 2, settings, sessions, tiny_bundle, pacs)
    [first] = received(pacs, 1)

    dispatcher = InlineDispatcher(lambda paths, **kw: classify(paths, site, sessions, tiny_bundle, **kw))
    count = reclassify.reclassify(sessions, tiny_bundle.version, ReclassifySelection(everything=True),
                                  lambda ids, paths: dispatcher.submit_images(ids, paths, True), batch_size=8)
    assert count == 2
    assert study_row(sessions, study_uid).status == "complete"  # not reopened by a reclassification
    done = round_(site, sessions, tiny_bundle)
    assert (done.settled, done.sent) == (0, 0)
    row = study_row(sessions, study_uid)
    assert (row.status, row.revision, row.send_state, row.reassessed_at) == ("complete", 1, "sent", None)
    time.sleep(0.3)
    assert len(pacs.received()) == 1

    # A late frontal changes the assessed instances: a new report, naming the one it replaces.
    late = dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[1], tmp_path / "modality" / "late.dcm",
                              StudyInstanceUID=study_uid, ViewPosition="AP")
    classify([late], site, sessions, tiny_bundle)
    assert round_(site, sessions, tiny_bundle).sent == 1
    _, second = received(pacs, 2)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    [predecessor] = second.PredecessorDocumentsSequence
    [item] = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID) == (first.SOPClassUID, first.SOPInstanceUID)
    assert predecessor.StudyInstanceUID == study_uid
    assert "PredecessorDocumentsSequence" not in first
    with sessions() as session:
        from sqlalchemy import text

        history = session.execute(text("SELECT revision, report_uid, sent_at IS NOT NULL FROM study_results "
                                       "ORDER BY revision")).all()
    assert [tuple(r) for r in history] == [(1, str(first.SOPInstanceUID), 1), (2, str(second.SOPInstanceUID), 1)]


def test_a_new_model_reclassifying_a_study_batch_by_batch_sends_one_new_report_once_all_of_it_is_done(
        tmp_path: Path, settings: Any, sessions: Any, tiny_bundle: Any, pacs: dcmtk.Storescp) -> None:
    import dataclasses

    from sqlalchemy import select

    from pneumoscan.db.schema import Image

    site, study_uid, files = reported(tmp_path / "modality", 2, settings, sessions, tiny_bundle, pacs)
    newer = dataclasses.replace(tiny_bundle, card=dataclasses.replace(tiny_bundle.card, version="tiny-test-2"))
    with sessions() as session:
        ids = dict(session.execute(select(Image.path, Image.id).where(Image.study_uid == study_uid)).tuples().all())
    first, second = (str(p.resolve()) for p in files)
    classify([Path(first)], site, sessions, newer, image_ids=[ids[first]])
    assert round_(site, sessions, newer).settled == 0  # half of the study still has only the old model's result
    assert study_row(sessions, study_uid).revision == 1
    classify([Path(second)], site, sessions, newer, image_ids=[ids[second]])
    assert round_(site, sessions, newer).sent == 1
    row = study_row(sessions, study_uid)
    assert (row.status, row.revision, row.model_version, row.assessed_count) == ("complete", 2, "tiny-test-2", 2)
    old, new = received(pacs, 2)
    assert new.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == old.SOPInstanceUID


def test_a_probability_within_the_tolerance_sends_nothing_and_beyond_it_sends_again(
        tmp_path: Path, settings: Any, sessions: Any, tiny_bundle: Any, pacs: dcmtk.Storescp) -> None:
    from sqlalchemy import select

    from pneumoscan.db import studies
    from pneumoscan.db.schema import Study

    _site, study_uid, _files = reported(tmp_path / "modality", 1, settings, sessions, tiny_bundle, pacs,
                                        results_probability_tolerance=0.05)
    with sessions.begin() as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        now = studies.assess(session, study_uid, tiny_bundle.version)
        assert not studies.changed(study, now, tiny_bundle.version, 0.05)
        nudged = studies.Assessment(**{**now.__dict__, "probability": (now.probability or 0) + 0.04})
        assert not studies.changed(study, nudged, tiny_bundle.version, 0.05)
        moved = studies.Assessment(**{**now.__dict__, "probability": (now.probability or 0) + 0.06})
        assert studies.changed(study, moved, tiny_bundle.version, 0.05)
        assert studies.changed(study, now, "another-model", 0.05)


def test_an_operating_point_that_flips_the_label_sends_a_new_report_and_one_that_does_not_sends_nothing(
        tmp_path: Path, settings: Any, sessions: Any, tiny_bundle: Any, pacs: dcmtk.Storescp) -> None:
    from pneumoscan.db import reviews

    site, study_uid, _files = reported(tmp_path / "modality", 1, settings, sessions, tiny_bundle, pacs)
    before = study_row(sessions, study_uid)
    probability = float(before.probability)
    # A threshold that moves but leaves the label as it was: nothing to tell the PACS.
    same_side = probability + 0.001 if before.label == "NORMAL" else probability - 0.001
    with sessions.begin() as session:
        reviews.record_point(session, tiny_bundle.version, same_side, tiny_bundle.threshold, 0.9, [], {})
    assert round_(site, sessions, tiny_bundle).sent == 0
    assert study_row(sessions, study_uid).revision == 1
    # One that flips it: a new report, naming the first.
    other_side = probability - 0.001 if before.label == "NORMAL" else probability + 0.001
    with sessions.begin() as session:
        reviews.record_point(session, tiny_bundle.version, other_side, tiny_bundle.threshold, 0.9, [], {})
    assert round_(site, sessions, tiny_bundle).sent == 1
    after = study_row(sessions, study_uid)
    assert (after.revision, after.status) == (2, "complete") and after.label != before.label
    first, second = received(pacs, 2)
    assert second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == first.SOPInstanceUID


# --- 3. C-STORE replies by category; bounded retries; our bugs are failed at once -----------------------------


@pytest.mark.parametrize("code", [0xB000, 0xB006, 0xB007])
def test_a_warning_status_means_stored_and_the_result_is_sent_once(
        tmp_path: Path, settings: Any, sessions: Any, tiny_bundle: Any, code: int) -> None:
    with StatusPacs([code], comment="coerced") as peer:
        site = configure(settings, peer.destination)
        study_uid, files = new_study(tmp_path / "modality", 1)
        classify(files, site, sessions, tiny_bundle)
        assert round_(site, sessions, tiny_bundle).sent == 1
        assert round_(site, sessions, tiny_bundle).sent == 0
        assert len(peer.received) == 1
    row = study_row(sessions, study_uid)
    assert (row.send_state, row.send_attempts, row.last_send_error) == ("sent", 0, None)


def test_a_peer_that_keeps_refusing_is_tried_a_bounded_number_of_times_then_the_result_is_failed(
        tmp_path: Path, settings: Any, sessions: Any, tiny_bundle: Any) -> None:
    from pneumoscan.web.metrics import PneumoscanCollector

    with StatusPacs([0xA700], comment="disk full") as peer:
        site = configure(settings, peer.destination, results_max_attempts=3)
        study_uid, files = new_study(tmp_path / "modality", 1)
        classify(files, site, sessions, tiny_bundle)
        for attempt in (1, 2, 3):
            done = round_(site, sessions, tiny_bundle)
            assert (done.sent, done.failed) == (0, 1), attempt
            time.sleep(0.3)  # past the backoff: 0.1 s, then 0.2 s
        assert round_(site, sessions, tiny_bundle).failed == 0
        assert len(peer.received) == 3
    row = study_row(sessions, study_uid)
    assert (row.send_state, row.send_attempts) == ("failed", 3)
    assert row.last_send_error == f"PACS@127.0.0.1:{peer.port} answered C-STORE failure 0xA700: disk full"

    shown = helpers.invoke(["results", "--by", "study", "--format", "json"],
                           helpers.pneumoscan_env(site.data_dir, tiny_bundle.path))
    assert shown.returncode == 0, shown.stderr
    [listed] = [s for s in json.loads(shown.stdout) if s["study_uid"] == study_uid]
    assert listed["send_state"] == "failed" and "0xA700: disk full" in listed["last_send_error"]
    table = helpers.invoke(["results", "--by", "study"], helpers.pneumoscan_env(site.data_dir, tiny_bundle.path))
    assert table.returncode == 0 and "failed" in table.stdout and "0xA700: disk full" in table.stdout, table.stdout
    families = {f.name: f for f in PneumoscanCollector(site, sessions, tiny_bundle.version).collect()}
    by_state = {s.labels["send_state"]: s.value for s in families["pneumoscan_study_results"].samples}
    assert by_state["failed"] == 1 and by_state["sent"] == 0

    # The web app's studies API and page say so too.
    import re

    from fastapi.testclient import TestClient

    from pneumoscan.db.users import add_user
    from pneumoscan.web.app import create_app

    with sessions.begin() as session:
        add_user(session, "rex", "reviewer", "a-long-enough-password")
    client = TestClient(create_app(site, sessions), base_url="http://testserver")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert csrf is not None
    signed_in = client.post("/login", data={"csrf_token": csrf.group(1), "name": "rex",
                                            "password": "a-long-enough-password"}, follow_redirects=False)
    assert signed_in.status_code == 303, signed_in.text
    [api] = [s for s in client.get("/api/studies").json() if s["study_uid"] == study_uid]
    assert api["send_state"] == "failed" and api["last_send_error"].endswith("0xA700: disk full")
    assert "0xA700: disk full" in client.get("/studies").text


class BrokenSender:
    """A sender with a bug of ours in it: what a TypeError from our own code looks like to the study round."""

    peer = "nowhere"

    def __init__(self) -> None:
        self.calls = 0

    def send(self, objects: Any) -> None:
        self.calls += 1
        len(None)  # type: ignore[arg-type]


def test_our_own_bug_is_logged_with_its_traceback_and_the_result_failed_never_retried(
        tmp_path: Path, settings: Any, sessions: Any, tiny_bundle: Any, caplog: pytest.LogCaptureFixture) -> None:
    site = configure(settings, "PACS@127.0.0.1:9")
    study_uid, files = new_study(tmp_path / "modality", 1)
    classify(files, site, sessions, tiny_bundle)
    sender = BrokenSender()
    with caplog.at_level(logging.ERROR, logger="pneumoscan.services.studies"):
        assert round_(site, sessions, tiny_bundle, sender).failed == 1
    assert round_(site, sessions, tiny_bundle, sender).failed == 0
    assert sender.calls == 1
    row = study_row(sessions, study_uid)
    assert row.send_state == "failed" and row.last_send_error.startswith("internal error: TypeError")
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.exc_info is not None and record.exc_info[0] is TypeError


# --- 4. complete only when the last instance arrived long enough ago and every instance has a result ----------


def test_a_study_waits_for_its_instances_still_in_the_outbox_and_counts_quiet_time_from_arrival(
        tmp_path: Path, settings: Any, sessions: Any, tiny_bundle: Any, pacs: dcmtk.Storescp) -> None:
    from datetime import timedelta

    from pneumoscan.db import outbox
    from pneumoscan.db.schema import utcnow

    site = configure(settings, pacs.destination, study_stable_seconds=1.0)
    study_uid, (first, second) = new_study(tmp_path / "modality", 2)
    arrived = utcnow() - timedelta(seconds=30)  # both arrived a while ago; the workers fell behind
    with sessions.begin() as session:
        outbox.record(session, [str(first), str(second)], now=arrived)
    classify([first], site, sessions, tiny_bundle)
    row = study_row(sessions, study_uid)
    assert abs((row.last_instance_at.replace(tzinfo=arrived.tzinfo) - arrived).total_seconds()) < 0.01
    time.sleep(1.1)
    assert round_(site, sessions, tiny_bundle).settled == 0, "completed with an instance still unclassified"
    assert study_row(sessions, study_uid).status == "open"
    classify([second], site, sessions, tiny_bundle)
    # Both arrived 30 s ago: complete at once, not a stable time after the second result was written.
    done = round_(site, sessions, tiny_bundle)
    assert (done.settled, done.sent) == (1, 1)
    row = study_row(sessions, study_uid)
    assert (row.status, row.revision, row.instance_count, row.assessed_count) == ("complete", 1, 2, 2)
    assert len(received(pacs, 1)) == 1
    shutil.rmtree(tmp_path / "modality")
