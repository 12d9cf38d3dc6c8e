"""The viewer in a real headless Chromium at 1400x900: a 224 px image and a 2000x1700 DICOM open filling the
stage, wheel zoom and drag pan change the view, a window change changes the pixels (client-side, timed), the
heatmap says "loading" before the overlay, the study's lateral is shown marked "not assessed"; screenshots."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait
from support import dicoms, xrays

from . import chromium
from .conftest import ADMIN, PASSWORD, Served

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
WAIT = 60
HEATMAP_WAIT = 180
STUDY = "1.2.826.0.1.3680043.8.498.29290290290"
VIEW = "const s = document.getElementById('stage'); const c = document.getElementById('view');" \
       "return {scale: s.view.scale, x: s.view.x, y: s.view.y, width: s.viewState.width," \
       " height: s.viewState.height, cw: c.width, ch: c.height, full: s.dataset.full === 'true'," \
       " firstPaint: Number(s.dataset.firstPaintMs), fullPaint: Number(s.dataset.fullPaintMs)," \
       " windowMs: Number(s.dataset.windowMs), heatmap: s.dataset.heatmapState || 'off'};"
CENTRE_SUM = "const c = document.getElementById('view'); const d = c.getContext('2d')" \
             ".getImageData(c.width / 2 - 100, c.height / 2 - 100, 200, 200).data;" \
             "let t = 0; for (let i = 0; i < d.length; i += 4) t += d[i]; return t;"


def _wait(driver: Any, timeout: float = WAIT) -> WebDriverWait:
    return WebDriverWait(driver, timeout, poll_frequency=0.1)


@pytest.fixture(scope="module")
def big_study(served: Served, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """A 2000x1700 12-bit frontal DICOM with two windows of its own, and a lateral of the same study."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("big-study")
    source = xrays.PNEUMONIA_IMAGES[0]
    values = np.asarray(Image.fromarray(xrays.twelve_bit(source).astype(np.float32)).resize((2000, 1700)))
    stored = np.clip(values, 0, 4095).astype(np.uint16)
    dicoms.write_dicom(source, folder / "frontal.dcm", stored=stored, StudyInstanceUID=STUDY, ViewPosition="PA",
                       WindowCenter=[2048, 1200], WindowWidth=[4096, 1000],
                       WindowCenterWidthExplanation=["FULL", "SOFT"])
    dicoms.write_dicom(source, folder / "lateral.dcm", StudyInstanceUID=STUDY, ViewPosition="LL")
    dicoms.write_dicom(xrays.NORMAL_IMAGES[0], folder / "other.dcm", ViewPosition="PA", StudyDate="20240316",
                       PatientID="another-patient")
    served.cli("scan", str(folder))
    rows = {Path(r["path"]).name: r for r in served.results("--path", f"{folder}/*")}
    _settle(served, rows["frontal.dcm"]["model_version"])
    assert rows["frontal.dcm"]["status"] == "done" and rows["lateral.dcm"]["status"] == "rejected", rows
    return {"frontal": int(rows["frontal.dcm"]["id"]), "lateral": int(rows["lateral.dcm"]["id"]),
            "small": int(served.results("--status", "done", "--path", "*.jpeg")[0]["id"])}


def _settle(served: Served, model_version: str) -> None:
    """Complete the studies now, as the study monitor does once they are quiet (scan alone leaves them open)."""
    from pneumoscan.db import open_database
    from pneumoscan.db.studies import settle

    db = open_database(f"sqlite:///{served.env['PNEUMOSCAN_DATA_DIR']}/pneumoscan.db")
    try:
        with db.begin() as session:
            settle(session, model_version, 0.0, send=False)
    finally:
        db.engine.dispose()


@pytest.fixture(scope="module")
def signed_in(served: Served, browser: Any) -> Iterator[Any]:
    driver = browser
    driver.set_window_size(1400, 900)
    chromium.sign_in(driver, served.url, ADMIN, PASSWORD)
    yield driver


def _open(driver: Any, url: str, image_id: int) -> dict[str, Any]:
    driver.get(f"{url}/images/{image_id}")
    _wait(driver).until(lambda d: d.execute_script(VIEW)["full"])
    return dict(driver.execute_script(VIEW))


def _fills(view: dict[str, Any]) -> bool:
    shown_w, shown_h = view["width"] * view["scale"], view["height"] * view["scale"]
    return (abs(shown_w - view["cw"]) <= 2 and shown_h <= view["ch"] + 2) or \
        (abs(shown_h - view["ch"]) <= 2 and shown_w <= view["cw"] + 2)


def test_a_small_image_and_a_large_dicom_open_filling_the_viewer(served: Served, big_study: dict[str, int],
                                                                signed_in: Any) -> None:
    figures = {}
    for name in ("small", "frontal"):
        view = _open(signed_in, served.url, big_study[name])
        assert _fills(view), (name, view)
        assert view["cw"] > 700 and view["ch"] > 500, view  # the stage, not a thumbnail
        figures[name] = view
    assert (figures["frontal"]["width"], figures["frontal"]["height"]) == (2000, 1700)  # full resolution
    assert figures["small"]["scale"] > 2  # a 224 px image is enlarged to the stage
    (Path(served.log).parent / "viewer-figures.json").write_text(json.dumps(figures))
    print("viewer figures:", json.dumps({k: {m: v[m] for m in ("firstPaint", "fullPaint", "windowMs")}
                                         for k, v in figures.items()}))


