"""Imaging stage: kind detection by content, decoding JPEG/PNG/DICOM, DICOM metadata and rejections."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from dataclasses import fields
from pathlib import Path

import helpers
import numpy as np
import pytest
from PIL import Image
from support import dicoms, xrays

from pneumoscan.domain import DicomMeta
from pneumoscan.imaging import (
    DICOM,
    GIF,
    JPEG,
    PNG,
    TIFF,
    DecodedImage,
    Rejected,
    decode,
    detect_kind,
    looks_complete,
    patient_ref,
)

SOURCE = xrays.PNEUMONIA_IMAGES[0]
SIZE = (64, 64)


def _head(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(132)


# --- detect_kind ---------------------------------------------------------------------------------


def test_detect_kind_by_content(tmp_path: Path) -> None:
    jpeg = xrays.write_jpeg(SOURCE, tmp_path / "a.jpeg")
    png = xrays.write_png(SOURCE, tmp_path / "a.png")
    dcm = dicoms.write_dicom(SOURCE, tmp_path / "a.dcm")
    assert detect_kind(_head(jpeg)) == JPEG
    assert detect_kind(_head(png)) == PNG
    assert detect_kind(_head(dcm)) == DICOM


def test_detect_kind_ignores_the_file_name(tmp_path: Path) -> None:
    png_named_jpg = xrays.write_png(SOURCE, tmp_path / "really-a-png.jpg")
    dicom_named_png = dicoms.write_dicom(SOURCE, tmp_path / "really-a-dicom.png")
    jpeg_without_suffix = xrays.write_jpeg(SOURCE, tmp_path / "IMG0001")
    assert detect_kind(_head(png_named_jpg)) == PNG
    assert detect_kind(_head(dicom_named_png)) == DICOM
    assert detect_kind(_head(jpeg_without_suffix)) == JPEG
    # ... and decode agrees with detect_kind rather than with the suffix.
    assert decode(png_named_jpg.read_bytes(), SIZE, helpers.POLICY).kind == PNG


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"BM" + bytes(200),  # BMP
        b"RIFF\x00\x10\x00\x00WEBPVP8 " + bytes(200),  # WebP
        b"%PDF-1.7\n" + bytes(200),
        b"hello, this is text" * 10,
        bytes(128) + b"DIC",  # too short to hold the DICM marker
        bytes(127) + b"DICM" + bytes(10),  # marker at the wrong offset
    ],
)
def test_detect_kind_unknown(head: bytes) -> None:
    assert detect_kind(head) is None


@pytest.mark.parametrize("file_meta", [True, False], ids=["with-file-meta", "bare-dataset"])
@pytest.mark.parametrize("syntax", ["implicit-le", "explicit-le", "explicit-be"])
def test_dicom_without_preamble_is_read(syntax: str, file_meta: bool) -> None:
    # No 128-byte preamble and no DICM marker: recognised by the opening element, then read.
    data = dicoms.dicom_bytes(SOURCE, syntax=syntax, preamble=False, file_meta=file_meta)
    assert data[128:132] != b"DICM"
    assert detect_kind(data[:132]) == DICOM
    reference = decode(dicoms.dicom_bytes(SOURCE), SIZE, helpers.POLICY)
    image = decode(data, SIZE, helpers.POLICY)
    np.testing.assert_array_equal(image.pixels, reference.pixels)
    assert image.dicom is not None and image.dicom.sop_instance_uid is not None


def test_looks_complete() -> None:
    data = xrays.jpeg_bytes(SOURCE)
    png = xrays.png_bytes(SOURCE)
    assert looks_complete(JPEG, data[-16:])
    assert not looks_complete(JPEG, data[: len(data) // 2][-16:])
    assert looks_complete(PNG, png[-16:])
    assert not looks_complete(PNG, png[:-1][-16:])
    assert not looks_complete(DICOM, dicoms.dicom_bytes(SOURCE)[-16:])
    assert not looks_complete(None, data[-16:])


# --- decode: rasters -----------------------------------------------------------------------------


def _check_image(image: DecodedImage, size: tuple[int, int]) -> None:
    assert isinstance(image, DecodedImage)
    assert image.pixels.shape == size
    assert image.pixels.dtype == np.float32
    assert float(image.pixels.min()) >= 0.0
    assert float(image.pixels.max()) <= 1.0
    assert float(image.pixels.std()) > 0.05  # a real radiograph, not a flat field


@pytest.mark.parametrize("size", [(64, 64), (224, 224), (100, 80)])
def test_decode_jpeg_shape_and_range(size: tuple[int, int]) -> None:
    image = decode(xrays.jpeg_bytes(SOURCE), size, helpers.POLICY)
    _check_image(image, size)
    assert image.kind == JPEG
    assert image.dicom is None


def test_decode_jpeg_matches_pillow_at_native_size() -> None:
    reference = xrays.gray(SOURCE).astype(np.float32) / 255.0
    image = decode(xrays.jpeg_bytes(SOURCE), reference.shape, helpers.POLICY)
    # draft("L") takes the JPEG's own luma plane, Pillow's convert("L") recomputes it from RGB.
    assert np.abs(image.pixels - reference).mean() < 0.01
    assert np.abs(image.pixels - reference).max() < 0.05


def test_decode_png_8bit_is_exact() -> None:
    reference = xrays.gray(SOURCE).astype(np.float32) / 255.0
    image = decode(xrays.png_bytes(SOURCE, "L"), reference.shape, helpers.POLICY)
    assert image.kind == PNG
    np.testing.assert_allclose(image.pixels, reference, atol=1e-6)


def test_decode_png_rgb_is_gray() -> None:
    reference = xrays.gray(SOURCE).astype(np.float32) / 255.0
    image = decode(xrays.png_bytes(SOURCE, "RGB"), reference.shape, helpers.POLICY)
    np.testing.assert_allclose(image.pixels, reference, atol=1.5 / 255)


def test_decode_png_16bit_is_min_max_normalized() -> None:
    values = xrays.gray(SOURCE).astype(np.float64) * 257
    expected = (values - values.min()) / (values.max() - values.min())
    image = decode(xrays.png_bytes(SOURCE, "I;16"), values.shape, helpers.POLICY)
    assert image.kind == PNG
    np.testing.assert_allclose(image.pixels, expected, atol=1e-5)


def test_decode_resizes_without_transposing() -> None:
    # A non-square target: height 100, width 50. The left half of the picture must stay on the left.
    pixels = np.zeros((224, 224), np.uint8)
    pixels[:, :112] = 255
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    image = decode(out.getvalue(), (100, 50), helpers.POLICY)
    assert image.pixels.shape == (100, 50)
    assert image.pixels[:, :20].mean() > 0.99
    assert image.pixels[:, -20:].mean() < 0.01


# --- decode: DICOM -------------------------------------------------------------------------------


def test_decode_dicom_shape_range_and_metadata() -> None:
    ds = dicoms.dicom_dataset(SOURCE)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    image = decode(out.getvalue(), SIZE, helpers.policy(salt=b"pepper"))
    _check_image(image, SIZE)
    assert image.kind == DICOM
    meta = image.dicom
    assert meta is not None
    assert meta.study_uid == ds.StudyInstanceUID
    assert meta.series_uid == ds.SeriesInstanceUID
    assert meta.sop_instance_uid == ds.SOPInstanceUID
    assert (meta.modality, meta.body_part, meta.view_position, meta.study_date) == ("DX", "CHEST", "AP", "20240315")
    assert meta.patient_ref is not None and len(meta.patient_ref) == 64
    int(meta.patient_ref, 16)  # hex
    assert dicoms.PATIENT_ID not in meta.patient_ref
    # Nothing identifying is carried at all: no field holds the name, ID or birth date.
    values = [str(getattr(meta, f.name)) for f in fields(DicomMeta)]
    for secret in (dicoms.PATIENT_ID, dicoms.PATIENT_NAME, "Doe", dicoms.PATIENT_BIRTH_DATE):
        assert not any(secret in v for v in values)


def test_patient_ref_is_salted_and_stable() -> None:
    a = decode(dicoms.dicom_bytes(SOURCE), SIZE, helpers.policy(salt=b"one")).dicom
    b = decode(dicoms.dicom_bytes(xrays.NORMAL_IMAGES[0]), SIZE, helpers.policy(salt=b"one")).dicom
    c = decode(dicoms.dicom_bytes(SOURCE), SIZE, helpers.policy(salt=b"two")).dicom
    d = decode(dicoms.dicom_bytes(SOURCE, patient_id="OTHER9"), SIZE, helpers.policy(salt=b"one")).dicom
    assert a is not None and b is not None and c is not None and d is not None
    assert a.patient_ref == b.patient_ref  # same patient, different studies: linkable
    assert a.patient_ref != c.patient_ref  # another salt: not linkable across installs
    assert a.patient_ref != d.patient_ref  # another patient
    assert a.patient_ref == patient_ref(dicoms.PATIENT_ID, b"one")


def test_decode_dicom_follows_the_picture() -> None:
    # The DICOM was made from the JPEG: decoded, they must show the same picture.
    size = (224, 224)
    from_jpeg = decode(xrays.jpeg_bytes(SOURCE), size, helpers.POLICY).pixels
    from_dicom = decode(dicoms.dicom_bytes(SOURCE), size, helpers.POLICY).pixels
    assert np.corrcoef(from_jpeg.ravel(), from_dicom.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("size", [(224, 224), (64, 64)])
def test_monochrome1_is_inverted(size: tuple[int, int]) -> None:
    mono2 = decode(dicoms.dicom_bytes(SOURCE, photometric="MONOCHROME2"), size, helpers.POLICY).pixels
    mono1 = decode(dicoms.dicom_bytes(SOURCE, photometric="MONOCHROME1"), size, helpers.POLICY).pixels
    # Stored values are inverted (4095 - v) and the decoder inverts them back: same picture.
    np.testing.assert_allclose(mono1, mono2, atol=1e-4)
    # Read the other way round: the same stored values labelled MONOCHROME1 give ~1 - x.
    stored = xrays.twelve_bit(SOURCE)
    relabelled = decode(dicoms.dicom_bytes(SOURCE, photometric="MONOCHROME1", stored=stored), size,
                        helpers.POLICY).pixels
    np.testing.assert_allclose(relabelled, 1.0 - mono2, atol=1e-4)


def test_rescale_slope_and_intercept_feed_the_window() -> None:
    # Stored v in 0..4095; modality values m = 2 v - 1000. The window is given in modality units,
    # so it only lands where intended when the rescale is applied first.
    v = xrays.twelve_bit(SOURCE).astype(np.float64)
    slope, intercept, center, width = 2.0, -1000.0, 3000.0, 4000.0
    m = slope * v + intercept
    # DICOM PS3.3 C.11.2.1.2.1 linear window, then the decoder's min-max stretch.
    expected = np.clip((m - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert 0.01 < (expected == 0).mean() < 0.9 and 0.01 < (expected == 1).mean() < 0.9  # both ends clip

    data = dicoms.dicom_bytes(SOURCE, RescaleSlope=slope, RescaleIntercept=intercept,
                               WindowCenter=center, WindowWidth=width)
    pixels = decode(data, v.shape, helpers.POLICY).pixels
    np.testing.assert_allclose(pixels, expected, atol=1e-3)

    # Windowing the raw stored values instead would give a clearly different picture.
    raw = np.clip((v - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    raw = (raw - raw.min()) / (raw.max() - raw.min())
    assert np.abs(raw - expected).mean() > 0.1


def test_rescale_without_window_keeps_the_picture() -> None:
    plain = decode(dicoms.dicom_bytes(SOURCE), (224, 224), helpers.POLICY).pixels
    rescaled = decode(dicoms.dicom_bytes(SOURCE, RescaleSlope=0.5, RescaleIntercept=-1024.0), (224, 224),
                      helpers.POLICY).pixels
    np.testing.assert_allclose(rescaled, plain, atol=1e-4)


def test_real_pydicom_ct_file_is_rejected_by_modality() -> None:
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert detect_kind(data[:132]) == DICOM
    with pytest.raises(Rejected, match="modality CT"):
        decode(data, SIZE, helpers.POLICY)
    # ... but it decodes when CT is allowed, which shows the decoder handles third-party files.
    image = decode(data, SIZE, helpers.policy(modalities=frozenset({"CT"}), body_parts=frozenset()))
    _check_image(image, SIZE)


def test_dicom_body_part_rules() -> None:
    with pytest.raises(Rejected, match="body part HAND"):
        decode(dicoms.dicom_bytes(SOURCE, body_part="HAND"), SIZE, helpers.POLICY)
    # An absent BodyPartExamined is accepted.
    assert decode(dicoms.dicom_bytes(SOURCE, body_part=None), SIZE, helpers.POLICY).kind == DICOM


# --- decode: rejections --------------------------------------------------------------------------


def test_rejects_empty() -> None:
    with pytest.raises(Rejected, match="empty"):
        decode(b"", SIZE, helpers.POLICY)


def test_rejects_unknown_bytes() -> None:
    with pytest.raises(Rejected, match="unrecognized format"):
        decode(os.urandom(4096), SIZE, helpers.POLICY)


def test_rejects_jpeg_magic_followed_by_garbage() -> None:
    with pytest.raises(Rejected, match="JPEG") as info:
        decode(b"\xff\xd8\xff" + os.urandom(4096), SIZE, helpers.POLICY)
    assert "Traceback" not in info.value.reason


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_rejects_truncated_jpeg(fraction: float) -> None:
    data = xrays.jpeg_bytes(SOURCE)
    with pytest.raises(Rejected, match="truncated JPEG"):
        decode(data[: int(len(data) * fraction)], SIZE, helpers.POLICY)


def test_rejects_truncated_png() -> None:
    data = xrays.png_bytes(SOURCE)
    with pytest.raises(Rejected, match="truncated PNG"):
        decode(data[: len(data) // 2], SIZE, helpers.POLICY)


@pytest.mark.parametrize("cut", [200, 2000, -5000])
def test_rejects_truncated_dicom(cut: int) -> None:
    data = dicoms.dicom_bytes(SOURCE)
    with pytest.raises(Rejected, match="DICOM"):
        decode(data[:cut], SIZE, helpers.POLICY)


def test_rejects_blank_dicom() -> None:
    flat = np.full((64, 64), 1000, np.uint16)
    with pytest.raises(Rejected, match="blank"):
        decode(dicoms.dicom_bytes(SOURCE, stored=flat), SIZE, helpers.POLICY)


def test_rejects_too_many_pixels() -> None:
    with pytest.raises(Rejected, match="too large"):
        decode(xrays.jpeg_bytes(SOURCE), SIZE, helpers.policy(max_pixels=224 * 224 - 1))
    with pytest.raises(Rejected, match="too large"):
        decode(dicoms.dicom_bytes(SOURCE), SIZE, helpers.policy(max_pixels=224 * 224 - 1))
    assert decode(xrays.jpeg_bytes(SOURCE), SIZE, helpers.policy(max_pixels=224 * 224)).kind == JPEG


# --- decode: more raster formats and bad input --------------------------------------------------


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


GRAY = xrays.gray(SOURCE)
RGB = Image.fromarray(np.stack([GRAY] * 3, axis=-1), mode="RGB")


@pytest.mark.parametrize(("name", "data", "kind", "tolerance"), [
    ("cmyk-jpeg", _encoded(RGB.convert("CMYK"), "JPEG", quality=95), JPEG, 0.02),
    ("palette-png", _encoded(RGB.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"), PNG, 1e-6),
    ("gray-alpha-png", _encoded(Image.fromarray(GRAY).convert("LA"), "PNG"), PNG, 1e-6),
    ("still-gif", _encoded(Image.fromarray(GRAY), "GIF"), GIF, 1e-6),
    ("8bit-tiff", _encoded(Image.fromarray(GRAY), "TIFF"), TIFF, 1e-6),
    ("rgb-lzw-tiff", _encoded(RGB, "TIFF", compression="tiff_lzw"), TIFF, 1e-6),
])
def test_palette_cmyk_and_other_rasters_become_gray(name: str, data: bytes, kind: str, tolerance: float) -> None:
    image = decode(data, GRAY.shape, helpers.POLICY)
    assert image.kind == kind
    assert np.abs(image.pixels - GRAY / 255.0).max() <= tolerance


def test_decode_tiff_16bit_is_min_max_normalized() -> None:
    values = GRAY.astype(np.float64) * 257
    image = decode(_encoded(Image.fromarray(values.astype(np.uint16)), "TIFF"), GRAY.shape, helpers.POLICY)
    assert image.kind == TIFF
    np.testing.assert_allclose(image.pixels, (values - values.min()) / (values.max() - values.min()), atol=1e-5)


def test_animated_gif_and_multi_page_tiff_are_rejected() -> None:
    frames = [Image.fromarray(GRAY), Image.fromarray(255 - GRAY), Image.fromarray(GRAY // 2)]
    gif = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.raises(Rejected, match="animated GIF with 3 frames"):
        decode(gif, SIZE, helpers.POLICY)
    tiff = _encoded(frames[0], "TIFF", save_all=True, append_images=frames[1:2])
    with pytest.raises(Rejected, match="multi-page TIFF with 2 frames"):
        decode(tiff, SIZE, helpers.POLICY)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1000)))
            + chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(xrays.jpeg_bytes(SOURCE))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("data", [_png_claiming(100_000, 100_000), _png_claiming(12_000, 9_000),
                                  _jpeg_claiming(60_000, 60_000), _jpeg_claiming(12_000, 9_000)],
                         ids=["png-10-gigapixels", "png-108-megapixels", "jpeg-3.6-gigapixels", "jpeg-108-megapixels"])
def test_decompression_bombs_are_refused_from_the_header(data: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(Rejected, match="image too large"):
        decode(data, SIZE, helpers.POLICY)
    assert time.perf_counter() - started < 5.0  # nothing was decompressed: that would take minutes


_BUFFERS = """
import ctypes, resource, sys
sys.path.insert(0, {tests!r})
import helpers
from support import dicoms, xrays
import numpy as np
from pneumoscan.imaging import decode
from pneumoscan.memory import keep_large_buffers

