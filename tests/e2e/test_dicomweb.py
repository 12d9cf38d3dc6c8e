"""DICOMweb end to end: STOW-RS into a real `pneumoscan serve`, by httpx and by a real Orthanc, and our results
sent by STOW-RS into that Orthanc's /dicom-web/studies.

`pneumoscan serve` runs as a user runs it, on a real SQLite file with three users: a sender (a machine), a
reviewer and an admin, each with an API token. Orthanc (Debian's `orthanc` and `orthanc-dicomweb`) runs
from a temporary configuration on free ports of 127.0.0.1 with its storage in a temporary folder; without
it those tests skip, and under CI=true they fail.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import dcmtk, dicoms
from support.process import pneumoscan_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MAX_BYTES = 16 * 1024 * 1024  # PNEUMOSCAN_DICOMWEB_MAX_BYTES of the server under test
FIXTURES = Path(__file__).parents[1] / "fixtures" / "images"
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Server:
    url: str
    spool: Path
    tokens: dict[str, str]  # role -> token
    proc: subprocess.Popen[bytes]

    def stow(self, body: Any, *, role: str | None = "sender", boundary: str = "b0undary",
             content_type: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {"Content-Type": content_type or f'multipart/related; type="application/dicom"; boundary={boundary}'}
        if role:
            sent["Authorization"] = f"Bearer {self.tokens[role]}"
        sent.update(headers or {})
        return httpx.post(f"{self.url}/dicomweb/studies", content=body, headers=sent, timeout=60)

    def files(self) -> list[str]:
        return sorted(p.name for p in self.spool.iterdir()) if self.spool.exists() else []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Any, pneumoscan_exe: Path) -> Iterator[Server]:
    from pneumoscan.db import open_database
    from pneumoscan.db.users import add_user, issue_token, use_password_hashing
    from pneumoscan.domain import Role

    data = tmp_path_factory.mktemp("dicomweb") / "data"
    data.mkdir()
    previous = use_password_hashing("cheapest")
    db = open_database(f"sqlite:///{data / 'pneumoscan.db'}")
    tokens = {}
    with db.begin() as session:
        for name, role in (("pacs", Role.SENDER), ("rex", Role.REVIEWER), ("ada", Role.ADMIN)):
            add_user(session, name, role, "a long enough password")
            tokens[role] = issue_token(session, name)
    db.dispose()
    use_password_hashing(previous)
    port = dcmtk.free_port()
    env = pneumoscan_env(data, tiny_bundle.path, PNEUMOSCAN_PASSWORD_HASHING="cheapest",
                         PNEUMOSCAN_DICOMWEB_MAX_BYTES=str(MAX_BYTES))
    proc = subprocess.Popen([str(pneumoscan_exe), "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    place = Server(f"http://127.0.0.1:{port}", data / "received", tokens, proc)

    def up() -> bool:
        assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()
        try:
            return httpx.get(f"{place.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, 0.2, "pneumoscan serve")
    yield place
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(autouse=True)
def _empty_spool(server: Server) -> None:
    if server.spool.exists():
        shutil.rmtree(server.spool)


def instance(name: str = "NORMAL", **kwargs: Any) -> bytes:
    source = sorted((FIXTURES / name).iterdir())[0]
    return dicoms.dicom_bytes(source, **kwargs)


def multipart(parts: list[bytes], boundary: str = "b0undary", kind: str = "application/dicom") -> bytes:
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + part + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def uids(reply: dict[str, Any], tag: str) -> list[str]:
    return [item["00081155"]["Value"][0] for item in reply.get(tag, {}).get("Value", []) if "00081155" in item]


def sop_uid(data: bytes) -> str:
    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


# --- STOW-RS in -------------------------------------------------------------------------------------


def test_a_chunked_study_over_64_kib_is_stored_as_the_receiver_stores_it(server: Server) -> None:
    parts = [instance("NORMAL"), instance("PNEUMONIA"), instance("NORMAL", syntax="explicit-le")]
    big = multipart([*parts, _rg1().read_bytes()])  # pydicom-data's real chest CR: 7 MB
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


def _rg1() -> Path:
    from pydicom.data import get_testdata_file

    source = get_testdata_file("RG1_UNCR.dcm")
    assert isinstance(source, str)
    return Path(source)


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
    body = multipart([instance(), _rg1().read_bytes()])  # over 64 KiB: the refusal is not the size's
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
    import re

    return re.sub(r"\{[^}]*\}", "1", path)


# --- a real Orthanc ---------------------------------------------------------------------------------


@dataclass
class Orthanc:
    url: str  # its REST API; DICOMweb under /dicom-web
    auth: tuple[str, str]

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, auth=self.auth, timeout=120)

    def get(self, path: str) -> Any:
        answer = httpx.get(self.url + path, auth=self.auth, timeout=30)
        answer.raise_for_status()
        return answer.json()


@pytest.fixture
def orthanc(tmp_path: Path, server: Server) -> Iterator[Orthanc]:
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
    if binary is None or not ORTHANC_PLUGIN.exists():
        message = "Orthanc with its DICOMweb plugin is not installed (Debian: orthanc orthanc-dicomweb)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    http_port, dicom_port = dcmtk.free_port(), dcmtk.free_port()
    config = {
        "Name": "pneumoscan-test", "StorageDirectory": str(tmp_path / "storage"),
        "IndexDirectory": str(tmp_path / "storage"), "HttpPort": http_port, "DicomPort": dicom_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {"pacs": "orthanc-secret"},
        "Plugins": [str(ORTHANC_PLUGIN)], "HttpServerEnabled": True, "StableAge": 1,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {
            "pneumoscan": {"Url": f"{server.url}/dicomweb/",
                           "HttpHeaders": {"Authorization": f"Bearer {server.tokens['sender']}"}}}},
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("wb")
    proc = subprocess.Popen([binary, str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    place = Orthanc(f"http://127.0.0.1:{http_port}", ("pacs", "orthanc-secret"))

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "orthanc.log").read_text()[-3000:]
        try:
            return httpx.get(place.url + "/system", auth=place.auth, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, 0.2, "Orthanc")
    yield place
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_orthanc_sends_a_study_to_pneumoscan_by_stow_rs(server: Server, orthanc: Orthanc) -> None:
    import pydicom

    study = pydicom.uid.generate_uid()
    parts = [_rg1().read_bytes(), instance("NORMAL"), instance("PNEUMONIA")]
    sent = []
    for part in parts:
        ds = pydicom.dcmread(io.BytesIO(part))
        ds.StudyInstanceUID, ds.PatientID = study, dicoms.PATIENT_ID  # one patient's study, as Orthanc files it
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        answer = httpx.post(orthanc.url + "/instances", content=out.getvalue(), auth=orthanc.auth, timeout=60)
        assert answer.status_code == 200, answer.text
        sent.append(str(ds.SOPInstanceUID))
    [orthanc_study] = orthanc.get("/studies")
    answer = orthanc.post("/dicom-web/servers/pneumoscan/stow", {"Resources": [orthanc_study]})
    assert answer.status_code == 200, answer.text  # Orthanc's client checked our reply: one item per instance
    assert server.files() == sorted(f"{uid}.dcm" for uid in sent)
    for uid in sent:
        stored = pydicom.dcmread(server.spool / f"{uid}.dcm")
        assert stored.StudyInstanceUID == study and stored.SOPInstanceUID == uid
    assert os.path.getsize(server.spool / f"{sent[0]}.dcm") > 64 * 1024

    # The same study again: nothing new on disk, and Orthanc accepts the reply again.
    assert orthanc.post("/dicom-web/servers/pneumoscan/stow", {"Resources": [orthanc_study]}).status_code == 200
    assert server.files() == sorted(f"{uid}.dcm" for uid in sent)


def test_pneumoscan_stores_its_report_into_orthanc_by_stow_rs(orthanc: Orthanc, tmp_path: Path) -> None:

    from pneumoscan.config import Settings
    from pneumoscan.dicomnet.sender import SendError
    from pneumoscan.dicomnet.stow import StowClient, results_sender

    settings = Settings(data_dir=tmp_path / "data", patient_salt="s", results_dicomweb_url=f"{orthanc.url}/dicom-web",
                        results_dicomweb_user="pacs", results_dicomweb_password="orthanc-secret")
    client = results_sender(settings)
    assert isinstance(client, StowClient)
    report = _report(tmp_path)
    client.send([report])
    found = orthanc.get(f"/dicom-web/studies/{report.StudyInstanceUID}/instances")
    assert [item["00080018"]["Value"][0] for item in found] == [report.SOPInstanceUID]
    assert found[0]["00080060"]["Value"] == ["SR"]
    client.send([report])  # sent again (a retry after a lost reply): Orthanc keeps one

    wrong = StowClient(f"{orthanc.url}/dicom-web", user="pacs", password="not-it")
    with pytest.raises(SendError, match="HTTP 401"):
        wrong.send([report])
    nowhere = StowClient(f"http://127.0.0.1:{dcmtk.free_port()}/dicom-web")
    with pytest.raises(SendError, match="did not answer"):
        nowhere.send([report])
    both = Settings(data_dir=tmp_path / "data", patient_salt="s", results_dicomweb_url=orthanc.url,
                    results_destination="PACS@127.0.0.1:104")
    with pytest.raises(ValueError, match="not both"):
        results_sender(both)


def _report(folder: Path) -> Any:
    """The structured report pneumoscan builds (``dicomnet.sr``) for a study of one real chest image."""
    import pydicom

    from pneumoscan.db.schema import Study
    from pneumoscan.db.studies import Instance
    from pneumoscan.dicomnet import sr
    from pneumoscan.domain import Label, Status

    path = folder / "source.dcm"
    path.write_bytes(instance("PNEUMONIA"))
    header = pydicom.dcmread(path, stop_before_pixels=True)
    study = Study(study_uid=str(header.StudyInstanceUID), model_version="tiny-test-1", label=Label.PNEUMONIA,
                  probability=0.9, threshold=0.5, revision=1)
    source = Instance(1, str(header.SOPInstanceUID), [str(path)], None, Status.DONE, Label.PNEUMONIA, 0.9)
    return sr.build_report(study, [source])
