"""DICOM decoding: read the header, triage it, decode the first frame (reduced where it can be), then its transforms."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pneumoscan.config import DecodePolicy
from pneumoscan.imaging.dicom import pixels, reduced
from pneumoscan.imaging.dicom.read import metadata, number, photometric, read_dataset
from pneumoscan.imaging.dicom.triage import check_codestream, triage
from pneumoscan.imaging.errors import DAMAGED, Rejected, describe
from pneumoscan.imaging.image import DecodedImage, resize
from pneumoscan.imaging.kinds import DICOM


def decode_dicom(
    data: bytes,
    size: tuple[int, int] | None,
    policy: DecodePolicy,
    strategies: Sequence[reduced.ReducedDecode] | None = None,
) -> DecodedImage:
    """Decode a DICOM file, with pydicom's own errors for damaged data counted as damage.

    pydicom converts values lazily, so these can surface from any attribute read, not just from dcmread.
    ``strategies`` are the ways to decode a large frame smaller (``reduced.DEFAULT`` when None); they
    apply only with a ``size`` and ``policy.reduced``.
    """
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        return _decode_dataset(data, size, policy, reduced.DEFAULT if strategies is None else strategies)
    except (InvalidDicomError, BytesLengthException) as exc:
        raise Rejected(f"corrupt or truncated DICOM: {describe(exc)}") from None


def _decode_dataset(
    data: bytes,
    size: tuple[int, int] | None,
    policy: DecodePolicy,
    strategies: Sequence[reduced.ReducedDecode],
) -> DecodedImage:
    from pydicom.errors import BytesLengthException, InvalidDicomError

    damaged: tuple[type[Exception], ...] = (*DAMAGED, InvalidDicomError, BytesLengthException)
    try:
        header = read_dataset(data, header_only=True)
    except damaged as exc:
        raise Rejected(f"corrupt or truncated DICOM header: {describe(exc)}") from None
    meta = metadata(header, policy.salt, policy.store_accession)
    try:
        triage(header, meta, policy)
    except Rejected as exc:
        exc.dicom = meta
        raise

    ds = read_dataset(data, header_only=False)
    if not ds.get("PixelData"):  # absent, or present with no value
        raise Rejected("DICOM file has no pixel data")
    frame = reduced.Frame(ds, check_codestream(ds, policy.max_pixels))
    frames = number(ds, "NumberOfFrames", 1)
    smaller = reduced.reduce(frame, size, strategies) if size is not None and policy.reduced else None
    # The first frame only, whatever the number of frames.
    array = frame.decoded() if smaller is None else smaller.values
    notes: tuple[str, ...] = (f"multi-frame image ({frames} frames): classified the first frame",) if frames > 1 else ()

    kind = photometric(ds)
    if kind == "PALETTE COLOR":
        array = pixels.apply_palette(array, ds)
    if array.ndim == 3:  # colour
        image = pixels.apply_presentation_lut(pixels.apply_luma(array, ds), ds, colour=True)
    elif kind not in pixels.GRAYSCALE:
        raise Rejected(f"unsupported photometric interpretation {kind or '(none)'}")
    else:
        image, note = pixels.apply_voi(array, ds, 1 if smaller is None else smaller.summed)
        notes += note
        image = pixels.apply_presentation_lut(image, ds)
    if smaller is not None and smaller.box is not None:  # one more row and column, so that its box lies inside
        spread = reduced.spread(image, smaller.weight) if smaller.weight else image
        image = np.pad(spread, ((0, 1), (0, 1)), mode="edge")
    return DecodedImage(resize(image, size, None if smaller is None else smaller.box), DICOM, meta, notes)
