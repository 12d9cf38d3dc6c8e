"""STOW-RS's parts that need no server: the Content-Type, the multipart reader, the per-instance rules, the reply."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from support.dicomweb import instance, multipart, sop_uid

from pneumoscan.dicomnet.stow import (
    CANNOT_UNDERSTAND,
    SOP_CLASS_NOT_SUPPORTED,
    SYNTAX_NOT_SUPPORTED,
    MultipartError,
    Stored,
    boundary_of,
    iter_parts,
    store_part,
    store_study,
    stow_reply,
)


def test_the_content_type_must_be_multipart_related_of_dicom_with_a_boundary() -> None:
    assert boundary_of('multipart/related; type="application/dicom"; boundary=abc') == "abc"
    assert boundary_of('Multipart/Related; boundary="a b"; type=application/dicom') == "a b"
    assert boundary_of("multipart/related; boundary=x") == "x"  # type absent: application/dicom
    for bad in ("application/dicom", "multipart/form-data; boundary=x", "multipart/related; type=application/dicom",
                'multipart/related; type="application/dicom+json"; boundary=x', ""):
        with pytest.raises(ValueError):
            boundary_of(bad)


def test_parts_are_found_between_boundaries_whatever_their_bytes() -> None:
    tricky = b"--b0undar\r\n--b0undaryX not the end \r\n"
    body = b"preamble\r\n" + multipart([b"one", tricky, b""])
    parts = [(kind, body[start:end]) for kind, start, end in iter_parts(body, "b0undary")]
    assert parts == [("application/dicom", b"one"), ("application/dicom", tricky), ("application/dicom", b"")]
    no_headers = b"--b\r\n\r\nbare\r\n--b--"
    assert [no_headers[s:e] for _, s, e in iter_parts(no_headers, "b")] == [b"bare"]
    for broken in (b"no boundary at all", b"--b0undary\r\nContent-Type: x", b"--b0undary\r\n\r\nnever closed"):
        with pytest.raises(MultipartError):
            list(iter_parts(broken, "b0undary"))


def test_each_part_is_checked_as_the_receiver_checks_an_instance(tmp_path: Path) -> None:
    import pydicom

    good = instance()
    assert store_part(tmp_path, "application/dicom", good) == Stored(pydicom.dcmread(io.BytesIO(good)).SOPClassUID,
                                                                     sop_uid(good))
    assert (tmp_path / f"{sop_uid(good)}.dcm").read_bytes() == good
    assert store_part(tmp_path, "application/dicom", good).failure is None  # again: already there, kept
    assert store_part(tmp_path, "application/json", good).failure == CANNOT_UNDERSTAND
    assert store_part(tmp_path, "application/dicom", b"\0" * 200).failure == CANNOT_UNDERSTAND

    ds = pydicom.dcmread(io.BytesIO(instance()))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert store_part(tmp_path, "application/dicom", out.getvalue()).failure == SOP_CLASS_NOT_SUPPORTED

    ds = pydicom.dcmread(io.BytesIO(instance()))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder here
    del ds.PixelData  # (only the file meta is read to refuse it)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    assert store_part(tmp_path, "application/dicom", out.getvalue()).failure == SYNTAX_NOT_SUPPORTED
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{sop_uid(good)}.dcm"]


def test_a_broken_body_stores_nothing_not_even_its_good_parts(tmp_path: Path) -> None:
    body = multipart([instance(), instance()])[:-8]  # the closing boundary cut off
    with (tmp_path / "body").open("w+b") as fh, pytest.raises(MultipartError):
        fh.write(body)
        store_study(tmp_path / "spool", fh, "b0undary")
    assert list((tmp_path / "spool").iterdir()) == []


def test_the_reply_status_says_all_some_or_none() -> None:
    ok, bad = Stored("1.2", "1.2.3"), Stored("1.2", "1.2.4", CANNOT_UNDERSTAND)
    assert stow_reply([ok, ok])[0] == 200
    status, reply = stow_reply([ok, bad])
    assert status == 202 and len(reply["00081199"]["Value"]) == 1
    assert reply["00081198"]["Value"] == [{"00081150": {"vr": "UI", "Value": ["1.2"]},
                                           "00081155": {"vr": "UI", "Value": ["1.2.4"]},
                                           "00081197": {"vr": "US", "Value": [CANNOT_UNDERSTAND]}}]
    status, reply = stow_reply([bad])
    assert status == 409 and "00081199" not in reply
