"""Pictures for the review pages: a stored image as PNG (decoded as the pipeline decodes it) and its heatmap.

Images are found by database id only. The file is read from the stored path, or from any other path
its content was seen at, and is shown only if its bytes still hash to the stored SHA-256, so that a
file replaced on disk is never shown under another image's id. Rendered PNGs are cached on disk by
content (and model version, for heatmaps), so a second view costs a file read.

The viewer's pictures come from one reading of the file: its own values at full resolution (values.bin, for
window/level in the browser) and a small first rendition of them at their first window (preview.png, the fast
first paint), both cached at once, so that opening a case decodes its file once however its pictures are asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pneumoscan.config import Settings
from pneumoscan.db import Database
from pneumoscan.db.images import content_hash, picture_paths
from pneumoscan.db.reviews import UnknownImage
from pneumoscan.imaging import ImagingError, InternalError, decode
from pneumoscan.inputs import read_content
from pneumoscan.models.bundle import ModelBundle, load_bundle
from pneumoscan.services.heatmaps import DISPLAY_SIDE, fit_within, heatmap_png, png_bytes, render_file

_CACHE_VERSION = "3"  # bump when rendering changes, so old cached pictures are not served


def _private_folder(folder: Path) -> None:
    """Create ``folder`` and its missing parents for the owner only (0700): rendered pictures are patient images."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for made in missing:
        os.chmod(made, 0o700)  # mkdir's mode is masked by the umask


def warm() -> None:
    """Load what reading a file for the viewer takes (pydicom: about 0.3 s; numpy's percentile, PIL's PNG encoder)
    ahead of time, by importing it and drawing a tiny preview."""
    import pydicom.pixels  # noqa: F401

    np.percentile(np.zeros(4), 50)
    preview_png(np.zeros((2, 2), np.uint16), {"low": 0.0, "step": 1.0, "invert": False,
                                              "windows": [{"center": 0.5, "width": 1.0}]})


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
        self._stripes = [threading.Lock() for _ in range(16)]

    def bundle(self) -> ModelBundle:
        with self._lock:
            if self._bundle is None:
                self._bundle = load_bundle(self.settings.model_path)
            return self._bundle

    def image_png(self, image_id: int) -> bytes:
        sha256 = self._sha256(image_id)

        def render() -> bytes:
            source = self._source(image_id, sha256)
            try:
                return png_bytes(self._display(source))
            except NotRenderable as exc:  # rejected by the pipeline's policy (a lateral, say): shown all the same
                if exc.status != 422:
                    raise
                return png_bytes(fit_within(_windowed(source.data), DISPLAY_SIDE))

        return self._cached(f"{sha256}-image", render)

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

    def values(self, image_id: int) -> bytes:
        """The image's own values for the viewer's window/level, at full resolution (see ``values_payload``)."""
        return self._viewer(image_id, "values")

    def preview(self, image_id: int) -> bytes:
        """The viewer's first paint: the values at their first window, small (see ``preview_png``)."""
        return self._viewer(image_id, "preview")

    def _viewer(self, image_id: int, which: Literal["values", "preview"]) -> bytes:
        """One of the viewer's pictures; on a miss both are made from one reading of the file, and cached."""
        sha256 = self._sha256(image_id)
        path = self._path(f"{sha256}-{which}")
        with self._stripes[int(sha256[:8], 16) % len(self._stripes)]:  # the same file is read once at a time
            try:
                return path.read_bytes()
            except FileNotFoundError:
                pass
            values, meta = file_values(self._source(image_id, sha256).data)
            made = {"values": payload(values, meta), "preview": preview_png(values, meta)}
            for name, data in made.items():
                self._store(self._path(f"{sha256}-{name}"), data)
            return made[which]

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

    def _path(self, key: str) -> Path:
        return self.cache / f"{key}-v{_CACHE_VERSION}{'.bin' if key.endswith('-values') else '.png'}"

    def _cached(self, key: str, render: Callable[[], bytes]) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = render()
        self._store(path, data)
        return data

    def _store(self, path: Path, data: bytes) -> None:
        _private_folder(self.cache)
        temporary = path.with_suffix(f".{threading.get_ident()}.tmp")
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            out.write(data)
        os.replace(temporary, path)


def values_payload(data: bytes) -> bytes:
    """A file's values for window/level in the browser (``file_values``), as values.bin sends them."""
    return payload(*file_values(data))


def file_values(data: bytes) -> tuple[np.ndarray, dict[str, object]]:
    """A file's values for window/level: uint16 pixels, and the numbers to read them by.

    DICOM: the first frame's stored values through the Modality LUT (PS3.3 C.11.1), quantized to 16 bits as
    ``low + q * step``; the numbers are width, height, low, step, the file's own windows (Window Center and
    Width, with their explanations), a lung window and the full range, and whether the file is MONOCHROME1.
    JPEG and PNG: their grey levels (0 to 255), with the full range as the only window. No policy applies
    here (a lateral the pipeline rejected is shown too), and nothing of the header but these numbers is kept.
    """
    from pneumoscan.imaging.kinds import DICOM, detect_kind

    try:
        if detect_kind(data[:132]) == DICOM:
            return _dicom_values(data)
        return _raster_values(data)
    except (ImagingError, ValueError, OSError) as exc:
        raise NotRenderable(422, f"the file cannot be shown: {exc}") from None


