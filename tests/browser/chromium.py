"""Headless Chromium and a running `pneumoscan serve`, shared by the browser tests and bench/viewer.py.

Both are real: Debian's Chromium driven by its chromedriver (given by path, so selenium-manager never downloads),
and the installed console script serving on a free local port.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WINDOW = (1400, 900)


class ServeFailed(RuntimeError):
    """`pneumoscan serve` exited or did not answer /health in time; the message carries its log."""


def available() -> bool:
    return CHROMIUM.is_file() and CHROMEDRIVER.is_file()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _health(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@contextmanager
def serving(exe: Path, env: dict[str, str], port: int, log: Path, timeout: float = 120) -> Iterator[str]:
    """`EXE serve` on 127.0.0.1:PORT with ``env``, output to ``log``; yields its URL once /health answers 200."""
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while (status := _health(url)) != 200:
            if proc.poll() is not None:
                raise ServeFailed(f"pneumoscan serve exited {proc.returncode} before answering /health:\n"
                                  f"{log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise ServeFailed(f"/health did not answer 200 within {timeout} s (last: {status}):\n"
                                  f"{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def chromium(profile: Path, log: Path) -> Iterator[Any]:
    """A headless Chromium at WINDOW's size with a fresh profile at ``profile``; chromedriver logs to ``log``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(log)), options=options)
    try:
        driver.set_page_load_timeout(120)  # the first heatmap loads TensorFlow in the server
        driver.set_script_timeout(60)
        yield driver
    finally:
        driver.quit()


def sign_in(driver: Any, url: str, name: str, password: str, timeout: float = 30) -> None:
    """Fill in and send the sign-in form at ``url``; returns once the form has gone (whatever the answer)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/login")
    field = WebDriverWait(driver, timeout).until(EC.visibility_of_element_located((By.ID, "name")))
    field.clear()
    field.send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    form = driver.find_element(By.ID, "sign-in")
    form.click()
    WebDriverWait(driver, timeout).until(EC.staleness_of(form))
