"""Orthanc without its DICOMweb plugin as the PACS, over DIMSE only (issue 27).

Orthanc sends a study to `pneumoscan watch`'s receiver by C-STORE; pneumoscan files its report in Orthanc by
C-STORE; then Orthanc sends the whole study back, our report in it, as a routing rule would. The report is
ignored, the study keeps its revision, and Orthanc never gets a second report.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import dcmtk
from support.dicomweb import instance, one_study, orthanc, rg1
from support.process import pneumoscan_env, wait_for

from pneumoscan.domain import Status

pytestmark = pytest.mark.slow


def _one(data: Path, sql: str, *args: Any) -> sqlite3.Row | None:
    if not (data / "pneumoscan.db").exists():
        return None
    with sqlite3.connect(data / "pneumoscan.db", timeout=30) as connection:
        connection.row_factory = sqlite3.Row
        try:
            row: sqlite3.Row | None = connection.execute(sql, args).fetchone()
        except sqlite3.OperationalError:  # the schema is not there yet
            return None
    return row


def test_orthanc_over_dimse_gets_one_report_and_sending_the_study_back_makes_no_loop(
        tmp_path: Path, tiny_bundle: Any, pneumoscan_exe: Path) -> None:
    folder, data = tmp_path / "inbox", tmp_path / "data"
    folder.mkdir()
    study, files = one_study([rg1().read_bytes(), instance("PNEUMONIA")])
    port = dcmtk.free_port()
    modalities = {"pneumoscan": ["PNEUMOSCAN", "127.0.0.1", port]}
    with orthanc(tmp_path / "orthanc", dicomweb=False, modalities=modalities) as pacs:
        for item in files:
            pacs.upload(item)
        [orthanc_study] = pacs.get("/studies")
        env = pneumoscan_env(data, tiny_bundle.path, PNEUMOSCAN_STUDY_STABLE_SECONDS="2",
                             PNEUMOSCAN_DICOM_PORT=str(port), PNEUMOSCAN_DICOM_ALLOWED_AES="ORTHANC",
                             PNEUMOSCAN_RESULTS_DESTINATION=f"ORTHANC@127.0.0.1:{pacs.dicom_port}")
        log_path = tmp_path / "watch.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([str(pneumoscan_exe), "-v", "watch", str(folder)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "watching" in log_path.read_text() or proc.poll() is not None, 90, 0.2, "watch")
            assert proc.poll() is None, log_path.read_text()

            def send_study() -> None:
                answer = pacs.post("/modalities/pneumoscan/store", {"Resources": [orthanc_study], "Synchronous": True})
                assert answer.status_code == 200, answer.text

            send_study()
            sent = wait_for(lambda: _one(data, "SELECT * FROM studies WHERE study_uid = ? AND send_state = 'sent'",
                                         study), 120, 0.5, f"study {study} sent")
            assert sent["status"] == "complete" and sent["instance_count"] == 2, dict(sent)
            assert len(pacs.get(f"/studies/{orthanc_study}/instances")) == 3  # two images and our one report
            report = _one(data, "SELECT report_uid FROM study_results WHERE report_uid IS NOT NULL")
            assert report is not None

            send_study()  # the routing rule: the whole study again, our report in it
            wait_for(lambda: (row := _one(data, "SELECT status FROM images WHERE sop_instance_uid = ?",
                                          report["report_uid"])) is not None and row["status"] == Status.IGNORED,
                     60, 0.5, "our report back, ignored")
            time.sleep(2 + 2 * 2 + 1)  # the stable time and two study rounds: time enough to reopen and resend
            again = _one(data, "SELECT * FROM studies WHERE study_uid = ?", study)
            assert again is not None
            assert (again["revision"], again["instance_count"], again["send_state"]) == (sent["revision"], 2, "sent")
            assert len(pacs.get(f"/studies/{orthanc_study}/instances")) == 3
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nwatch's log:\n{log_path.read_text()[-4000:]}") from None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