def payload(values: np.ndarray, meta: dict[str, object]) -> bytes:
    """values.bin: a 4-byte length, the numbers as JSON, padding, then the uint16 pixels (little-endian)."""
    head = json.dumps(meta).encode()
    head += b" " * (-(4 + len(head)) % 2)  # the pixels start at an even offset (a Uint16Array's alignment)
    return struct.pack("<I", len(head)) + head + values.astype("<u2").tobytes()


def windowed(values: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """The values through their first window (inverted for MONOCHROME1) as 8-bit grey, as the viewer draws them."""
    window = meta["windows"][0]
    lower = window["center"] - window["width"] / 2
    grey = (meta["low"] + np.arange(65536, dtype=np.float64) * meta["step"] - lower) * (255 / window["width"])
    table = np.clip(grey, 0, 255).astype(np.uint8)  # truncated, as the viewer's own table is
    return (255 - table if meta["invert"] else table)[values]


def preview_png(values: np.ndarray, meta: dict[str, Any], side: int = DISPLAY_SIDE) -> bytes:
    """The viewer's first paint: the values at their first window, reduced by a whole factor (box averages) to at
    most ``side`` a side (and more than half of it), as a PNG compressed for speed (the full values follow it)."""
    import io

    from PIL import Image

    picture = Image.fromarray(windowed(values, meta))
    factor = -(-max(picture.size) // side)  # ceil
    if factor > 1:
        picture = picture.reduce(factor)
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _dicom_values(data: bytes) -> tuple[np.ndarray, dict[str, object]]:
    from pneumoscan.imaging.dicom.pixels import apply_modality_lut
    from pneumoscan.imaging.dicom.read import first_frame, photometric, read_dataset

    ds = read_dataset(data, header_only=False)
    stored = first_frame(ds)
    if stored.ndim == 3:  # colour: its luminance
        stored = stored[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = apply_modality_lut(stored, ds)
    low, high = float(x.min()), float(x.max())
    if x.dtype.kind in "iu" and high - low <= 65535:  # integers (no rescale, say): exact, in whole steps
        step = 1.0
        q = (x.astype(np.int64 if x.dtype.itemsize >= 4 else np.int32) - int(low)).astype(np.uint16)
    else:
        x = x.astype(np.float32)
        step = max((high - low) / 65535.0, 1.0) if high > low else 1.0
        q = np.clip(np.rint((x - low) / step), 0, 65535).astype(np.uint16)
    windows = []
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centers is not None and widths is not None:
        centers = list(centers) if hasattr(centers, "__len__") and not isinstance(centers, str) else [centers]
        widths = list(widths) if hasattr(widths, "__len__") and not isinstance(widths, str) else [widths]
        names = ds.get("WindowCenterWidthExplanation") or []
        names = [names] if isinstance(names, str) else list(names)
        for i, (c, w) in enumerate(zip(centers, widths, strict=False)):
            try:
                center, width = float(c), float(w)
            except (TypeError, ValueError):
                continue
            if np.isfinite(center) and np.isfinite(width) and width > 0:
                name = str(names[i]).strip() if i < len(names) and str(names[i]).strip() else f"file window {i + 1}"
                windows.append({"name": name[:32], "center": center, "width": width})
    sample = x[:: max(1, x.shape[0] // 256), :: max(1, x.shape[1] // 256)]
    p2, p40, p60, p98 = (float(v) for v in np.percentile(sample, (2, 40, 60, 98)))
    monochrome1 = photometric(ds) == "MONOCHROME1"
    # Lung fields are the darker part of a radiograph (the brighter under MONOCHROME1): centred there, and wide
    # enough to keep the vessels and the edges of the mediastinum in view.
    windows.append({"name": "lung", "center": p40 if not monochrome1 else p60, "width": max(p98 - p2, 1.0) * 0.75})
    windows.append({"name": "full range", "center": (low + high) / 2, "width": max(high - low, 1.0)})
    height, width = q.shape
    return q, {"kind": "dicom", "width": width, "height": height, "low": low, "step": step, "windows": windows,
               "invert": monochrome1}


def _raster_values(data: bytes) -> tuple[np.ndarray, dict[str, object]]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        grey = np.asarray(picture.convert("L"), dtype=np.uint16)
    height, width = grey.shape
    return grey, {"kind": "raster", "width": width, "height": height, "low": 0.0, "step": 1.0, "invert": False,
                  "windows": [{"name": "full range", "center": 127.5, "width": 256.0}]}


def _windowed(data: bytes) -> np.ndarray:
    """The file's values through its first window onto [0, 1]: for a file decode() refuses."""
    return windowed(*file_values(data)).astype(np.float32) / 255
