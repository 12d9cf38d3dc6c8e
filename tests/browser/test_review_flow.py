"""The review web app in a real headless Chromium: sign in, worklist, viewer and heatmap, keyboard reviews,
an escaped comment, the dashboard, the CLI's view of the same reviews, and a reviewer kept out of admin."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from . import chromium
from .conftest import ADMIN, PASSWORD, REVIEWER, Served

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

WAIT = 30  # seconds for a page or an element
HEATMAP_WAIT = 180  # the first heatmap loads TensorFlow and the model in the server
XSS = 'looks fine to me <script>alert(1)</script> & "quoted"'
OTHER = {"PNEUMONIA": "NORMAL", "NORMAL": "PNEUMONIA"}

# The image's loaded state, and how colourful it is: the heatmap is an RGB overlay, the X-ray is grey.
PICTURE_STATE = """
const stage = document.getElementById('stage');
const canvas = document.getElementById('view');
const state = {drawn: Number(stage.dataset.drawn || 0), heatmap: stage.dataset.heatmapState || 'off',
               full: stage.dataset.full === 'true', colour: null};
if (state.drawn > 0) {
  const ctx = canvas.getContext('2d');
  const w = canvas.width, h = canvas.height;
  const px = ctx.getImageData(Math.floor(w / 4), Math.floor(h / 4), Math.floor(w / 2), Math.floor(h / 2)).data;
  let total = 0;
  for (let i = 0; i < px.length; i += 4) {
    total += Math.abs(px[i] - px[i + 1]) + Math.abs(px[i + 1] - px[i + 2]);
  }
  state.colour = total / (px.length / 4);
}
return state;
"""
FETCH_JSON = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: 'same-origin', headers: {Accept: 'application/json'}})
  .then((r) => r.json().then((body) => done({status: r.status, body: body})))
  .catch((e) => done({status: null, error: String(e)}));
"""


def _wait(driver: Any, timeout: float = WAIT) -> WebDriverWait:
    return WebDriverWait(driver, timeout, poll_frequency=0.1)


def _path(driver: Any) -> str:
    return urlparse(driver.current_url).path


def _api(driver: Any, path: str) -> Any:
    """GET a JSON API path from the page, with the browser's session cookie."""
    answer = driver.execute_async_script(FETCH_JSON, path)
    assert answer.get("status") == 200, f"GET {path}: {answer}"
    return answer["body"]


def _press(driver: Any, key: str) -> None:
    """A key press as a person makes it, to whatever has the focus."""
    ActionChains(driver).send_keys(key).perform()


def _viewer_id(driver: Any) -> int:
    return int(driver.find_element(By.ID, "viewer").get_attribute("data-image-id"))


def _wait_for_case(driver: Any, old_viewer: WebElement, expected: int) -> None:
    """After a review: the old page is gone and the browser shows image ``expected``."""
    _wait(driver).until(EC.staleness_of(old_viewer))
    _wait(driver).until(EC.presence_of_element_located((By.ID, "viewer")))
    assert _path(driver) == f"/images/{expected}", f"landed on {driver.current_url}, expected case {expected}"
    assert _viewer_id(driver) == expected


def _picture(driver: Any, suffix: str) -> dict[str, Any] | None:
    """The viewer's canvas once it shows the picture (``image.png``) or the heatmap over it (``heatmap.png``)."""
    state = driver.execute_script(PICTURE_STATE)
    heat = suffix.endswith("heatmap.png")
    if state["drawn"] > 0 and (state["heatmap"] == "drawn") == heat and (heat or state["full"]):
        return state
    return None


def _picture_error(driver: Any) -> str:
    problem = driver.find_elements(By.ID, "picture-error")
    return problem[0].text if problem and problem[0].is_displayed() else ""


