"""The imaging stage's entry point: any file's bytes to a normalized grayscale image, or a stated reason why not."""

from __future__ import annotations

from collections.abc import Sequence

from pneumoscan.config import DecodePolicy
from pneumoscan.imaging.dicom import decode_dicom
from pneumoscan.imaging.dicom.reduced import ReducedDecode
from pneumoscan.imaging.errors import DAMAGED, ImagingError, InternalError, Rejected, Unavailable, clean_text, describe
from pneumoscan.imaging.image import DecodedImage
from pneumoscan.imaging.kinds import ACCEPTED, DICOM, HEAD, detect_kind
from pneumoscan.imaging.raster import decode_raster


def decode(
    data: bytes,
    size: tuple[int, int] | None,
    policy: DecodePolicy,
    *,
    strategies: Sequence[ReducedDecode] | None = None,
) -> DecodedImage:
    """Decode file bytes to a (height, width) = ``size`` float32 image in [0, 1], under ``policy``.

    ``size`` None keeps the stored size (for showing the image to a person). ``strategies`` are the
    ways to decode a large DICOM frame smaller (see ``imaging.dicom.reduced``; None: the default ones).

    Raises ``Rejected`` with a human-readable reason for anything that is not a usable image, and
    ``Unavailable`` when decoding ran out of memory. Nothing else escapes, whatever the bytes; an
    exception that damaged bytes do not cause (a bug of ours) becomes ``InternalError``.
    """
    if not data:
        raise Rejected("empty file (0 bytes)")
    kind = detect_kind(data[:HEAD])
    if kind is None:
        raise Rejected(f"unrecognized format: not {ACCEPTED} (checked by content, not name)")
    try:
        if kind == DICOM:
            return decode_dicom(data, size, policy, strategies)
        return decode_raster(data, kind, size, policy.max_pixels)
    except ImagingError:
        raise
    except MemoryError:
        raise Unavailable("not enough memory to decode the image") from None
    except NotImplementedError as exc:
        raise Rejected(f"unsupported {kind.upper()}: {clean_text(str(exc), 200)}") from None
    except DAMAGED as exc:
        raise Rejected(f"corrupt or truncated {kind.upper()}: {describe(exc)}") from None
    except Exception as exc:  # no codec reports damaged bytes so: rejecting would hide our bug for good
        raise InternalError(f"internal error while decoding a {kind.upper()}: {describe(exc)}") from exc
