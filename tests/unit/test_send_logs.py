"""A send logs one line of ours: pynetdicom's own lines about associations we request are kept out, the receiver's kept.

Real peers: dcmtk's storescp (accepting, and with --refuse), a port where nothing listens, and pynetdicom's own SCP.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from support import dcmtk

from pneumoscan.dicomnet.sender import SendError, StoreSCU

pytestmark = pytest.mark.timeout(120)


def _object() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "OT"
    return ds


def _pacs(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    dcmtk.require_tools()
    port = dcmtk.free_port()
    (tmp_path / "pacs").mkdir(exist_ok=True)
    proc = subprocess.Popen(["storescp", *extra, "-aet", "PACS", "-od", str(tmp_path / "pacs"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dcmtk.wait_for(lambda: dcmtk.echoscu(port, "PROBE", "PACS").returncode == 0 or "--refuse" in extra, 20)
    return proc, port


def _pynetdicom(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("pynetdicom") and r.levelno >= logging.INFO]


def test_a_stored_object_adds_no_pynetdicom_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    proc, port = _pacs(tmp_path)
    try:
        with caplog.at_level(logging.INFO):
            StoreSCU("PNEUMOSCAN", "PACS", "127.0.0.1", port).send([_object()])
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(list((tmp_path / "pacs").iterdir())) == 1
    assert _pynetdicom(caplog) == []


@pytest.mark.parametrize("refusing", [True, False])
def test_a_refusal_is_our_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture, refusing: bool) -> None:
    proc, port = _pacs(tmp_path, "--refuse") if refusing else (None, dcmtk.free_port())  # or nothing listening
    try:
        with caplog.at_level(logging.INFO), pytest.raises(SendError, match="refused or did not answer"):
            StoreSCU("PNEUMOSCAN", "PACS", "127.0.0.1", port, timeout=5).send([_object()])
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    assert _pynetdicom(caplog) == [], [r.getMessage() for r in _pynetdicom(caplog)]


def test_the_receivers_own_lines_still_pass(caplog: pytest.LogCaptureFixture) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    server_ae = AE(ae_title="PACS")
    server_ae.add_supported_context(Verification)
    server_ae.require_calling_aet = ["SOMEONE"]
    port = dcmtk.free_port()
    server = server_ae.start_server(("127.0.0.1", port), block=False)
    try:
        with caplog.at_level(logging.INFO), pytest.raises(SendError):
            StoreSCU("PNEUMOSCAN", "PACS", "127.0.0.1", port, timeout=5).send([_object()])
    finally:
        server.shutdown()
    messages = [r.getMessage() for r in _pynetdicom(caplog)]
    assert messages == ["Rejecting Association"], messages  # the acceptor's; none of the requestor's
