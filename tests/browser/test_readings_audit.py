"""Independent readings and the audit trail in a real headless Chromium at 1400x900: a blinded reading hides the
model's call until the reader saves theirs, and the audit page lists the opening of a case."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from . import chromium
from .conftest import ADMIN, PASSWORD, START_TIMEOUT, Served

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]
WAIT = 30


def _wait(driver: Any, timeout: float = WAIT) -> WebDriverWait:
    return WebDriverWait(driver, timeout, poll_frequency=0.1)


@pytest.fixture(scope="module")
def blinded_url(served: Served, pneumoscan_exe: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second `pneumoscan serve` on the same database, with PNEUMOSCAN_BLINDED_READING=true."""
    log = tmp_path_factory.mktemp("blinded") / "serve.log"
    env = {**served.env, "PNEUMOSCAN_BLINDED_READING": "true"}
    try:
        with chromium.serving(pneumoscan_exe, env, chromium.free_port(), log, START_TIMEOUT) as url:
            yield url
    except chromium.ServeFailed as exc:
        pytest.fail(f"blinded serve did not start: {exc}")


def test_a_blinded_reading_hides_the_call_until_save(served: Served, blinded_url: str, browser: Any,
                                                     screenshot: Any) -> None:
    driver = browser
    driver.set_window_size(1400, 900)
    served.cli("users", "add", "bea", "--role", "reviewer", "--password-stdin", stdin=PASSWORD + "\n")
    case = next(r for r in served.results("--status", "done") if r["label"])
    chromium.sign_in(driver, blinded_url, "bea", PASSWORD)
    driver.get(f"{blinded_url}/images/{case['id']}")
    banner = _wait(driver).until(EC.visibility_of_element_located((By.ID, "blinded")))
    assert "Blinded reading" in banner.text
    for hidden in ("model-label", "probability", "toggle-heatmap", "confirm", "override"):
        assert not driver.find_elements(By.ID, hidden), hidden
    radios = driver.find_elements(By.CSS_SELECTOR, 'input[name="label"]')
    assert len(radios) == 2 and not any(r.is_selected() for r in radios)
    screenshot("blinded-reading")
    # Saving with nothing chosen is refused by the browser (a required choice): the page stays.
    driver.find_element(By.ID, "save-review").click()
    assert driver.find_elements(By.ID, "blinded")
    mine = "NORMAL" if case["label"] == "PNEUMONIA" else "PNEUMONIA"
    driver.find_element(By.CSS_SELECTOR, f'input[name="label"][value="{mine}"]').click()
    form = driver.find_element(By.ID, "review-form")
    driver.find_element(By.ID, "save-review").click()
    _wait(driver).until(EC.staleness_of(form))
    driver.get(f"{blinded_url}/images/{case['id']}")
    label = _wait(driver).until(EC.visibility_of_element_located((By.ID, "model-label")))
    assert label.text == case["label"]
    assert not driver.find_elements(By.ID, "blinded") and driver.find_elements(By.ID, "toggle-heatmap")


def test_the_audit_lists_the_opening(served: Served, browser: Any, screenshot: Any) -> None:
    driver = browser
    driver.set_window_size(1400, 900)
    case = served.results("--status", "done")[0]
    chromium.sign_in(driver, served.url, ADMIN, PASSWORD)
    driver.get(f"{served.url}/images/{case['id']}")
    _wait(driver).until(EC.presence_of_element_located((By.ID, "review-form")))
    driver.get(f"{served.url}/admin/audit?image={case['id']}")
    table = _wait(driver).until(EC.visibility_of_element_located((By.ID, "audit")))
    rows = [r.text for r in table.find_elements(By.CSS_SELECTOR, 'tr.event[data-action="open"]')]
    assert any(ADMIN in r and str(case["id"]) in r and "127.0.0.1" in r for r in rows), rows
    driver.get(f"{served.url}/admin/audit")
    _wait(driver).until(EC.visibility_of_element_located((By.ID, "audit")))
    assert driver.find_elements(By.CSS_SELECTOR, 'tr.event[data-action="sign-in"]')
    screenshot("audit")
