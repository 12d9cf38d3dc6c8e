"""Helpers of the web app tests: a site (the real app on a database the real pipeline filled), sign-in, CSRF."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import dicoms, xrays

PASSWORD = "a-long-enough-password"


@dataclass
class Site:
    """A running app with its settings, database and the ids of the images the pipeline stored."""

    app: Any
    settings: Any
    db: Any
    ids: dict[str, int]  # file name -> image id
    paths: dict[str, Path]

    def client(self) -> Any:
        from fastapi.testclient import TestClient

        return TestClient(self.app, base_url="http://testserver")

    def user(self, name: str, role: str = "reviewer") -> str:
        from pneumoscan.db.users import add_user

        with self.db.begin() as session:
            add_user(session, name, role, PASSWORD)
        return name

    def signed_in(self, name: str, role: str = "reviewer") -> Any:
        self.user(name, role)
        client = self.client()
        response = login(client, name, PASSWORD)
        assert response.status_code == 303, response.text
        return client

    def reader(self, name: str, role: str = "reviewer", blinded: bool = True) -> Any:
        """A new user signed in to a second app on the same database, with PNEUMOSCAN_BLINDED_READING=``blinded``."""
        from fastapi.testclient import TestClient

        from pneumoscan.web.app import create_app

        app = create_app(self.settings.model_copy(update={"blinded_reading": blinded}), self.db)
        self.user(name, role)
        client = TestClient(app, base_url="http://testserver")
        assert login(client, name, PASSWORD).status_code == 303
        return client


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: Any, name: str, password: str, next_url: str | None = None) -> Any:
    token = csrf_of(client.get("/login").text)
    data = {"csrf_token": token, "name": name, "password": password, **({"next": next_url} if next_url else {})}
    return client.post("/login", data=data, follow_redirects=False)


def build_site(settings: Any, sessions: Any, bundle: Any, folder: Path) -> Site:
    from pneumoscan.pipeline import classify_paths
    from pneumoscan.web.app import create_app

    files = {
        "n0.png": xrays.write_png(xrays.NORMAL_IMAGES[0], folder / "n0.png"),
        "n1.jpeg": xrays.write_jpeg(xrays.NORMAL_IMAGES[1], folder / "n1.jpeg"),
        "p0.png": xrays.write_png(xrays.PNEUMONIA_IMAGES[0], folder / "p0.png"),
        "p1.jpeg": xrays.write_jpeg(xrays.PNEUMONIA_IMAGES[1], folder / "p1.jpeg"),
        "d0.dcm": dicoms.write_dicom(xrays.PNEUMONIA_IMAGES[2], folder / "d0.dcm"),
        "bad.png": folder / "bad.png",
    }
    files["bad.png"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    results = classify_paths([str(p) for p in files.values()], bundle=bundle, sessions=sessions, settings=settings)
    from sqlalchemy import select

    from pneumoscan.db.schema import Image

    with sessions() as session:
        by_path = {path: image_id for image_id, path in session.execute(select(Image.id, Image.path))}
    ids = {name: by_path[str(path.resolve())] for name, path in files.items()}
    assert {r.status for r in results} == {"done", "rejected"}
    return Site(create_app(settings, sessions), settings, sessions, ids, files)