def test_wheel_zoom_drag_pan_and_keys_change_the_view(served: Served, big_study: dict[str, int],
                                                      signed_in: Any) -> None:
    driver = signed_in
    before = _open(driver, served.url, big_study["frontal"])
    canvas = driver.find_element(By.ID, "view")
    ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -300).perform()
    _wait(driver).until(lambda d: d.execute_script(VIEW)["scale"] > before["scale"] * 1.1)
    zoomed = driver.execute_script(VIEW)
    ActionChains(driver).click_and_hold(canvas).move_by_offset(120, 60).release().perform()
    panned = driver.execute_script(VIEW)
    assert abs(panned["x"] - zoomed["x"] - 120) < 3 and abs(panned["y"] - zoomed["y"] - 60) < 3, (zoomed, panned)
    driver.find_element(By.CSS_SELECTOR, ".facts h1").click()
    ActionChains(driver).send_keys("0").perform()
    fitted = driver.execute_script(VIEW)
    assert abs(fitted["scale"] - before["scale"]) < 1e-6 and _fills(fitted)
    ActionChains(driver).send_keys("+").perform()
    assert driver.execute_script(VIEW)["scale"] > fitted["scale"]
    ActionChains(driver).send_keys("-").send_keys("-").perform()
    assert driver.execute_script(VIEW)["scale"] < fitted["scale"]


def test_a_window_change_changes_the_pixels_shown_within_100_ms(served: Served, big_study: dict[str, int],
                                                                signed_in: Any, screenshot: Any) -> None:
    driver = signed_in
    _open(driver, served.url, big_study["frontal"])
    presets = Select(driver.find_element(By.ID, "preset"))
    names = [o.text.split(" (")[0] for o in presets.options]
    assert names == ["FULL", "SOFT", "lung", "full range"], names
    full = driver.execute_script(CENTRE_SUM)
    presets.select_by_index(1)
    _wait(driver).until(lambda d: d.execute_script(CENTRE_SUM) != full)
    soft = driver.execute_script(CENTRE_SUM)
    assert "C 1200 W 1000" in driver.find_element(By.ID, "wl").text
    presets.select_by_index(2)
    _wait(driver).until(lambda d: d.execute_script(CENTRE_SUM) not in (full, soft))
    timings = []
    for index in (0, 1, 2, 3, 2):
        presets.select_by_index(index)
        timings.append(driver.execute_script(VIEW)["windowMs"])
    assert max(timings) < 100, timings
    print("window/level ms on 2000x1700:", timings)
    inverted = driver.execute_script(CENTRE_SUM)
    driver.find_element(By.ID, "invert").click()
    assert driver.execute_script(CENTRE_SUM) != inverted
    driver.find_element(By.ID, "invert").click()
    assert driver.find_element(By.CSS_SELECTOR, f'.instance[data-id="{big_study["lateral"]}"]').text.endswith(
        "not assessed")
    screenshot("viewer-dicom-lung")
    lateral = _open(driver, served.url, big_study["lateral"])  # a rejected lateral is shown, full resolution
    assert _fills(lateral)


def test_the_heatmap_toggle_says_loading_before_the_overlay(served: Served, big_study: dict[str, int],
                                                            signed_in: Any, screenshot: Any) -> None:
    driver = signed_in
    _open(driver, served.url, big_study["frontal"])
    plain = driver.execute_script(CENTRE_SUM)
    driver.find_element(By.ID, "toggle-heatmap").click()
    loading = driver.find_element(By.ID, "heatmap-loading")
    assert driver.execute_script(VIEW)["heatmap"] in ("loading", "drawn")
    if driver.execute_script(VIEW)["heatmap"] == "loading":
        assert loading.is_displayed() and "loading" in loading.text
        assert not driver.find_element(By.ID, "heatmap-note").is_displayed()
    _wait(driver, HEATMAP_WAIT).until(lambda d: d.execute_script(VIEW)["heatmap"] == "drawn")
    assert not loading.is_displayed() and driver.find_element(By.ID, "heatmap-note").is_displayed()
    assert driver.execute_script(CENTRE_SUM) != plain
    opacity = driver.find_element(By.ID, "heatmap-opacity")
    drawn = driver.execute_script(CENTRE_SUM)
    driver.execute_script("arguments[0].value = 10; arguments[0].dispatchEvent(new Event('input'));", opacity)
    assert driver.execute_script(CENTRE_SUM) != drawn
    driver.execute_script("arguments[0].value = 70; arguments[0].dispatchEvent(new Event('input'));", opacity)
    screenshot("viewer-heatmap")


def test_screenshots_of_the_worklist_by_study_and_the_dashboard(served: Served, big_study: dict[str, int],
                                                                signed_in: Any, screenshot: Any) -> None:
    driver = signed_in
    driver.get(served.url + "/studies")
    table = _wait(driver).until(EC.visibility_of_element_located((By.ID, "studies")))
    assert STUDY in table.get_attribute("innerHTML")
    screenshot("studies")
    driver.get(served.url + "/dashboard")
    _wait(driver).until(EC.visibility_of_element_located((By.ID, "urgent-count")))
    screenshot("dashboard")
