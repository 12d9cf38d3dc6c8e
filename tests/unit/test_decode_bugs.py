"""A bug of ours met while decoding: failed (and so retried), logged with its traceback, never rejected."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import helpers
import pytest
from sqlalchemy import select
from support import dicoms, xrays

from pneumoscan.db.schema import Image
from pneumoscan.db.selection import ReclassifySelection
from pneumoscan.imaging import InternalError, Rejected, decode, raster
from pneumoscan.imaging.dicom import pixels
from pneumoscan.pipeline import classify_paths
from pneumoscan.services.reclassify import reclassify


def _misspelt_window(ds: Any) -> Any:
    """What a refactor's typo does: pydicom's Dataset raises AttributeError for an unknown keyword."""
    return ds.WindowCentre


def _broken_resize(pixels: Any, size: tuple[int, int]) -> Any:
    """A refactor that passes the wrong thing on: the AttributeError comes from our code, not from the file."""
    return pixels.resized(size)


@pytest.mark.parametrize(("module", "helper", "bug", "data"), [
    (pixels, "first_window", _misspelt_window, dicoms.dicom_bytes(xrays.PNEUMONIA_IMAGES[0])),
    (raster, "scaled_gray", _broken_resize, xrays.png_bytes(xrays.PNEUMONIA_IMAGES[0])),
])
def test_a_bug_in_decoding_is_an_internal_error_not_a_rejection(monkeypatch: pytest.MonkeyPatch, module: Any,
                                                                helper: str, bug: Any, data: bytes) -> None:
    decode(data, (64, 64), helpers.POLICY)  # a good file
    monkeypatch.setattr(module, helper, bug)
    with pytest.raises(InternalError) as info:
        decode(data, (64, 64), helpers.POLICY)
    assert not isinstance(info.value, Rejected)
    assert info.value.reason.startswith("internal error") and "AttributeError" in info.value.reason
    assert isinstance(info.value.__cause__, AttributeError)  # kept, with its traceback, for the log


def test_a_bug_in_decoding_leaves_the_file_failed_and_the_nightly_job_retries_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, settings: Any, sessions: Any,
        tiny_bundle: Any, inbox: Path) -> None:
    study = str(dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[0], inbox / "study.dcm"))
    other = str(xrays.write_png(xrays.NORMAL_IMAGES[0], inbox / "normal.png"))
    classify = {"bundle": tiny_bundle, "sessions": sessions, "settings": settings}

    monkeypatch.setattr(pixels, "first_window", _misspelt_window)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.pipeline"):
        first = classify_paths([study, other], **classify)
    assert [r.status for r in first] == ["failed", "done"]  # the rest of the batch goes on
    assert first[0].reason is not None and first[0].reason.startswith("internal error")
    assert "AttributeError" in first[0].reason
    logged = [r for r in caplog.records if r.exc_info is not None and r.levelno >= logging.WARNING]
    assert len(logged) == 1 and study in logged[0].getMessage()
    assert "WindowCentre" in "".join(traceback.format_exception(*logged[0].exc_info))  # type: ignore[misc]
    with sessions() as session:
        assert session.scalar(select(Image.status).where(Image.path == study)) == "failed"

    # The fix ships; the nightly selection picks the failed file (and only it) and it is classified.
    monkeypatch.undo()
    picked: list[str] = []

    def submit(ids: list[int], paths: list[str]) -> None:
        picked.extend(paths)
        classify_paths(paths, image_ids=ids, **classify)

    assert reclassify(sessions, tiny_bundle.version, ReclassifySelection(), submit, batch_size=8) == 1
    assert picked == [study]
    with sessions() as session:
        assert session.scalar(select(Image.status).where(Image.path == study)) == "done"
