"""DICOMweb with a real Orthanc (Debian's orthanc 1.10 and orthanc-dicomweb 1.7): Orthanc's STOW-RS client sends
a study to `pneumoscan serve`, `pneumoscan watch` classifies it and stores its report into Orthanc's
/dicom-web/studies by STOW-RS, through the study's sending state; the STOW-RS client's refusals.

Orthanc runs from a temporary configuration on free ports of 127.0.0.1 with its storage in tmp
(``support.dicomweb.orthanc``); without it these tests skip, and under CI=true they fail.
"""

from __future__ import annotations

import io
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from support import dcmtk
from support.dicomweb import ORTHANC_AUTH, Orthanc, instance, one_study, orthanc, rg1, serve
from support.process import pneumoscan_env, wait_for

from pneumoscan.domain import Status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _stow_from_orthanc(pacs: Orthanc) -> Any:
    [study] = pacs.get("/studies")
    return pacs.post("/dicom-web/servers/pneumoscan/stow", {"Resources": [study]})


def test_orthanc_sends_a_study_to_pneumoscan_by_stow_rs(tmp_path: Path, tiny_bundle: Any,
                                                         pneumoscan_exe: Path) -> None:
    study, files = one_study([rg1().read_bytes(), instance("NORMAL"), instance("PNEUMONIA")])
    sent = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in map(_bytes_io, files)]
    with serve(pneumoscan_exe, tmp_path / "data", tiny_bundle.path, tmp_path / "received") as server, \
            orthanc(tmp_path / "orthanc", server) as pacs:
        for data in files:
            pacs.upload(data)
        answer = _stow_from_orthanc(pacs)  # chunked, 7 MB: far over the app's 64 KiB
        assert answer.status_code == 200, answer.text  # Orthanc checked our reply: one item per instance it sent
        assert server.files() == sorted(f"{uid}.dcm" for uid in sent)
        for uid, data in zip(sent, files, strict=True):
            assert (server.spool / f"{uid}.dcm").read_bytes() == data  # as Orthanc holds it, byte for byte
        # The same study again: nothing new on disk, and Orthanc takes the reply again.
        assert _stow_from_orthanc(pacs).status_code == 200
        assert server.files() == sorted(f"{uid}.dcm" for uid in sent)
        assert pydicom.dcmread(server.spool / f"{sent[0]}.dcm").StudyInstanceUID == study


def _bytes_io(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def test_a_reviewer_token_in_orthanc_is_refused_and_stores_nothing(tmp_path: Path, tiny_bundle: Any,
                                                                   pneumoscan_exe: Path) -> None:
    _, files = one_study([rg1().read_bytes(), instance("NORMAL")])
    with serve(pneumoscan_exe, tmp_path / "data", tiny_bundle.path, tmp_path / "received") as server:
        server.tokens["sender"] = server.tokens["reviewer"]  # Orthanc is configured with the wrong token
        with orthanc(tmp_path / "orthanc", server) as pacs:
            for data in files:
                pacs.upload(data)
            answer = _stow_from_orthanc(pacs)
            assert answer.status_code >= 400, answer.text
        assert server.files() == []


def test_a_study_from_orthanc_comes_back_to_it_as_a_report_by_stow_rs(tmp_path: Path, tiny_bundle: Any,
                                                                       pneumoscan_exe: Path) -> None:
    """The round trip: Orthanc -> STOW-RS -> serve's spool -> watch -> study complete -> SR -> STOW-RS -> Orthanc.

    The first `watch` has the wrong password for Orthanc: the study's result waits in its sending state with
    Orthanc's refusal; the next `watch`, with the right one, sends it, once.
    """
    folder, data = tmp_path / "inbox", tmp_path / "data"
    folder.mkdir()
    study, files = one_study([rg1().read_bytes(), instance("PNEUMONIA")])
    with serve(pneumoscan_exe, data, tiny_bundle.path, folder / "received") as server, \
            orthanc(tmp_path / "orthanc", server) as pacs:
        for item in files:
            pacs.upload(item)
        with _watch(tmp_path / "watch-1.log", pneumoscan_exe, folder, data, tiny_bundle.path, pacs, "wrong-password"):
            assert _stow_from_orthanc(pacs).status_code == 200
            refused = wait_for(lambda: _study(data, study, lambda r: r["send_attempts"] >= 1), 120, 0.5,
                               f"a first attempt to send study {study}")
            assert refused["send_state"] != "sent" and "HTTP 401" in refused["last_send_error"], dict(refused)
        assert pacs.get(f"/dicom-web/studies/{study}/instances?Modality=SR") == []
        with _watch(tmp_path / "watch-2.log", pneumoscan_exe, folder, data, tiny_bundle.path, pacs, ORTHANC_AUTH[1]):
            row = wait_for(lambda: _study(data, study, lambda r: r["send_state"] == "sent"), 120, 0.5,
                           f"study {study} sent")
            assert row["status"] == "complete" and row["instance_count"] == 2
            reports = pacs.get(f"/dicom-web/studies/{study}/instances?Modality=SR")
            assert len(reports) == 1 and reports[0]["00080060"]["Value"] == ["SR"]
            assert len(pacs.get(f"/dicom-web/studies/{study}/instances")) == 3  # the two images and the one report

            # Orthanc sends the study back, our report in it (a routing rule would): no loop, no second report.
            assert _stow_from_orthanc(pacs).status_code == 200
            report_uid = reports[0]["00080018"]["Value"][0]
            wait_for(lambda: _image_status(data, report_uid) == Status.IGNORED, 60, 0.5, "our report ignored")
            time.sleep(2 + 2 * 2 + 1)  # the stable time and two study rounds: time enough to reopen and resend
            again = _study(data, study, lambda r: True)
            assert again is not None and (again["revision"], again["instance_count"], again["send_state"]) == (
                row["revision"], 2, "sent")
            assert len(pacs.get(f"/dicom-web/studies/{study}/instances")) == 3


@contextmanager
def _watch(log_path: Path, exe: Path, folder: Path, data: Path, model: Path, pacs: Orthanc,
           password: str) -> Iterator[None]:
    """`pneumoscan -v watch FOLDER` sending results to ``pacs`` by STOW-RS as ORTHANC_AUTH's user with ``password``."""
    env = pneumoscan_env(data, model, PNEUMOSCAN_STUDY_STABLE_SECONDS="2",
                         PNEUMOSCAN_RESULTS_DICOMWEB_URL=f"{pacs.url}/dicom-web",
                         PNEUMOSCAN_RESULTS_DICOMWEB_USER=ORTHANC_AUTH[0],
                         PNEUMOSCAN_RESULTS_DICOMWEB_PASSWORD=password)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(exe), "-v", "watch", str(folder)], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "watching" in log_path.read_text() or proc.poll() is not None, 90, 0.2, "watch")
        assert proc.poll() is None, log_path.read_text()
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nwatch's log:\n{log_path.read_text()[-4000:]}") from None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _image_status(data: Path, sop_uid: str) -> str | None:
    with sqlite3.connect(data / "pneumoscan.db", timeout=30) as connection:
        row = connection.execute("SELECT status FROM images WHERE sop_instance_uid = ?", (sop_uid,)).fetchone()
    return row[0] if row else None


