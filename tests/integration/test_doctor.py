"""`pneumoscan doctor` against real peers: PostgreSQL, Redis, dcmtk's storescp (C-ECHO), an HTTP server, and ports
where nothing listens."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helpers
import pytest
from support import dcmtk

from pneumoscan.config import SHIPPED_MODEL_DIR
from pneumoscan.db import open_database

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

SALT = "a-salt-long-enough-for-doctor"


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)  # a DICOMweb server that wants credentials is still reachable
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def dicomweb() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[dcmtk.Storescp]:
    dcmtk.require_tools()
    scp = dcmtk.Storescp(tmp_path / "pacs", dcmtk.free_port())
    scp.start()
    yield scp
    scp.stop()


def _lines(stdout: str) -> dict[str, str]:
    """check name -> its whole line."""
    return {line[5:].split(":")[0]: line for line in stdout.splitlines() if line[:4] in ("ok  ", "FAIL")}


def test_everything_answers(tmp_path: Path, database: Any, broker_url: str, pacs: dcmtk.Storescp,
                            dicomweb: str) -> None:
    open_database(database.url).dispose()  # migrated to head
    (tmp_path / "inbox").mkdir()
    env = helpers.pneumoscan_env(tmp_path / "data", SHIPPED_MODEL_DIR, PNEUMOSCAN_DATABASE_URL=database.url,
                                 PNEUMOSCAN_BROKER_URL=broker_url, PNEUMOSCAN_PATIENT_SALT=SALT,
                                 PNEUMOSCAN_RESULTS_DESTINATION=pacs.destination,
                                 PNEUMOSCAN_DICOM_SPOOL=str(tmp_path / "spool"))
    proc = helpers.invoke(["doctor", "--inbox", str(tmp_path / "inbox")], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _lines(proc.stdout)
    assert set(lines) == {"database", "broker", "salt", "data folder", "inbox", "DICOM spool", "DICOM destination",
                          "model"}, proc.stdout
    assert all(line.startswith("ok  ") for line in lines.values()), proc.stdout
    assert "0 batches waiting" in lines["broker"] and "answers C-ECHO" in lines["DICOM destination"]
    assert "matches its card" in lines["model"]
    assert "GiB free" in lines["inbox"] and SALT not in proc.stdout
    # results by STOW-RS instead (one destination or the other): a plain HTTP check
    env = {**env, "PNEUMOSCAN_RESULTS_DESTINATION": "", "PNEUMOSCAN_RESULTS_DICOMWEB_URL": dicomweb}
    proc = helpers.invoke(["doctor"], env)
    lines = _lines(proc.stdout)
    assert proc.returncode == 0 and "DICOM destination" not in lines, proc.stdout + proc.stderr
    assert lines["DICOMweb destination"].startswith("ok  ") and "HTTP 401" in lines["DICOMweb destination"]


def test_each_failure_is_one_line_and_the_exit_is_not_zero(tmp_path: Path, database: Any) -> None:
    closed = dcmtk.free_port()
    model = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL_DIR, model)
    with (model / "model.keras").open("ab") as fh:
        fh.write(b"tampered")
    env = helpers.pneumoscan_env(tmp_path / "data", model, PNEUMOSCAN_DATABASE_URL=database.url,  # not migrated
                                 PNEUMOSCAN_BROKER_URL=f"redis://127.0.0.1:{closed}/0", PNEUMOSCAN_PATIENT_SALT="short",
                                 PNEUMOSCAN_RESULTS_DESTINATION=f"PACS@127.0.0.1:{closed}")
    proc = helpers.invoke(["doctor", "--inbox", str(tmp_path / "no-such-inbox")], env)
    assert proc.returncode == 1 and "6 checks failed" in proc.stderr, proc.stdout + proc.stderr
    lines = _lines(proc.stdout)
    failed = {name for name, line in lines.items() if line.startswith("FAIL")}
    assert failed == {"database", "broker", "salt", "inbox", "DICOM destination", "model"}
    assert "pneumoscan db upgrade" in lines["database"] and "does not match the sha256" in lines["model"]
    assert "Traceback" not in proc.stderr
    proc = helpers.invoke(["doctor"], {**env, "PNEUMOSCAN_RESULTS_DESTINATION": "",
                                       "PNEUMOSCAN_RESULTS_DICOMWEB_URL": f"http://127.0.0.1:{closed}/dicom-web"})
    assert _lines(proc.stdout)["DICOMweb destination"].startswith("FAIL") and proc.returncode == 1


def test_embedded_checks_no_broker_and_a_fresh_install_is_fine(tmp_path: Path) -> None:
    env = helpers.pneumoscan_env(tmp_path / "data", SHIPPED_MODEL_DIR, PNEUMOSCAN_PATIENT_SALT=SALT)
    proc = helpers.invoke(["doctor"], env)
    lines = _lines(proc.stdout)
    assert "broker" not in lines and "DICOM destination" not in lines
    assert "made on first use" in lines["database"] and lines["database"].startswith("ok")
    assert proc.returncode == 0, proc.stdout
