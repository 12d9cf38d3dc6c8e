"""DICOMweb in: STOW-RS into a real `pneumoscan serve` over HTTP (chunked and not), its PS3.18 replies, its limit,
and who may call it: a sender's token, and nobody else; a sender's token, nowhere else.

The server runs as a user runs it, on a real SQLite file with a sender (a machine), a reviewer and an admin,
each with an API token (``support.dicomweb``). Orthanc's side is in test_dicomweb_orthanc.py.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import dicoms
from support.dicomweb import Server, instance, multipart, rg1, serve, sop_uid, uids

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MAX_BYTES = 16 * 1024 * 1024  # PNEUMOSCAN_DICOMWEB_MAX_BYTES of the server under test


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Any, pneumoscan_exe: Path) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("dicomweb") / "data"
    with serve(pneumoscan_exe, data, tiny_bundle.path, data / "received",
               PNEUMOSCAN_DICOMWEB_MAX_BYTES=str(MAX_BYTES)) as running:
        yield running


@pytest.fixture(autouse=True)
def _empty_spool(server: Server) -> None:
    if server.spool.exists():
        shutil.rmtree(server.spool)


# --- STOW-RS in -------------------------------------------------------------------------------------


def test_a_chunked_study_over_64_kib_is_stored_as_the_receiver_stores_it(server: Server) -> None:
    parts = [instance("NORMAL"), instance("PNEUMONIA"), instance("NORMAL", syntax="explicit-le")]
    big = multipart([*parts, rg1().read_bytes()])  # pydicom-data's real chest CR: 7 MB
    assert len(big) > 64 * 1024

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked, as Orthanc sends
        for at in range(0, len(big), 16 * 1024):
            yield big[at:at + 16 * 1024]

    answer = server.stow(chunks())
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    reply = answer.json()
    expected = [sop_uid(p) for p in parts]
    stored = uids(reply, "00081199")
    assert len(stored) == 4 and stored[:3] == expected
    assert "00081198" not in reply
    assert reply["00081199"]["Value"][0]["00081150"]["Value"] == [dicoms.DIGITAL_XRAY_SOP_CLASS]
    assert server.files() == sorted(f"{uid}.dcm" for uid in stored)
    for part in parts:  # written byte for byte as sent, like the C-STORE receiver's encoded data set
        assert (server.spool / f"{sop_uid(part)}.dcm").read_bytes() == part

    again = server.stow(big)  # a re-sent study: stored again means already there, left as it was
    assert again.status_code == 200 and uids(again.json(), "00081199") == stored
    assert server.files() == sorted(f"{uid}.dcm" for uid in stored)


def test_some_bad_instances_give_202_with_their_failure_reasons(server: Server) -> None:
    import pydicom

    good = instance()
    wrong_meta = pydicom.dcmread(io.BytesIO(instance()))
    wrong_meta.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    out = io.BytesIO()
    wrong_meta.save_as(out, enforce_file_format=False)  # as written: the meta disagrees with the data set
    assert pydicom.dcmread(io.BytesIO(out.getvalue())).file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    answer = server.stow(multipart([good, b"not dicom at all", out.getvalue()]))
    assert answer.status_code == 202, answer.text
    reply = answer.json()
    assert uids(reply, "00081199") == [sop_uid(good)]
    failed = reply["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xC000, 0xA900]
    assert failed[1]["00081155"]["Value"] == [wrong_meta.SOPInstanceUID]
    assert server.files() == [f"{sop_uid(good)}.dcm"]


def test_none_stored_is_409_and_a_bad_body_is_400(server: Server) -> None:
    answer = server.stow(multipart([b"garbage", instance(preamble=False)]))
    assert answer.status_code == 409, answer.text
    assert [i["00081197"]["Value"][0] for i in answer.json()["00081198"]["Value"]] == [0xC000, 0xC000]
    assert server.stow(b"--b0undary\r\nContent-Type: application/dicom\r\n\r\nno end").status_code == 400
    assert server.stow(b"").status_code == 400
    assert server.stow(multipart([instance()]), content_type="application/dicom").status_code == 415
    assert server.stow(multipart([instance()]), content_type='multipart/related; type="application/dicom+xml"; '
                                                              'boundary=b0undary').status_code == 415
    assert server.files() == []


def test_a_body_over_its_limit_is_413_streamed_or_declared(server: Server) -> None:
    huge = b"x" * (MAX_BYTES + 1)
    assert server.stow(huge).status_code == 413
    assert server.stow(iter([huge[:MAX_BYTES // 2], huge[MAX_BYTES // 2:]])).status_code == 413
    assert server.files() == []


@pytest.mark.parametrize("role", [None, "reviewer", "admin", "bad-token"])
def test_only_a_sender_token_may_store_and_a_refusal_leaves_nothing(server: Server, role: str | None) -> None:
    body = multipart([instance(), rg1().read_bytes()])  # over 64 KiB: the refusal is not the size's
    headers = {"Authorization": "Bearer psk_nonsense"} if role == "bad-token" else None
    answer = server.stow(body, role=None if role in (None, "bad-token") else role, headers=headers)
    assert answer.status_code == (403 if role in ("reviewer", "admin") else 401), answer.text
    assert answer.headers["content-type"] == "application/json"  # an API: no redirect to the sign-in page
    assert "detail" in answer.json()
    assert server.files() == []


def test_a_sender_token_gets_403_on_every_other_route(server: Server) -> None:
    from fastapi.routing import APIRoute

    from pneumoscan.web.routes import ROUTERS

    routes = [r for router in ROUTERS for r in router.routes
              if isinstance(r, APIRoute) and r.path != "/dicomweb/studies"]
    auth = {"Authorization": f"Bearer {server.tokens['sender']}"}
    checked = 0
    for route in routes:
        for method in route.methods:
            url = server.url + _filled(route.path)
            if httpx.request(method, url, timeout=30).status_code not in (303, 401, 403):
                continue  # public to anyone (/health, /login, /favicon.ico...)
            answer = httpx.request(method, url, headers=auth, timeout=30)
            checked += 1
            assert answer.status_code == 403, (method, route.path, answer.status_code, answer.text[:200])
    assert checked > 20
    reviewer = {"Authorization": f"Bearer {server.tokens['reviewer']}"}
    assert httpx.get(f"{server.url}/api/results", headers=reviewer, timeout=30).status_code == 200


def _filled(path: str) -> str:
    """``path`` with each {parameter} given a plausible value (an id, a UID)."""
    return re.sub(r"\{[^}]*\}", "1", path)
