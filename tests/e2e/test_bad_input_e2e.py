"""Bad input end to end: every kind of bad file ends in a row with a precise reason, and nothing is lost."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
from PIL import Image
from support import dicoms, xrays

from pneumoscan.db.selection import ReclassifySelection
from pneumoscan.inputs import iter_files
from pneumoscan.pipeline import classify_paths
from pneumoscan.services.reclassify import reclassify

pytestmark = pytest.mark.timeout(180)

N, P = xrays.NORMAL_IMAGES, xrays.PNEUMONIA_IMAGES


def _classify(paths: list[Path] | list[str], bundle: Any, sessions: Any, settings: Any, **kwargs: Any) -> Any:
    return classify_paths(paths, bundle=bundle, sessions=sessions, settings=settings, **kwargs)


def _db(settings: Any) -> Path:
    return Path(settings.sqlalchemy_url.removeprefix("sqlite:///"))


def _rows(settings: Any, sql: str = "SELECT * FROM images", *args: Any) -> list[sqlite3.Row]:
    """Read the database with plain sqlite3, independent of the code under test."""
    with sqlite3.connect(_db(settings)) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(sql, args).fetchall()


def _by_name(settings: Any) -> dict[str, sqlite3.Row]:
    rows = _rows(settings)
    names = [Path(r["path"]).name for r in rows]
    assert len(names) == len(set(names)), names  # one row per file
    return dict(zip(names, rows, strict=True))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def _png_bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # ten gigapixels claimed
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1 << 16))) + \
        chunk(b"IEND", b"")


def test_every_bad_input_ends_in_a_row_with_its_reason(tmp_path: Path, inbox: Path, tiny_bundle: Any,
                                                       sessions: Any, settings: Any) -> None:
    from pydicom.data import get_testdata_file

    gray = xrays.gray(P[0])
    jpeg, png, dcm = xrays.jpeg_bytes(N[0]), xrays.png_bytes(N[1]), dicoms.dicom_bytes(P[1])
    rng = np.random.default_rng(3)
    files: dict[str, bytes] = {
        "empty.png": b"",
        "truncated.jpeg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "truncated.dcm": dcm[: len(dcm) // 3],
        "random.dcm": rng.bytes(4000), "random.jpg": rng.bytes(4000), "random.png": rng.bytes(4000),
        "really a png.jpg": xrays.png_bytes(P[2]),
        "bomb.png": _png_bomb(),
        "16-bit.png": xrays.png_bytes(P[3], mode="I;16"),
        "16-bit.tif": _encoded(Image.fromarray(xrays.gray(N[2]).astype(np.uint16) * 257), "TIFF"),
        "cmyk.jpg": _encoded(Image.fromarray(xrays.gray(N[3])).convert("CMYK"), "JPEG", quality=95),
        "palette.png": _encoded(Image.fromarray(gray).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE),
                                "PNG"),
        "animated.gif": _encoded(Image.fromarray(gray), "GIF", save_all=True,
                                 append_images=[Image.fromarray(255 - gray)], duration=100),
        "chest x-ray 01.jpeg": xrays.jpeg_bytes(N[1]),
        "röntgen 胸部 ü.png": xrays.png_bytes(N[2], mode="RGB"),
        "-leading-dash.dcm": dicoms.dicom_bytes(P[2]),
        "--help.jpeg": xrays.jpeg_bytes(N[3]),
        "no-preamble.dcm": dicoms.dicom_bytes(P[3], preamble=False, file_meta=False, syntax="implicit-le"),
        "report.dcm": Path(get_testdata_file("reportsi.dcm")).read_bytes(),
        "ct.dcm": Path(get_testdata_file("CT_small.dcm")).read_bytes(),
        # Ignored by rule until renamed: never read, no row.
        ".hidden.jpeg": jpeg, "scan.jpeg.part": jpeg, "scan.tmp": jpeg, "scan.png.crdownload": png, "scan.jpeg~": jpeg,
    }
    for name, data in files.items():
        (inbox / name).write_bytes(data)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "private.jpeg"
    xrays.write_jpeg(P[0], secret)
    xrays.write_jpeg(P[1], outside / "other.jpeg")
    (inbox / "link-outside.jpeg").symlink_to(secret)
    (inbox / "link-inside.jpeg").symlink_to(inbox / "--help.jpeg")
    (inbox / "linked-folder").symlink_to(outside, target_is_directory=True)
    os.mkfifo(inbox / "pipe.jpeg")
    undecodable = os.path.join(os.fsencode(inbox), b"bad-name-\xff.jpeg")
    with open(undecodable, "wb") as fh:
        fh.write(xrays.jpeg_bytes(P[2]))

    paths = list(iter_files(inbox))  # as `pneumoscan scan` finds them
    results = {Path(r.path).name: r for r in _classify(paths, tiny_bundle, sessions, settings)}

    expected = {
        "empty.png": ("rejected", "empty file (0 bytes)"),
        "truncated.jpeg": ("rejected", "corrupt or truncated JPEG"),
        "truncated.png": ("rejected", "corrupt or truncated PNG"),
        "truncated.dcm": ("rejected", "DICOM"),
        "random.dcm": ("rejected", "unrecognized format"),
        "random.jpg": ("rejected", "unrecognized format"),
        "random.png": ("rejected", "unrecognized format"),
        "bomb.png": ("rejected", "image too large"),
        "animated.gif": ("rejected", "animated GIF with 2 frames"),
        # A non-image object is ignored by rule (issue 27): stored once, never counted in its study.
        "report.dcm": ("ignored", "not an image: Basic Text SR Storage is a structured report"),
        "ct.dcm": ("rejected", "modality CT is not a radiograph"),
        "link-outside.jpeg": ("rejected", "symbolic link: not followed"),
        "link-inside.jpeg": ("rejected", "symbolic link: not followed"),
        "linked-folder": ("rejected", "symbolic link: not followed"),
        "pipe.jpeg": ("rejected", "not a regular file: a named pipe"),
        "bad-name-\\xff.jpeg": ("rejected", "file name is not valid UTF-8"),
    }
    done = {"really a png.jpg": "png", "16-bit.png": "png", "16-bit.tif": "tiff", "cmyk.jpg": "jpeg",
            "palette.png": "png", "chest x-ray 01.jpeg": "jpeg", "röntgen 胸部 ü.png": "png",
            "-leading-dash.dcm": "dicom", "--help.jpeg": "jpeg", "no-preamble.dcm": "dicom"}
    assert set(results) == set(expected) | set(done)  # ignored files never reached the pipeline
    rows = _by_name(settings)
    assert set(rows) == set(results)  # every input that was not ignored ends in a row
    for name, (status, words) in expected.items():
        assert (results[name].status, rows[name]["status"]) == (status, status), (name, results[name])
        assert words in results[name].reason and rows[name]["reason"] == results[name].reason, name
        assert "\n" not in results[name].reason and "Traceback" not in results[name].reason
    for name, kind in done.items():
        assert (results[name].status, rows[name]["status"], rows[name]["kind"]) == ("done", "done", kind), name
    assert len(_rows(settings, "SELECT * FROM predictions")) == len(done)

    # Nothing behind a link was read: neither the file outside nor the folder's contents.
    assert not _rows(settings, "SELECT * FROM images WHERE sha256 IN (?, ?)", _sha256(secret.read_bytes()),
                     _sha256((outside / "other.jpeg").read_bytes()))
    assert rows["link-outside.jpeg"]["sha256"] is None and rows["link-outside.jpeg"]["kind"] is None


def test_deleted_or_replaced_between_detection_and_decoding(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                            settings: Any) -> None:
    for i, source in enumerate(N[:4]):
        xrays.write_jpeg(source, inbox / f"{i}.jpeg")
    paths = list(iter_files(inbox))
    (inbox / "0.jpeg").unlink()  # deleted after it was found
    xrays.write_png(P[0], inbox / "new.png")
    os.replace(inbox / "new.png", inbox / "1.jpeg")  # replaced by other content (atomically)
    (inbox / "2.jpeg").write_bytes(b"\xff\xd8\xff" + bytes(100))  # rewritten in place with garbage

    results = _classify(paths, tiny_bundle, sessions, settings)
    assert [(r.status, r.reason and r.reason.split(":")[0]) for r in results] == [
        ("failed", "file disappeared before it could be read"), ("done", None),
        ("rejected", "corrupt or truncated JPEG"), ("done", None)]
    assert results[1].sha256 == _sha256((inbox / "1.jpeg").read_bytes()) and results[1].kind == "png"


def test_a_file_read_while_it_changes_is_failed_not_classified(tiny_bundle: Any, sessions: Any,
                                                               settings: Any) -> None:
    # /proc files report a size of 0 but read as text: the same signal as a file growing during the read.
    proc = Path("/proc/self/status")
    if not proc.exists():
        pytest.skip("needs Linux /proc")
    (result,) = _classify([proc], tiny_bundle, sessions, settings)
    assert (result.status, result.reason) == (
        "failed", "file changed while it was being read; it is read again once it is complete")


def test_a_file_fixed_later_is_classified_again_as_a_new_image(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                               settings: Any) -> None:
    path = inbox / "scan.jpeg"
    data = xrays.jpeg_bytes(N[0])
    path.write_bytes(data[: len(data) // 2])
    (first,) = _classify([path], tiny_bundle, sessions, settings)
    assert first.status == "rejected"
    (again,) = _classify([path], tiny_bundle, sessions, settings)
    assert again.status == "skipped"  # the same broken bytes are not decoded twice

    path.write_bytes(data)  # fixed: same path, new content
    (fixed,) = _classify([path], tiny_bundle, sessions, settings)
    assert fixed.status == "done" and fixed.sha256 == _sha256(data) != first.sha256
    rows = {r["sha256"]: r for r in _rows(settings)}
    # the broken version, seen only at this path, said nothing about any file now: it is gone (issue 27)
    assert {sha: r["status"] for sha, r in rows.items()} == {fixed.sha256: "done"}
    assert rows[fixed.sha256]["path"] == str(path)
    assert len(_rows(settings, "SELECT * FROM predictions")) == 1


def test_reclassifying_an_image_whose_file_is_gone_marks_that_image_failed(
        tmp_path: Path, inbox: Path, tiny_bundle: Any, sessions: Any, settings: Any) -> None:
    old = helpers.bundle_as_version(tiny_bundle, tmp_path / "old-bundle", "tiny-old")
    gone, kept = xrays.write_jpeg(N[0], inbox / "gone.jpeg"), xrays.write_jpeg(N[1], inbox / "kept.jpeg")
    data = gone.read_bytes()
    assert [r.status for r in _classify([gone, kept], old, sessions, settings)] == ["done", "done"]
    before = _by_name(settings)
    gone.unlink()

    def submit(ids: list[int], paths: list[str]) -> None:  # what `pneumoscan reclassify` does, embedded
        _classify(paths, tiny_bundle, sessions, settings, image_ids=ids)

    assert reclassify(sessions, tiny_bundle.version, ReclassifySelection(), submit, batch_size=8) == 2
    after = _by_name(settings)
    assert set(after) == {"gone.jpeg", "kept.jpeg"}  # no second row for the missing file
    row = after["gone.jpeg"]
    assert (row["id"], row["sha256"], row["kind"]) == (before["gone.jpeg"]["id"], _sha256(data), "jpeg")
    assert (row["status"], row["reason"]) == ("failed", "file disappeared before it could be read")
    assert after["kept.jpeg"]["status"] == "done"
    versions = {(r["image_id"], r["model_version"]) for r in _rows(settings, "SELECT * FROM predictions")}
    assert versions == {(row["id"], "tiny-old"), (after["kept.jpeg"]["id"], "tiny-old"),
                        (after["kept.jpeg"]["id"], tiny_bundle.version)}  # the old result is kept

    gone.write_bytes(data)  # back again: the nightly run picks the failed image up and finishes it
    assert reclassify(sessions, tiny_bundle.version, ReclassifySelection(), submit, batch_size=8) == 1
    row = _by_name(settings)["gone.jpeg"]
    assert (row["status"], row["reason"]) == ("done", None)
    assert len(_rows(settings, "SELECT * FROM predictions")) == 4


def test_reclassifying_an_image_whose_file_was_replaced_settles_the_old_image(
        tmp_path: Path, inbox: Path, tiny_bundle: Any, sessions: Any, settings: Any) -> None:
    old = helpers.bundle_as_version(tiny_bundle, tmp_path / "old-bundle", "tiny-old")
    path = xrays.write_jpeg(N[0], inbox / "study.jpeg")
    (first,) = _classify([path], old, sessions, settings)
    xrays.write_jpeg(N[1], inbox / "study.jpeg")  # replaced by other content before the nightly run
    picked: list[list[int]] = []

    def submit(ids: list[int], paths: list[str]) -> None:
        picked.append(ids)
        _classify(paths, tiny_bundle, sessions, settings, image_ids=ids)

    assert reclassify(sessions, tiny_bundle.version, ReclassifySelection(), submit, batch_size=8) == 1
    rows = {r["sha256"]: r for r in _rows(settings)}
    assert len(rows) == 2
    stale = rows[first.sha256]
    assert stale["status"] == "rejected" and "replaced by other content" in stale["reason"]
    fresh = next(r for sha, r in rows.items() if sha != first.sha256)
    assert fresh["status"] == "done" and fresh["path"] == str(path)
    # The next night has nothing left to do: the old image is settled, not picked again and again.
    assert reclassify(sessions, tiny_bundle.version, ReclassifySelection(), submit, batch_size=8) == 0
    assert picked == [[stale["id"]]]
    versions = {(r["image_id"], r["model_version"]) for r in _rows(settings, "SELECT * FROM predictions")}
    assert versions == {(stale["id"], "tiny-old"), (fresh["id"], tiny_bundle.version)}


def test_a_failed_image_with_a_current_prediction_recovers_once_readable(inbox: Path, tiny_bundle: Any,
                                                                         sessions: Any, settings: Any) -> None:
    path = xrays.write_jpeg(N[2], inbox / "flaky.jpeg")
    data = path.read_bytes()
    (done,) = _classify([path], tiny_bundle, sessions, settings)
    image_id = _rows(settings)[0]["id"]
    path.unlink()
    (failed,) = _classify([path], tiny_bundle, sessions, settings, image_ids=[image_id])
    assert failed.status == "failed" and _rows(settings)[0]["status"] == "failed"
    path.write_bytes(data)
    (back,) = _classify([path], tiny_bundle, sessions, settings)
    assert back.status == "done" and back.probability == pytest.approx(done.probability)
    (row,) = _rows(settings)
    assert (row["id"], row["status"], row["reason"]) == (image_id, "done", None)
    assert len(_rows(settings, "SELECT * FROM predictions")) == 1


def test_no_identifier_reaches_the_database_or_the_logs(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                        settings: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Identifiers, some malformed on purpose: pydicom's value validation would quote these in warnings.
    identity = {"patient_id": dicoms.PATIENT_ID, "PatientName": "Doe^Jane^Ünïcode" + "x" * 70,
                "PatientBirthDate": "1980-01-01", "OtherPatientIDs": "OTHER-7781"}
    secrets = ["Doe", "Jane", "Ünïcode", "1980-01-01", "19800101", dicoms.PATIENT_ID, "OTHER-7781"]
    truncated = dicoms.dicom_bytes(P[1], **identity)
    files = {
        "ok.dcm": dicoms.dicom_bytes(P[0], **identity),
        "ct.dcm": dicoms.dicom_bytes(P[1], modality="CT", **identity),
        "hand.dcm": dicoms.dicom_bytes(P[2], body_part="HAND", **identity),
        "cut.dcm": truncated[: len(truncated) - 5000],
        "bare.dcm": dicoms.dicom_bytes(P[3], preamble=False, file_meta=False, syntax="implicit-le", **identity),
    }
    for name, data in files.items():
        (inbox / name).write_bytes(data)
        assert dicoms.PATIENT_ID.encode() in data and b"1980-01-01" in data  # the inputs carry them

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = _classify(sorted(inbox.iterdir()), tiny_bundle, sessions, settings)
    assert {Path(r.path).name: r.status for r in results} == {
        "ok.dcm": "done", "bare.dcm": "done", "ct.dcm": "rejected", "hand.dcm": "rejected", "cut.dcm": "rejected"}
    assert caplog.records  # the rejections were logged

    with sqlite3.connect(_db(settings)) as connection:
        tables = [t for (t,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        dump = "\n".join(repr(row) for t in tables for row in connection.execute(f"SELECT * FROM {t}"))
    said = [caplog.text, dump, *(str(w.message) for w in caught), *(repr(r) for r in results)]
    for secret in secrets:
        assert not any(secret in text for text in said), secret
    refs = {r["patient_ref"] for r in _rows(settings) if r["patient_ref"]}
    assert len(refs) == 1 and dicoms.PATIENT_ID not in refs.pop()  # linkable, yet only as a salted hash


def test_a_dicom_feature_the_decoder_lacks_is_named_and_the_batch_goes_on(inbox: Path, tiny_bundle: Any,
                                                                          sessions: Any, settings: Any) -> None:
    # A VOI LUT with 9-bit entries (the standard allows 8 or 10-16): pydicom raises NotImplementedError.
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(io.BytesIO(dicoms.dicom_bytes(P[0])))
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 9])
    item.add_new("LUTData", "US", list(range(4096)))
    ds.VOILUTSequence = [item]
    ds.save_as(inbox / "odd-lut.dcm")
    good = xrays.write_jpeg(N[0], inbox / "good.jpeg")
    results = _classify([inbox / "odd-lut.dcm", good], tiny_bundle, sessions, settings)
    assert [r.status for r in results] == ["rejected", "done"]
    assert results[0].reason == "unsupported DICOM: '9' bits per LUT entry is not supported"
