"""DICOM on the network in distributed mode: `pneumoscan scheduler` receives, a worker classifies, settles, reports.

Real Redis and PostgreSQL, one `pneumoscan worker` and `pneumoscan scheduler FOLDER` with
PNEUMOSCAN_DICOM_PORT set; dcmtk's storescu is the modality and its storescp the PACS. Beat's
settle_studies task (every few seconds, run by the worker) completes the quiet study and sends its report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
from cluster import Database, Service, wait_quiet
from support import dcmtk, dicoms, xrays

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

WAIT = 90.0  # for work to finish; generous because the machine may be busy


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[dcmtk.Storescp]:
    dcmtk.require_tools()
    server = dcmtk.Storescp(tmp_path / "pacs", dcmtk.free_port())
    server.start()
    yield server
    server.stop()


def test_a_received_study_is_classified_by_a_worker_completed_and_sent_back(
        tmp_path: Path, tiny_bundle: Any, database: Database, cluster_env: dict[str, str], pacs: dcmtk.Storescp,
        launch: Callable[..., Service], start_worker: Callable[..., Service]) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    port = dcmtk.free_port()
    env = {**cluster_env, "PNEUMOSCAN_DICOM_PORT": str(port), "PNEUMOSCAN_DICOM_ALLOWED_AES": "MODALITY",
           "PNEUMOSCAN_STUDY_STABLE_SECONDS": "2", "PNEUMOSCAN_RESULTS_DESTINATION": pacs.destination}
    folder = tmp_path / "inbox"
    folder.mkdir()
    worker = start_worker(env, "w1")
    scheduler = launch(["-v", "scheduler", str(folder)], env, "scheduler")
    scheduler.wait_for_log("watching", 30)
    assert f"DICOM receiver PNEUMOSCAN on port {port}" in scheduler.log(), scheduler.log()

    study_uid = str(generate_uid())
    files = [dicoms.write_dicom(xrays.NORMAL_IMAGES[0], tmp_path / "modality" / "j2k.dcm", syntax="j2k-lossless",
                                 StudyInstanceUID=study_uid),
             dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[0], tmp_path / "modality" / "plain.dcm",
                                 StudyInstanceUID=study_uid, ViewPosition="PA")]
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    sent = dcmtk.storescu(port, files, "MODALITY")
    assert sent.returncode == 0, sent.output

    def report() -> Any:
        received = pacs.received()
        if not received:
            return None
        try:
            return pydicom.dcmread(received[0])
        except (OSError, pydicom.errors.InvalidDicomError, EOFError):  # still being written
            return None

    ds = helpers.wait_for(report, WAIT, interval=0.5, message=f"the report at the PACS:\n{worker.log()}")
    # The peer has the report before the sender's transaction that records it as sent commits.
    helpers.wait_for(lambda: database.count("SELECT count(*) FROM studies WHERE send_state = 'sent'") == 1, 30,
                     interval=0.2, message="the study recorded as sent")
    [study] = database.rows("SELECT status, revision, instance_count, assessed_count, label, probability, send_state "
                            "FROM studies WHERE study_uid = %s", study_uid)
    assert study[:4] == ("complete", 1, 2, 2) and study[6] == "sent", study
    rows = database.rows("SELECT i.sop_instance_uid, i.status, p.model_version, p.probability FROM images i "
                         "JOIN predictions p ON p.image_id = i.id")
    assert {r[0] for r in rows} == uids and {r[1:3] for r in rows} == {("done", tiny_bundle.version)}
    assert study[5] == pytest.approx(max(r[3] for r in rows))

    sr = hd.sr.EnhancedSR.from_dataset(ds)
    assert (sr.StudyInstanceUID, sr.VerificationFlag) == (study_uid, "UNVERIFIED")
    [group] = sr.content.get_image_measurement_groups()
    assert group.finding_type.value == {"PNEUMONIA": "233604007", "NORMAL": "17621005"}[study[4]]
    assert {s.referenced_sop_instance_uid for s in group.source_images} == uids
    assert "sent the result of study" in worker.log(), worker.log()

    wait_quiet(6.0)  # more than one settle round: the report is not sent again
    assert len(pacs.received()) == 1

    # Reclassifying everything with the same model says nothing new: the study stays complete, nothing is sent.
    [(started,)] = database.rows("SELECT now()")
    done = helpers.invoke(["reclassify", "--all"], env)
    assert done.returncode == 0, done.stderr
    helpers.wait_for(lambda: database.count("SELECT count(*) FROM images WHERE updated_at >= %s", started) == 2,
                     WAIT, interval=0.3, message=f"the reclassification to finish:\n{worker.log()}")
    seen = set()
    for _ in range(20):  # a few settle rounds (every 5 s), watched: never reopened
        seen.add(database.rows("SELECT status FROM studies WHERE study_uid = %s", study_uid)[0][0])
        wait_quiet(0.4)  # sampling the study's status while settle rounds run
    assert seen == {"complete"}
    [after] = database.rows("SELECT status, revision, send_state, reassessed_at FROM studies WHERE study_uid = %s",
                            study_uid)
    assert after == ("complete", 1, "sent", None), after
    assert len(pacs.received()) == 1
    for service in (scheduler, worker):
        assert "Traceback" not in service.log(), service.log()
