"""The DICOM receiver's writes: atomic, idempotent per SOP Instance UID, and a failure answered "out of resources"."""

from __future__ import annotations

import errno
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import dicoms, xrays
from support.dcmtk import free_port

from pneumoscan.dicomnet import receiver
from pneumoscan.dicomnet.receiver import OUT_OF_RESOURCES, SUCCESS, Receiver, write_instance
from pneumoscan.inputs import is_ignored

UID = "1.2.826.0.1.3680043.8.498.1"


def _leftovers(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir() if p.name.startswith("."))


def test_an_instance_is_written_whole_under_its_uid_and_nothing_else_is_left(tmp_path: Path) -> None:
    data = dicoms.dicom_bytes(xrays.NORMAL_IMAGES[0])
    assert write_instance(tmp_path, UID, data) is True
    target = tmp_path / f"{UID}.dcm"
    assert target.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    assert target.stat().st_mode & 0o777 == 0o640


def test_an_instance_being_written_is_ignored_by_the_watcher_until_it_is_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    placed: list[tuple[Path, Path]] = []
    replace = receiver.os.replace

    def spy(source: Any, target: Any) -> None:
        placed.append((Path(source), Path(target)))
        replace(source, target)

    monkeypatch.setattr(receiver.os, "replace", spy)
    assert write_instance(tmp_path, UID, dicoms.dicom_bytes(xrays.NORMAL_IMAGES[0])) is True
    [(temporary, target)] = placed
    assert is_ignored(temporary, tmp_path) and not is_ignored(target, tmp_path)
    assert target == tmp_path / f"{UID}.dcm"


def test_a_resent_instance_leaves_the_first_copy_as_it_is_whatever_its_encoding(tmp_path: Path) -> None:
    first = dicoms.dicom_bytes(xrays.NORMAL_IMAGES[0])
    assert write_instance(tmp_path, UID, first) is True
    target = tmp_path / f"{UID}.dcm"
    stamp = target.stat().st_mtime_ns, target.stat().st_ino
    assert write_instance(tmp_path, UID, first) is False  # the same bytes again
    assert write_instance(tmp_path, UID, dicoms.dicom_bytes(xrays.NORMAL_IMAGES[0], syntax="implicit-le")) is False
    assert target.read_bytes() == first
    assert (target.stat().st_mtime_ns, target.stat().st_ino) == stamp
    assert _leftovers(tmp_path) == []


def test_two_associations_storing_one_instance_at_once_leave_one_file(tmp_path: Path) -> None:
    copies = [dicoms.dicom_bytes(xrays.NORMAL_IMAGES[0], syntax=s) for s in ("explicit-le", "implicit-le")] * 4
    start = threading.Barrier(len(copies))
    written: list[bool] = []

    def store(data: bytes) -> None:
        start.wait()
        written.append(write_instance(tmp_path, UID, data))

    threads = [threading.Thread(target=store, args=(data,)) for data in copies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(written) == [False] * (len(copies) - 1) + [True]
    assert (tmp_path / f"{UID}.dcm").read_bytes() in copies
    assert _leftovers(tmp_path) == []


def test_a_write_that_fails_leaves_no_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(receiver.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_instance(tmp_path, UID, dicoms.dicom_bytes(xrays.NORMAL_IMAGES[0]))
    assert list(tmp_path.iterdir()) == []


def test_a_spool_that_is_not_a_folder_fails_the_write(tmp_path: Path) -> None:
    spool = tmp_path / "received"
    spool.write_bytes(b"")  # unwritable even for root: nothing can be created under a file
    with pytest.raises(OSError) as raised:
        write_instance(spool, UID, b"data")
    assert raised.value.errno == errno.ENOTDIR


def test_the_transfer_syntaxes_offered_are_those_pydicom_decodes_here() -> None:
    from pydicom import uid
    from pydicom.pixels import get_decoder

    offered = receiver.transfer_syntaxes()
    assert len(offered) == len(set(offered))
    assert all(get_decoder(syntax).is_available for syntax in offered)
    # Uncompressed, deflated and RLE need no plugin; the tests' encoders make these compressed ones.
    assert {uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian,
            uid.DeflatedExplicitVRLittleEndian, uid.RLELossless, uid.JPEGBaseline8Bit, uid.JPEGLSLossless,
            uid.JPEG2000Lossless} <= set(offered)
    assert uid.JPEG2000MC not in offered  # no decoder in pydicom: a sender must transcode it first


# --- the SCP, over a real association from pynetdicom ----------------------------------------------


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Receiver]:
    scp = Receiver(tmp_path / "received", port=free_port(), host="127.0.0.1", allowed_aes=frozenset({"MODALITY"}))
    scp.start()
    yield scp
    scp.stop()


def _store(scp: Receiver, ds: Any, calling: str = "MODALITY") -> int | None:
    """C-STORE ``ds`` to the receiver; its status, or None when the association was refused."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PNEUMOSCAN")
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status)


def _dataset(syntax: str = "explicit-le") -> Any:
    import pydicom

    return pydicom.dcmread(io.BytesIO(dicoms.dicom_bytes(xrays.NORMAL_IMAGES[0], syntax=syntax)))


def test_the_scp_stores_as_received_answers_success_and_refuses_other_aes(running: Receiver) -> None:
    ds = _dataset("jpeg-ls-lossless")
    assert _store(running, ds) == SUCCESS
    kept = running.spool / f"{ds.SOPInstanceUID}.dcm"
    import pydicom

    stored = pydicom.dcmread(kept)
    assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID and stored.PixelData == ds.PixelData
    assert _store(running, ds) == SUCCESS  # again: idempotent
    assert _store(running, _dataset(), calling="INTRUDER") is None
    assert sorted(p.name for p in running.spool.iterdir()) == [kept.name]


def test_the_scp_answers_out_of_resources_when_it_cannot_write(running: Receiver) -> None:
    os.rmdir(running.spool)
    running.spool.write_bytes(b"")  # the spool became unusable after the start
    assert _store(running, _dataset()) == OUT_OF_RESOURCES
    assert running.spool.read_bytes() == b""