def _review_rows(driver: Any) -> list[list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#reviews tbody tr")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def _no_alert(driver: Any) -> None:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        return
    text = alert.text
    alert.dismiss()
    pytest.fail(f"a script in the page ran: alert({text!r})")


def test_review_flow(served: Served, browser: Any, screenshot: Any) -> None:
    driver, url = browser, served.url
    driver.delete_all_cookies()

    # (1) A wrong password shows the reason and stays on the sign-in page; the right one reaches the worklist.
    chromium.sign_in(driver, url, ADMIN, "not-the-password")
    error = _wait(driver).until(EC.visibility_of_element_located((By.ID, "login-error")))
    assert error.text == "wrong name or password"
    assert _path(driver) == "/login"
    assert not driver.find_elements(By.ID, "worklist")
    chromium.sign_in(driver, url, ADMIN, PASSWORD)
    _wait(driver).until(lambda d: _path(d) == "/worklist")
    assert driver.find_element(By.CSS_SELECTOR, "form.logout .who").text == f"{ADMIN} (admin)"

    # (2) The worklist: unreviewed cases of the current model, most suspicious first.
    rows = _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#worklist tr.case"))
    ids = [int(row.get_attribute("data-id")) for row in rows]
    shown = [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows]
    probabilities = [float(p) if p else None for p in shown]
    scored = [p for p in probabilities if p is not None]
    assert len(scored) == 20, f"the 20 fixture X-rays should all have a probability: {shown}"
    assert probabilities[:len(scored)] == scored, f"unscored rows must come last: {shown}"
    assert scored == sorted(scored, reverse=True), f"not most suspicious first: {shown}"
    assert scored[0] > scored[-1], f"the fixture images should not all score alike: {shown}"
    api_rows = _api(driver, "/api/results?review=unreviewed&sort=probability&limit=50")["results"]
    exact = [r["probability"] for r in api_rows if r["probability"] is not None]
    assert exact == sorted(exact, reverse=True)
    assert ids == [r["id"] for r in api_rows], "the page's order is not the API's most-suspicious-first order"
    assert driver.find_element(By.ID, "count").text.startswith(f"{len(ids)} shown of {len(ids)}")
    screenshot("worklist")

    # (3) The most suspicious case; the heatmap on (a colour overlay, with its note) and off again.
    first = ids[0]
    rows[0].find_element(By.CSS_SELECTOR, f'a[href="/images/{first}"]').click()
    _wait(driver).until(lambda d: _path(d) == f"/images/{first}")
    toggle = _wait(driver).until(EC.element_to_be_clickable((By.ID, "toggle-heatmap")))
    plain = _wait(driver).until(lambda d: _picture(d, f"/api/images/{first}/image.png") or _picture_error(d))
    assert isinstance(plain, dict), f"the picture did not load: {plain}"
    assert plain["colour"] < 1.0, f"the X-ray itself should be grey: {plain}"
    first_label = driver.find_element(By.ID, "model-label").text
    assert first_label in OTHER
    assert driver.find_element(By.ID, "probability").text == shown[0]
    note = driver.find_element(By.ID, "heatmap-note")
    assert toggle.get_attribute("aria-pressed") == "false" and not note.is_displayed()

    toggle.click()
    _wait(driver).until(lambda d: toggle.get_attribute("aria-pressed") == "true")
    heat = _wait(driver, HEATMAP_WAIT).until(
        lambda d: _picture(d, f"/api/images/{first}/heatmap.png") or _picture_error(d))
    assert isinstance(heat, dict), f"the heatmap did not load: {heat}"
    assert heat["colour"] > 5.0, f"the heatmap should be a colour overlay: {heat}"
    assert note.is_displayed() and "Grad-CAM" in note.text
    assert toggle.text == "Hide heatmap (h)"
    screenshot("viewer")

    toggle.click()
    _wait(driver).until(lambda d: toggle.get_attribute("aria-pressed") == "false")
    plain_again = _wait(driver).until(lambda d: _picture(d, f"/api/images/{first}/image.png") or _picture_error(d))
    assert isinstance(plain_again, dict) and plain_again["colour"] < 1.0, f"not the plain picture: {plain_again}"
    assert not note.is_displayed() and toggle.text == "Show heatmap (h)"

    # (4) Confirm the model with "c" (the focus off the button first): the next most suspicious case opens.
    driver.find_element(By.CSS_SELECTOR, ".facts h1").click()
    viewer = driver.find_element(By.ID, "viewer")
    _press(driver, "c")
    second = ids[1]
    _wait_for_case(driver, viewer, second)
    reviews = _api(driver, f"/api/images/{first}/reviews")
    assert [(r["label"], r["reviewer"], r["comment"]) for r in reviews] == [(first_label, ADMIN, None)]

    # (5) Override the next case with "o", with a comment that would be a script if it were not escaped.
    second_label = driver.find_element(By.ID, "model-label").text
    assert second_label in OTHER
    assert driver.find_element(By.ID, "viewer").get_attribute("data-model-label") == second_label
    comment = driver.find_element(By.ID, "comment")
    comment.click()
    comment.send_keys(XSS)
    _press(driver, "o")  # typed into the comment, not a shortcut
    assert comment.get_attribute("value") == XSS + "o"
    comment.send_keys(Keys.BACKSPACE, Keys.ESCAPE)  # Escape leaves the textarea, so keys are shortcuts again
    assert comment.get_attribute("value") == XSS
    _wait(driver).until(lambda d: d.switch_to.active_element.tag_name.lower() != "textarea")
    viewer = driver.find_element(By.ID, "viewer")
    _press(driver, "o")
    _wait_for_case(driver, viewer, ids[2])
    _no_alert(driver)
    reviews = _api(driver, f"/api/images/{second}/reviews")
    assert [(r["label"], r["reviewer"], r["comment"]) for r in reviews] == [(OTHER[second_label], ADMIN, XSS)]

    driver.get(f"{url}/images/{second}")
    _wait(driver).until(EC.presence_of_element_located((By.ID, "reviews")))
    _no_alert(driver)
    rows_shown = _review_rows(driver)
    assert len(rows_shown) == 1, rows_shown
    when, who, reading, said = rows_shown[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", when), when
    assert (who, reading, said) == (ADMIN, OTHER[second_label], XSS)
    cell = driver.find_element(By.CSS_SELECTOR, "#reviews td.comment")
    assert not cell.find_elements(By.XPATH, ".//*"), "the comment became markup"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in cell.get_attribute("innerHTML")
    driver.get(f"{url}/images/{first}")
    _wait(driver).until(EC.presence_of_element_located((By.ID, "reviews")))
    assert [row[1:] for row in _review_rows(driver)] == [[ADMIN, first_label, ""]]

    # The worklist's default (unreviewed) no longer lists the two reviewed cases.
    driver.get(url + "/worklist")
    remaining = [int(r.get_attribute("data-id"))
                 for r in _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#worklist tr.case"))]
    assert remaining == ids[2:]

    # (6) The dashboard: two reviews, one agreement (the confirmation) and one disagreement (the override).
    driver.get(url + "/dashboard")
    count = _wait(driver).until(EC.visibility_of_element_located((By.ID, "reviewed-count")))
    assert count.text == "2 reviewed images; the model agrees on 1."
    expected = {(truth, model): 0 for truth in OTHER for model in OTHER}
    expected[(first_label, first_label)] += 1
    expected[(OTHER[second_label], second_label)] += 1
    cells = driver.find_elements(By.CSS_SELECTOR, "#confusion td[data-truth][data-model]")
    found = {(c.get_attribute("data-truth"), c.get_attribute("data-model")): int(c.text) for c in cells}
    assert found == expected
    tp, fn = expected[("PNEUMONIA", "PNEUMONIA")], expected[("PNEUMONIA", "NORMAL")]
    tn, fp = expected[("NORMAL", "NORMAL")], expected[("NORMAL", "PNEUMONIA")]
    assert driver.find_element(By.ID, "sensitivity").text == (f"{tp / (tp + fn):.3f}" if tp + fn else "n/a")
    assert driver.find_element(By.ID, "specificity").text == (f"{tn / (tn + fp):.3f}" if tn + fp else "n/a")
    _wait(driver, 90).until(lambda d: d.execute_script(
        "const i = document.querySelector('img.plot'); return i.complete && i.naturalWidth > 0;"))
    screenshot("dashboard")

    # The command line sees the same two reviews.
    reviewed = {row["id"]: row for row in served.results("--review", "reviewed")}
    assert sorted(reviewed) == sorted([first, second])
    assert (reviewed[first]["review_label"], reviewed[first]["reviewed_by"]) == (first_label, ADMIN)
    assert (reviewed[second]["review_label"], reviewed[second]["reviewed_by"]) == (OTHER[second_label], ADMIN)
    assert reviewed[first]["label"] == first_label and reviewed[second]["label"] == second_label


def test_reviewer_cannot_manage_users(served: Served, browser: Any) -> None:
    driver, url = browser, served.url
    driver.delete_all_cookies()
    chromium.sign_in(driver, url, REVIEWER, PASSWORD)
    _wait(driver).until(lambda d: _path(d) == "/worklist")
    nav = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "header nav a")]
    assert "Worklist" in nav and "Users" not in nav, nav

    driver.get(url + "/admin/users")
    heading = _wait(driver).until(EC.visibility_of_element_located((By.CSS_SELECTOR, "main h1")))
    assert heading.text == "403"
    assert driver.find_element(By.ID, "error-reason").text == "only an admin can manage users"
    assert _path(driver) == "/admin/users"
    assert not driver.find_elements(By.ID, "users"), "the user list was shown to a reviewer"
    scripts = driver.find_elements(By.TAG_NAME, "script")
    assert scripts and all(s.get_attribute("src") for s in scripts), "inline script on the 403 page"
    assert all(not s.get_attribute("innerHTML").strip() for s in scripts)
