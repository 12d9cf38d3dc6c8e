"""The viewer's full-resolution values (/images/{id}/values.bin): the file's own values and windows, by id only,
signed in, never cached; a file the pipeline rejected (a lateral) is shown too."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from support import dicoms, xrays
from web_support import Site


def _parse(payload: bytes) -> tuple[dict[str, Any], np.ndarray]:
    (length,) = struct.unpack("<I", payload[:4])
    meta = json.loads(payload[4:4 + length])
    values = np.frombuffer(payload[4 + length:], dtype="<u2").reshape(meta["height"], meta["width"])
    return meta, values


def test_a_dicoms_own_values_and_windows(site: Site, reviewer: Any) -> None:
    import pydicom

    image_id = site.ids["d0.dcm"]
    response = reviewer.get(f"/images/{image_id}/values.bin")
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    meta, values = _parse(response.content)
    ds = pydicom.dcmread(site.paths["d0.dcm"])
    stored = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    assert values.shape == stored.shape
    assert np.allclose(meta["low"] + values * meta["step"], stored, atol=meta["step"])
    assert meta["kind"] == "dicom" and {w["name"] for w in meta["windows"]} >= {"lung", "full range"}
    assert "patient" not in response.text.lower() and dicoms.PATIENT_ID not in response.text
    assert reviewer.get(f"/images/{image_id}/values.bin").content == response.content  # from the cache


def test_a_raster_image_and_a_rejected_lateral(site: Site, reviewer: Any, tmp_path: Any) -> None:
    meta, values = _parse(reviewer.get(f"/images/{site.ids['n0.png']}/values.bin").content)
    assert meta["kind"] == "raster" and values.max() <= 255 and values.shape == (meta["height"], meta["width"])
    from pneumoscan.pipeline import classify_paths

    lateral = dicoms.write_dicom(xrays.NORMAL_IMAGES[2], tmp_path / "lateral.dcm", ViewPosition="LL")
    (result,) = classify_paths([str(lateral)], bundle=site.app.state.renderer.bundle(), sessions=site.db,
                               settings=site.settings)
    assert result.status == "rejected"
    from sqlalchemy import select

    from pneumoscan.db.schema import Image

    with site.db() as session:
        image_id = session.scalar(select(Image.id).where(Image.path == str(lateral.resolve())))
    picture = reviewer.get(f"/api/images/{image_id}/image.png")
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG"), picture.text
    assert reviewer.get(f"/images/{image_id}/values.bin").status_code == 200


def test_values_need_a_sign_in_and_a_real_id(site: Site, reviewer: Any) -> None:
    image_id = site.ids["d0.dcm"]
    assert site.client().get(f"/images/{image_id}/values.bin", follow_redirects=False).status_code == 303
    for bad in ("2" * 25, "abc", "0", "999999"):
        assert reviewer.get(f"/images/{bad}/values.bin").status_code == 404, bad
    assert reviewer.get(f"/images/{site.ids['bad.png']}/values.bin").status_code == 422  # not decodable


def test_the_first_paint_is_the_values_at_their_first_window_made_from_one_reading(site: Site, reviewer: Any,
                                                                                 monkeypatch: Any) -> None:
    import io

    from PIL import Image

    from pneumoscan.web import render

    image_id = site.ids["d0.dcm"]
    readings: list[int] = []
    real = render.file_values
    monkeypatch.setattr(render, "file_values", lambda data: readings.append(1) or real(data))
    preview = reviewer.get(f"/images/{image_id}/preview.png")
    assert preview.status_code == 200 and preview.headers["cache-control"] == "no-store"
    assert preview.headers["content-type"] == "image/png"
    values = reviewer.get(f"/images/{image_id}/values.bin")
    assert values.status_code == 200 and readings == [1]  # both from one reading of the file, then the cache
    meta, full = _parse(values.content)
    shown = np.asarray(Image.open(io.BytesIO(preview.content)))
    factor = -(-max(meta["width"], meta["height"]) // render.DISPLAY_SIDE)
    assert shown.shape == (meta["height"] // factor, meta["width"] // factor)
    window = meta["windows"][0]
    grey = np.clip((meta["low"] + full * meta["step"] - window["center"] + window["width"] / 2)
                   * 255 / window["width"], 0, 255)
    if meta["invert"]:
        grey = 255 - grey
    expected = grey[:shown.shape[0] * factor, :shown.shape[1] * factor]
    expected = expected.reshape(shown.shape[0], factor, shown.shape[1], factor).mean(axis=(1, 3))
    assert np.abs(shown.astype(np.float64) - expected).mean() < 1.5  # the viewer's first window, box-reduced
    assert site.client().get(f"/images/{image_id}/preview.png", follow_redirects=False).status_code == 303
    assert reviewer.get("/images/999999/preview.png").status_code == 404
    assert reviewer.get(f"/images/{site.ids['bad.png']}/preview.png").status_code == 422


@pytest.mark.parametrize("extra", [{}, {"RescaleSlope": 0.5, "RescaleIntercept": -1024}, {"PixelRepresentation": 1}],
                         ids=["unsigned", "rescaled", "signed"])
def test_values_are_the_modality_values_within_a_step(tmp_path: Any, extra: dict[str, Any]) -> None:
    import pydicom

    from pneumoscan.web.render import file_values

    stored = xrays.twelve_bit(xrays.NORMAL_IMAGES[0]).astype(np.int32)
    if extra.get("PixelRepresentation"):
        stored = stored - 2048  # negative values too, kept as their 16-bit patterns
    path = dicoms.write_dicom(xrays.NORMAL_IMAGES[0], tmp_path / "x.dcm", stored=stored, **extra)
    values, meta = file_values(path.read_bytes())
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + \
        float(ds.get("RescaleIntercept", 0))
    assert values.dtype == np.uint16 and values.shape == expected.shape
    assert np.abs(meta["low"] + values * meta["step"] - expected).max() <= meta["step"] / 2 + 1e-6
    assert meta["low"] == expected.min()
