"""`pneumoscan users ...` as an admin runs it: real subprocesses on a real SQLite database, checked through the app."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import helpers
import pytest

PASSWORD = "a-long-enough-password"


def _users(exe: Path, env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), "users", *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=120)


def _api(data: Path, bundle: Any, token: str) -> int:
    from fastapi.testclient import TestClient

    from pneumoscan.config import Settings
    from pneumoscan.web.app import create_app

    settings = Settings(data_dir=data, model=bundle.path, patient_salt="x")
    client = TestClient(create_app(settings))
    return int(client.get("/api/results", headers={"Authorization": f"Bearer {token}"}).status_code)


@pytest.mark.slow
def test_add_list_token_disable_enable(pneumoscan_exe: Path, tiny_bundle: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = helpers.pneumoscan_env(data, tiny_bundle.path)
    added = _users(pneumoscan_exe, env, "add", "ada", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0 and "added admin ada" in added.stdout, added.stderr
    again = _users(pneumoscan_exe, env, "add", "ada", "--role", "reviewer", "--password-stdin", stdin=PASSWORD + "\n")
    assert again.returncode == 1 and "Error: user ada already exists" in again.stderr
    short = _users(pneumoscan_exe, env, "add", "bob", "--role", "reviewer", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 10 characters" in short.stderr and "Traceback" not in short.stderr
    hostile = _users(pneumoscan_exe, env, "add", "../etc", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert hostile.returncode == 1 and "user name is 1 to 64 letters" in hostile.stderr
    no_stdin = _users(pneumoscan_exe, env, "add", "bob", "--role", "reviewer")
    assert no_stdin.returncode == 2 and "--password-stdin" in no_stdin.stderr
    bad_role = _users(pneumoscan_exe, env, "add", "bob", "--role", "root", "--password-stdin", stdin=PASSWORD)
    assert bad_role.returncode == 2 and "'root' is not one of" in bad_role.stderr
    _users(pneumoscan_exe, env, "add", "rex", "--role", "reviewer", "--password-stdin", stdin=PASSWORD + "\n")

    listed = _users(pneumoscan_exe, env, "list").stdout.splitlines()
    assert [line.split("\t")[:3] for line in listed] == [["ada", "admin", "active"], ["rex", "reviewer", "active"]]

    token = _users(pneumoscan_exe, env, "token", "rex").stdout.strip()
    assert token.startswith("psk_") and len(token) > 40
    assert _api(data, tiny_bundle, token) == 200
    assert _users(pneumoscan_exe, env, "disable", "rex").returncode == 0
    assert "disabled" in _users(pneumoscan_exe, env, "list").stdout.splitlines()[1]
    assert _api(data, tiny_bundle, token) == 401
    assert _users(pneumoscan_exe, env, "enable", "rex").returncode == 0
    assert _api(data, tiny_bundle, token) == 401  # disabling revoked it; enabling does not revive it (issue 29)
    fresh = _users(pneumoscan_exe, env, "token", "rex").stdout.strip()
    assert _api(data, tiny_bundle, fresh) == 200
    revoked = _users(pneumoscan_exe, env, "token", "rex", "--revoke")
    assert "revoked 1 tokens of rex" in revoked.stdout
    assert _api(data, tiny_bundle, fresh) == 401
    unknown = _users(pneumoscan_exe, env, "disable", "nobody")
    assert unknown.returncode == 1 and "no user named 'nobody'" in unknown.stderr