def _study(data: Path, study: str, ready: Callable[[sqlite3.Row], bool]) -> sqlite3.Row | None:
    with sqlite3.connect(data / "pneumoscan.db", timeout=30) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute("SELECT * FROM studies WHERE study_uid = ?", (study,)).fetchall()
    return rows[0] if rows and ready(rows[0]) else None


def test_the_stow_rs_client_and_its_refusals(tmp_path: Path) -> None:
    from pneumoscan.config import Settings
    from pneumoscan.dicomnet.sender import SendError
    from pneumoscan.dicomnet.stow import StowClient, results_sender

    with orthanc(tmp_path / "orthanc") as pacs:
        settings = Settings(data_dir=tmp_path / "data", patient_salt="s", results_dicomweb_url=f"{pacs.url}/dicom-web",
                            results_dicomweb_user=ORTHANC_AUTH[0], results_dicomweb_password=ORTHANC_AUTH[1])
        client = results_sender(settings)
        assert isinstance(client, StowClient)
        _, [data] = one_study([instance("PNEUMONIA")])
        image = pydicom.dcmread(_bytes_io(data))
        client.send([image])
        found = pacs.get(f"/dicom-web/studies/{image.StudyInstanceUID}/instances")
        assert [item["00080018"]["Value"][0] for item in found] == [image.SOPInstanceUID]
        assert client.ping() == f"{pacs.url}/dicom-web/studies"  # what `doctor` checks
        client.send([image])  # again (a retry after a lost reply): Orthanc keeps one
        assert len(pacs.get(f"/dicom-web/studies/{image.StudyInstanceUID}/instances")) == 1

        with pytest.raises(SendError, match="HTTP 401"):
            StowClient(f"{pacs.url}/dicom-web", user="pacs", password="not-it").send([image])
        with pytest.raises(SendError, match="HTTP 401"):
            StowClient(f"{pacs.url}/dicom-web", user="pacs", password="not-it").ping()
        with pytest.raises(SendError, match="HTTP 404"):
            StowClient(f"{pacs.url}/not-dicom-web", user=ORTHANC_AUTH[0], password=ORTHANC_AUTH[1]).send([image])
    with pytest.raises(SendError, match="did not answer"):
        StowClient(f"http://127.0.0.1:{dcmtk.free_port()}/dicom-web").send([image])
    with pytest.raises(SendError, match="did not answer"):
        StowClient(f"http://127.0.0.1:{dcmtk.free_port()}/dicom-web").ping()
    with pytest.raises(ValueError, match="not both"):  # one destination: which one a result went to is never a guess
        Settings(data_dir=tmp_path / "data", patient_salt="s", results_dicomweb_url="http://127.0.0.1:1/dicom-web",
                 results_destination="PACS@127.0.0.1:104")
