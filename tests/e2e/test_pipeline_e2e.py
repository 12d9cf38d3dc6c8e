"""classify_paths end to end: real files, the tiny real model and a real SQLite database."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import helpers
import numpy as np
import pytest
from support import dicoms, xrays

from pneumoscan.domain import SkipReason
from pneumoscan.imaging import decode, patient_ref
from pneumoscan.pipeline import classify_paths

pytestmark = pytest.mark.timeout(120)


def _classify(paths: list[Path], bundle: Any, sessions: Any, settings: Any) -> Any:
    return classify_paths(paths, bundle=bundle, sessions=sessions, settings=settings)


def _db_file(settings: Any) -> Path:
    return Path(settings.sqlalchemy_url.removeprefix("sqlite:///"))


def _rows(settings: Any, sql: str, *args: Any) -> list[sqlite3.Row]:
    """Read the database with plain sqlite3, independent of the code under test."""
    with sqlite3.connect(_db_file(settings)) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute(sql, args).fetchall()


def _count(settings: Any, table: str) -> int:
    return int(_rows(settings, f"SELECT count(*) AS n FROM {table}")[0]["n"])


def _dump(settings: Any) -> str:
    """Every value of every row of every table, as one string."""
    with sqlite3.connect(_db_file(settings)) as connection:
        tables = [t for (t,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert {"images", "predictions", "reviews"} <= set(tables)
        return "\n".join(repr(row) for t in tables for row in connection.execute(f"SELECT * FROM {t}"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_classifies_jpeg_png_and_dicom(mixed_files: dict[str, tuple[Path, str]], tiny_bundle: Any,
                                       sessions: Any, settings: Any) -> None:
    paths = [path for path, _ in mixed_files.values()]
    results = _classify(paths, tiny_bundle, sessions, settings)

    assert [r.path for r in results] == [str(p) for p in paths]  # one result per path, in order
    for (path, kind), result in zip(mixed_files.values(), results, strict=True):
        assert result.status == "done", result
        assert result.kind == kind
        assert result.sha256 == _sha256(path)
        assert result.byte_size == path.stat().st_size
        assert result.model_version == "tiny-test-1"
        assert result.threshold == 0.5
        assert 0.0 <= result.probability <= 1.0
        assert result.label == ("PNEUMONIA" if result.probability >= 0.5 else "NORMAL")

    # The stored probabilities are what the model says about each decoded image on its own.
    policy = helpers.policy(salt=settings.salt)
    expected = [float(tiny_bundle.predict(decode(p.read_bytes(), (64, 64), policy).pixels[None])[0]) for p in paths]
    np.testing.assert_allclose([r.probability for r in results], expected, atol=1e-5)

    rows = {r["path"]: r for r in _rows(settings, """
        SELECT i.*, p.model_version, p.probability, p.label, p.threshold
        FROM images i JOIN predictions p ON p.image_id = i.id""")}
    assert set(rows) == {str(p) for p in paths}
    for result in results:
        row = rows[result.path]
        assert row["status"] == "done"
        assert row["kind"] == result.kind
        assert row["sha256"] == result.sha256
        assert row["model_version"] == "tiny-test-1"
        assert row["probability"] == pytest.approx(result.probability)
        assert row["label"] == result.label
        assert row["reason"] is None
    assert _count(settings, "images") == _count(settings, "predictions") == len(paths)


def test_dicom_metadata_is_kept_and_identity_is_not(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                    settings: Any) -> None:
    ds = dicoms.dicom_dataset(xrays.PNEUMONIA_IMAGES[0])
    path = inbox / "study.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    for secret in (b"Doe^Jane", b"19800101", b"PAT123"):
        assert secret in raw  # the input really carries the identifiers

    (result,) = _classify([path], tiny_bundle, sessions, settings)
    assert result.status == "done" and result.kind == "dicom"

    (row,) = _rows(settings, "SELECT * FROM images")
    assert row["study_uid"] == ds.StudyInstanceUID
    assert row["series_uid"] == ds.SeriesInstanceUID
    assert row["sop_instance_uid"] == ds.SOPInstanceUID
    assert (row["modality"], row["body_part"], row["view_position"], row["study_date"]) == (
        "DX", "CHEST", "AP", "20240315")
    assert re.fullmatch(r"[0-9a-f]{64}", row["patient_ref"])
    assert row["patient_ref"] == patient_ref("PAT123", b"test-salt")
    assert row["patient_ref"] != hashlib.sha256(b"PAT123").hexdigest()  # salted, not a bare hash

    dump = _dump(settings)
    assert ds.SOPInstanceUID in dump  # the dump does show the stored values ...
    for secret in ("Doe^Jane", "Doe", "Jane", "19800101", "PAT123"):
        assert secret not in dump  # ... and none of the identifiers
    # Nor anywhere in the database files on disk (main file and write-ahead log).
    for name in os.listdir(_db_file(settings).parent):
        if name.startswith("pneumoscan.db"):
            content = (_db_file(settings).parent / name).read_bytes()
            for secret in (b"Doe^Jane", b"19800101", b"PAT123"):
                assert secret not in content, (name, secret)


def test_bad_files_are_rejected_and_the_batch_goes_on(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                      settings: Any) -> None:
    good_a = xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "good-a.jpeg")
    corrupt = inbox / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(1).bytes(5000))
    data = xrays.jpeg_bytes(xrays.PNEUMONIA_IMAGES[0])
    truncated = inbox / "truncated.jpeg"
    truncated.write_bytes(data[: len(data) // 2])
    empty = inbox / "empty.png"
    empty.write_bytes(b"")
    not_chest = inbox / "ct.dcm"
    from pydicom.data import get_testdata_file
    shutil.copyfile(get_testdata_file("CT_small.dcm"), not_chest)
    good_b = dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[1], inbox / "good-b.dcm")
    missing = inbox / "vanished.jpeg"

    paths = [good_a, corrupt, truncated, empty, not_chest, missing, good_b]
    assert len(paths) <= settings.batch_size  # all in ONE batch
    results = {Path(r.path).name: r for r in _classify(paths, tiny_bundle, sessions, settings)}

    assert results["good-a.jpeg"].status == "done"
    assert results["good-b.dcm"].status == "done"
    expectations = {
        "corrupt.jpg": ("rejected", "unrecognized format"),
        "truncated.jpeg": ("rejected", "truncated JPEG"),
        "empty.png": ("rejected", "empty file"),
        "ct.dcm": ("rejected", "modality CT is not a radiograph"),
        "vanished.jpeg": ("failed", "disappeared"),
    }
    for name, (status, words) in expectations.items():
        result = results[name]
        assert result.status == status, result
        assert result.reason and words in result.reason, result.reason
        assert "Traceback" not in result.reason and "\n" not in result.reason
        assert result.probability is None

    stored = {Path(r["path"]).name: r for r in _rows(settings, "SELECT * FROM images")}
    assert set(stored) == set(results)  # every input ends in a row
    for name, (status, words) in expectations.items():
        assert stored[name]["status"] == status and words in stored[name]["reason"]
    assert stored["corrupt.jpg"]["sha256"] == _sha256(corrupt)
    assert stored["vanished.jpeg"]["sha256"] is None
    assert _count(settings, "predictions") == 2


def test_same_bytes_under_two_names_are_one_image(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                  settings: Any) -> None:
    first = xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "first.jpeg")
    second = xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "sub" / "copy of first.jpg")
    other = xrays.write_jpeg(xrays.NORMAL_IMAGES[1], inbox / "other.jpeg")
    results = _classify([first, second, other], tiny_bundle, sessions, settings)
    assert [r.status for r in results] == ["done", "skipped", "done"]
    assert results[1].sha256 == results[0].sha256
    assert "same content" in results[1].reason
    assert [r.skip for r in results] == [None, SkipReason.DUPLICATE, None]
    assert _count(settings, "images") == 2
    assert _count(settings, "predictions") == 2
    rows = _rows(settings, "SELECT count(*) AS n FROM images WHERE sha256 = ?", _sha256(first))
    assert rows[0]["n"] == 1

    # Across calls too: the copy found later is not predicted again.
    third = xrays.write_jpeg(xrays.NORMAL_IMAGES[0], inbox / "third.jpeg")
    (again,) = _classify([third], tiny_bundle, sessions, settings)
    assert again.status == "skipped" and again.skip == SkipReason.SETTLED
    assert _count(settings, "predictions") == 2


def test_running_twice_writes_nothing_new(mixed_files: dict[str, tuple[Path, str]], inbox: Path,
                                          tiny_bundle: Any, sessions: Any, settings: Any) -> None:
    bad = inbox / "bad.jpg"
    bad.write_bytes(b"not an image at all" * 20)
    paths = [p for p, _ in mixed_files.values()] + [bad]
    first = _classify(paths, tiny_bundle, sessions, settings)
    images, predictions = _count(settings, "images"), _count(settings, "predictions")
    stored = _rows(settings, "SELECT id, probability, created_at FROM predictions ORDER BY id")
    assert predictions == len(mixed_files)

    second = _classify(paths, tiny_bundle, sessions, settings)
    assert {r.status for r in second} == {"skipped"}
    assert {r.skip for r in second} == {SkipReason.SETTLED}  # the rejected bad.jpg too: same bytes, same fate
    assert [r.sha256 for r in second] == [r.sha256 for r in first]
    assert _count(settings, "images") == images
    assert _count(settings, "predictions") == predictions
    assert _rows(settings, "SELECT id, probability, created_at FROM predictions ORDER BY id") == stored


def test_batches_larger_than_batch_size(inbox: Path, tiny_bundle: Any, sessions: Any, settings: Any) -> None:
    # 8 distinct JPEG and 8 distinct PNG: 16 files, two batches of 8; on_batch sees each batch.
    paths = [xrays.write_jpeg(s, inbox / f"{s.stem}.jpeg") for s in xrays.ALL_IMAGES]
    paths += [xrays.write_png(s, inbox / f"{s.stem}.png") for s in xrays.ALL_IMAGES]
    batches: list[int] = []
    results = classify_paths(paths, bundle=tiny_bundle, sessions=sessions, settings=settings,
                             on_batch=lambda batch: batches.append(len(batch)))
    assert batches == [8, 8]
    assert [r.status for r in results] == ["done"] * 16
    assert _count(settings, "predictions") == 16


def test_a_duplicate_in_a_later_batch_is_not_decoded_again(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                           settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import pneumoscan.pipeline as pipeline

    paths = [xrays.write_jpeg(s, inbox / f"{s.stem}.jpeg") for s in xrays.ALL_IMAGES[:8]]
    copy = xrays.write_jpeg(xrays.ALL_IMAGES[0], inbox / "later copy.jpeg")  # batch 2; its original is in batch 1
    decoded: list[str] = []
    real_decode = pipeline._decode
    monkeypatch.setattr(pipeline, "_decode", lambda read, *a: decoded.append(read.path) or real_decode(read, *a))
    results = _classify([*paths, copy], tiny_bundle, sessions, settings)
    assert [r.status for r in results] == ["done"] * 8 + ["skipped"]
    assert results[-1].reason == f"same content as {paths[0]}"  # known from this call, not from the database
    assert results[-1].skip == SkipReason.DUPLICATE
    assert str(copy) not in decoded and len(decoded) == 8
    assert _count(settings, "predictions") == 8
    assert _rows(settings, "SELECT path FROM images WHERE sha256 = ?", _sha256(copy))[0]["path"] == str(copy)


def test_the_next_batch_is_prepared_while_this_one_is_predicted(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                                settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import pneumoscan.pipeline as pipeline

    paths = [xrays.write_jpeg(s, inbox / f"{s.stem}.jpeg") for s in xrays.ALL_IMAGES]
    paths += [xrays.write_png(s, inbox / f"{s.stem}.png") for s in xrays.ALL_IMAGES]
    events: list[tuple[str, float]] = []
    real_prepare, real_infer = pipeline._prepare, type(tiny_bundle).infer

    def prepare(paths: Any, *args: Any) -> Any:
        events.append(("prepare starts", time.monotonic()))
        return real_prepare(paths, *args)

    def infer(bundle: Any, batch: Any) -> Any:
        events.append(("predict starts", time.monotonic()))
        time.sleep(1.0)  # a slow model: the next batch's preparation must run meanwhile
        outputs = real_infer(bundle, batch)
        events.append(("predict ends", time.monotonic()))
        return outputs

    monkeypatch.setattr(pipeline, "_prepare", prepare)
    monkeypatch.setattr(type(tiny_bundle), "infer", infer)
    results = _classify(paths, tiny_bundle, sessions, settings)
    assert [r.status for r in results] == ["done"] * 16
    names = [name for name, _ in events]
    assert sorted(names) == sorted(["prepare starts"] * 2 + ["predict starts", "predict ends"] * 2)
    second_prepare = [i for i, name in enumerate(names) if name == "prepare starts"][1]
    assert second_prepare < names.index("predict ends")  # batch 2 was prepared while batch 1 was predicted


def test_a_file_that_could_not_be_read_gets_one_row_once_readable(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                                  settings: Any) -> None:
    path = inbox / "late.jpeg"
    (first,) = _classify([path], tiny_bundle, sessions, settings)
    assert first.status == "failed" and "disappeared" in first.reason
    assert [(r["path"], r["status"]) for r in _rows(settings, "SELECT * FROM images")] == [(str(path), "failed")]

    xrays.write_jpeg(xrays.NORMAL_IMAGES[0], path)
    (second,) = _classify([path], tiny_bundle, sessions, settings)
    assert second.status == "done"
    rows = _rows(settings, "SELECT * FROM images")
    assert [(r["path"], r["status"], r["sha256"]) for r in rows] == [(str(path), "done", _sha256(path))]
    assert _count(settings, "predictions") == 1


def test_dicom_variants_predict_like_their_source_jpeg(inbox: Path, tiny_bundle: Any, sessions: Any,
                                                       settings: Any) -> None:
    """Chest DICOMs made from a real JPEG, in every transfer syntax and as MONOCHROME1, signed and
    rescaled variants, get the prediction of the JPEG itself through the whole pipeline."""
    window = dicoms.IDENTITY_WINDOW_12
    variants: dict[str, dict[str, Any]] = {
        "mono1": {"photometric": "MONOCHROME1", **window},
        "rescaled": {"RescaleSlope": 0.5, "RescaleIntercept": -1000, "WindowCenter": 24.25, "WindowWidth": 2048.5},
    }
    sources = [xrays.NORMAL_IMAGES[0], xrays.PNEUMONIA_IMAGES[0]]
    origin: dict[str, Path] = {}
    for source in sources:
        origin[xrays.write_jpeg(source, inbox / f"{source.stem}.jpeg").name] = source
        for syntax in dicoms.TRANSFER_SYNTAXES:
            options = {"bits": 8, **dicoms.IDENTITY_WINDOW_8} if syntax == "jpeg-baseline" else window
            origin[dicoms.write_dicom(source, inbox / f"{source.stem}-{syntax}.dcm", syntax=syntax,
                                       **options).name] = source
        signed = (xrays.twelve_bit(source).astype(np.int16) - 2048).view(np.uint16)
        for syntax in ("explicit-be", "rle", "j2k-lossless", "jpeg-lossless-sv1"):
            variants[f"signed-{syntax}"] = {"stored": signed, "PixelRepresentation": 1, "RescaleSlope": 1,
                                            "RescaleIntercept": 2048, "syntax": syntax, **window}
        for name, options in variants.items():
            origin[dicoms.write_dicom(source, inbox / f"{source.stem}-{name}.dcm", **options).name] = source

    results = {Path(r.path).name: r for r in _classify(sorted(inbox.iterdir()), tiny_bundle, sessions, settings)}
    assert all(r.status == "done" for r in results.values()), [r for r in results.values() if r.status != "done"]
    for name, source in origin.items():
        reference = results[f"{source.stem}.jpeg"].probability
        assert results[name].probability == pytest.approx(reference, abs=1e-3), name
        assert results[name].label == results[f"{source.stem}.jpeg"].label, name
    assert len(results) == len(origin) == 2 * (1 + len(dicoms.TRANSFER_SYNTAXES) + len(variants))