class Info(ctypes.Structure):  # glibc's struct mallinfo2: hblkhd is the bytes held in mapped blocks
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                      "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if {tuned}:
    assert keep_large_buffers()
# 48 MiB, over the most glibc's adaptive threshold ever rises to (32 MiB), under the tuned 64 MiB
mapped = []
for _ in range(3):
    block = np.ones(48 << 20, np.uint8)
    mapped.append(libc.mallinfo2().hblkhd >= 48 << 20)
    del block
stored = np.tile(xrays.twelve_bit(xrays.PNEUMONIA_IMAGES[0]), (8, 9))[:1700, :2000]
data = dicoms.dicom_bytes(xrays.PNEUMONIA_IMAGES[0], stored=np.ascontiguousarray(stored),
                           **dicoms.IDENTITY_WINDOW_12)
decode(data, (224, 224), helpers.POLICY)  # the first decode maps the buffers in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    decode(data, (224, 224), helpers.POLICY)
print(sum(mapped), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def test_keeping_large_buffers_serves_image_sized_blocks_from_the_heap_so_decodes_stop_faulting() -> None:
    """Fresh processes, plain and tuned: where large blocks come from, and page faults per decode after the first.

    Both are counts, not times. How many faults a plain process takes varies with the machine (glibc's
    adaptive threshold, transparent huge pages), so the plain side is checked by where its blocks come
    from, and the tuned decode against the size of its own buffers.
    """
    import subprocess
    import sys

    if not hasattr(__import__("ctypes").CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("needs glibc 2.33 or later")
    tests = str(Path(__file__).resolve().parents[1])

    def measure(tuned: bool) -> tuple[int, float]:
        done = subprocess.run([sys.executable, "-c", _BUFFERS.format(tests=tests, tuned=tuned)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        mapped, faults = done.stdout.split()[-2:]
        return int(mapped), float(faults)

    (plain_mapped, _), (tuned_mapped, tuned_faults) = measure(False), measure(True)
    assert plain_mapped == 3  # glibc maps each 48 MiB block afresh, and unmaps it on free
    assert tuned_mapped == 0  # kept on the heap, each time
    # 2000x1700: 6.8 MB of stored values alone is 1,660 pages of 4 KiB; plain processes fault in
    # hundreds to thousands of pages per decode (about 2,000 to 2,500 here)
    assert tuned_faults < 50, tuned_faults
