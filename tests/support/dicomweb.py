"""The DICOMweb tests' peers: a real `pneumoscan serve` with a sender, a reviewer and an admin token, a real
Orthanc with its DICOMweb plugin (temporary configuration, free ports of 127.0.0.1, storage in a temporary
folder), and the study files and multipart bodies they exchange."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from . import dcmtk, dicoms
from .process import pneumoscan_env, unavailable, wait_for

FIXTURES = Path(__file__).parents[1] / "fixtures" / "images"
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AUTH = ("pacs", "orthanc-secret")
PASSWORD = "a long enough password"


@dataclass
class Server:
    """A running `pneumoscan serve`: its URL, the folder STOW-RS writes into, and an API token per role."""

    url: str
    spool: Path
    tokens: dict[str, str]  # role -> token

    def stow(self, body: Any, *, role: str | None = "sender", boundary: str = "b0undary",
             content_type: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {"Content-Type": content_type or f'multipart/related; type="application/dicom"; boundary={boundary}'}
        if role:
            sent["Authorization"] = f"Bearer {self.tokens[role]}"
        sent.update(headers or {})
        return httpx.post(f"{self.url}/dicomweb/studies", content=body, headers=sent, timeout=60)

    def files(self) -> list[str]:
        return sorted(p.name for p in self.spool.iterdir()) if self.spool.exists() else []


def add_users(data: Path) -> dict[str, str]:
    """A sender, a reviewer and an admin in ``data``'s database (made and migrated); a token per role."""
    from pneumoscan.db import open_database
    from pneumoscan.db.users import add_user, issue_token, use_password_hashing
    from pneumoscan.domain import Role

    data.mkdir(parents=True, exist_ok=True)
    previous = use_password_hashing("cheapest")
    db = open_database(f"sqlite:///{data / 'pneumoscan.db'}")
    tokens = {}
    try:
        with db.begin() as session:
            for name, role in (("pacs", Role.SENDER), ("rex", Role.REVIEWER), ("ada", Role.ADMIN)):
                add_user(session, name, role, PASSWORD)
                tokens[str(role)] = issue_token(session, name)
    finally:
        db.dispose()
        use_password_hashing(previous)
    return tokens


@contextmanager
def serve(exe: Path, data: Path, model: Path, spool: Path, **settings: str) -> Iterator[Server]:
    """`pneumoscan serve` on a free port of 127.0.0.1, on ``data`` (users added), STOW-RS writing into ``spool``."""
    tokens = add_users(data)
    port = dcmtk.free_port()
    env = pneumoscan_env(data, model, PNEUMOSCAN_PASSWORD_HASHING="cheapest", PNEUMOSCAN_DICOM_SPOOL=str(spool),
                         **settings)
    server = Server(f"http://127.0.0.1:{port}", spool, tokens)
    with _running([str(exe), "serve", "--port", str(port)], data / "serve.log", f"{server.url}/health",
                  "pneumoscan serve", env=env, stop_timeout=20):
        yield server


@contextmanager
def _running(argv: list[str], log_path: Path, ready_url: str, what: str, *, env: dict[str, str] | None = None,
             auth: tuple[str, str] | None = None, stop_timeout: float) -> Iterator[None]:
    """``argv`` started, its output in ``log_path``, until GET ``ready_url`` answers 200; stopped on leaving."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            return httpx.get(ready_url, auth=auth, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 60, 0.2, what)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=stop_timeout)


@dataclass
class Orthanc:
    url: str  # its REST API; DICOMweb under /dicom-web
    dicom_port: int = 0  # its DICOM (DIMSE) port, AE title ORTHANC

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, auth=ORTHANC_AUTH, timeout=120)

    def get(self, path: str) -> Any:
        answer = httpx.get(self.url + path, auth=ORTHANC_AUTH, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def upload(self, data: bytes) -> None:
        answer = httpx.post(self.url + "/instances", content=data, auth=ORTHANC_AUTH, timeout=60)
        assert answer.status_code == 200, answer.text


def orthanc_binary(dicomweb: bool = True) -> str:
    """Orthanc's program; without it (or its DICOMweb plugin, when asked for) the test skips, or fails under CI."""
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
    if binary is None or (dicomweb and not ORTHANC_PLUGIN.exists()):
        unavailable("Orthanc with its DICOMweb plugin is not installed (Debian: orthanc orthanc-dicomweb; .ci/run "
                    "installs them)")
    return binary


@contextmanager
def orthanc(folder: Path, pneumoscan: Server | None = None, *, dicomweb: bool = True,
            modalities: dict[str, list[Any]] | None = None) -> Iterator[Orthanc]:
    """A real Orthanc (HTTP Basic ``ORTHANC_AUTH``) whose DICOMweb client knows ``pneumoscan`` by its sender token;
    with ``dicomweb=False``, Orthanc alone (no plugin), knowing the DICOM peers in ``modalities``."""
    binary = orthanc_binary(dicomweb)
    folder.mkdir(parents=True, exist_ok=True)
    servers = {}
    if pneumoscan is not None:
        servers["pneumoscan"] = {"Url": f"{pneumoscan.url}/dicomweb/",
                                 "HttpHeaders": {"Authorization": f"Bearer {pneumoscan.tokens['sender']}"}}
    http_port, dicom_port = dcmtk.free_port(), dcmtk.free_port()
    config: dict[str, Any] = {
        "Name": "pneumoscan-test", "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port, "DicomPort": dicom_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {ORTHANC_AUTH[0]: ORTHANC_AUTH[1]},
        "StableAge": 1, "DicomModalities": modalities or {},
    }
    if dicomweb:
        config |= {"Plugins": [str(ORTHANC_PLUGIN)],
                   "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": servers}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    place = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port)
    with _running([binary, str(folder / "orthanc.json")], folder / "orthanc.log", place.url + "/system", "Orthanc",
                  auth=ORTHANC_AUTH, stop_timeout=30):
        yield place


def rg1() -> Path:
    """pydicom-data's real chest CR (RG1_UNCR.dcm: 7 MB, uncompressed)."""
    from pydicom.data import get_testdata_file

    source = get_testdata_file("RG1_UNCR.dcm")
    assert isinstance(source, str), "RG1_UNCR.dcm missing: install the dev extra (pydicom-data)"
    return Path(source)


def instance(name: str = "NORMAL", **kwargs: Any) -> bytes:
    """A chest DX made from a fixture image of class ``name`` (a new SOP Instance UID each time)."""
    source = sorted((FIXTURES / name).iterdir())[0]
    return dicoms.dicom_bytes(source, **kwargs)


def one_study(parts: list[bytes]) -> tuple[str, list[bytes]]:
    """``parts`` made one patient's one study: (its StudyInstanceUID, the files)."""
    import pydicom

    study = pydicom.uid.generate_uid()
    files = []
    for part in parts:
        ds = pydicom.dcmread(io.BytesIO(part))
        ds.StudyInstanceUID, ds.PatientID = study, dicoms.PATIENT_ID
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        files.append(out.getvalue())
    return study, files


def multipart(parts: list[bytes], boundary: str = "b0undary", kind: str = "application/dicom") -> bytes:
    out = io.BytesIO()
    for part in parts:
        out.write(f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + part + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def uids(reply: dict[str, Any], tag: str) -> list[str]:
    """The SOP Instance UIDs of the items of sequence ``tag`` in a DICOM JSON reply."""
    return [item["00081155"]["Value"][0] for item in reply.get(tag, {}).get("Value", []) if "00081155" in item]


def sop_uid(data: bytes) -> str:
    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
