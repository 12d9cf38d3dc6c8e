"""Pictures for the review pages: a stored image as PNG (decoded as the pipeline decodes it) and its heatmap.

Images are found by database id only. The file is read from the stored path, or from any other path
its content was seen at, and is shown only if its bytes still hash to the stored SHA-256, so that a
file replaced on disk is never shown under another image's id. Rendered PNGs are cached on disk by
content (and model version, for heatmaps), so a second view costs a file read.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumoscan.config import Settings
from pneumoscan.db import Database
from pneumoscan.db.images import content_hash, picture_paths
from pneumoscan.db.reviews import UnknownImage
from pneumoscan.imaging import ImagingError, InternalError, decode
from pneumoscan.inputs import read_content
from pneumoscan.models.bundle import ModelBundle, load_bundle
from pneumoscan.services.heatmaps import DISPLAY_SIDE, fit_within, heatmap_png, png_bytes, render_file

_CACHE_VERSION = "2"  # bump when rendering changes, so old cached pictures are not served


def _private_folder(folder: Path) -> None:
    """Create ``folder`` and its missing parents for the owner only (0700): rendered pictures are patient images."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for made in missing:
        os.chmod(made, 0o700)  # mkdir's mode is masked by the umask


class NotRenderable(Exception):
    """The image cannot be shown: unknown id, file gone or changed, or not decodable. ``status`` is HTTP's."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class _Source:
    sha256: str
    data: bytes


class Renderer:
    """Renders and caches pictures; loads the model (TensorFlow) only when a heatmap is first asked for."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db
        self.cache = settings.data_dir / "cache" / "render"
        self._bundle: ModelBundle | None = None
        self._lock = threading.Lock()

    def bundle(self) -> ModelBundle:
        with self._lock:
            if self._bundle is None:
                self._bundle = load_bundle(self.settings.model_path)
            return self._bundle

    def image_png(self, image_id: int) -> bytes:
        sha256 = self._sha256(image_id)
        return self._cached(f"{sha256}-image", lambda: png_bytes(self._display(self._source(image_id, sha256))))

    def heatmap_png(self, image_id: int) -> bytes:
        sha256 = self._sha256(image_id)
        bundle = self.bundle()
        key = f"{sha256}-heatmap-{hashlib.sha256(bundle.version.encode()).hexdigest()[:16]}"

        def render() -> bytes:
            source = self._source(image_id, sha256)
            try:
                return heatmap_png(render_file(bundle, source.data, self.settings.decode_policy,
                                               display_side=DISPLAY_SIDE))
            except (ImagingError, InternalError) as exc:
                raise NotRenderable(422, f"the file cannot be shown: {exc.reason}") from None

        return self._cached(key, render)

    def _sha256(self, image_id: int) -> str:
        try:
            with self.db() as session:
                sha256 = content_hash(session, image_id)
        except UnknownImage as exc:
            raise NotRenderable(404, str(exc)) from None
        if sha256 is None:
            raise NotRenderable(404, "this file could never be read, so there is no picture of it")
        return sha256

    def _source(self, image_id: int, sha256: str) -> _Source:
        """The bytes of the image, from the first of its known paths that still holds its content."""
        with self.db() as session:
            paths = picture_paths(session, image_id)
        found = read_content(paths, sha256)  # the stored path first
        if found is not None:
            return _Source(sha256, found[1])
        raise NotRenderable(404, "the file is no longer on disk with the content that was classified "
                                 f"(last stored at {paths[0] if paths else None})")

    def _decode(self, source: _Source, size: tuple[int, int] | None) -> np.ndarray:
        try:
            return decode(source.data, size, self.settings.decode_policy).pixels
        except (ImagingError, InternalError) as exc:
            raise NotRenderable(422, f"the file cannot be shown: {exc.reason}") from None

    def _display(self, source: _Source) -> np.ndarray:
        return fit_within(self._decode(source, None), DISPLAY_SIDE)

    def _cached(self, key: str, render: Callable[[], bytes]) -> bytes:
        path = self.cache / f"{key}-v{_CACHE_VERSION}.png"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = render()
        _private_folder(self.cache)
        temporary = path.with_suffix(f".{threading.get_ident()}.tmp")
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            out.write(data)
        os.replace(temporary, path)
        return data

