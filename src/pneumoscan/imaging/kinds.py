"""Format detection: a file's kind from its first bytes (never its name), and whether it looks complete."""

from __future__ import annotations

import struct

JPEG, PNG, TIFF, GIF, DICOM = "jpeg", "png", "tiff", "gif", "dicom"
ACCEPTED = "JPEG, PNG, TIFF, GIF or DICOM"
HEAD = 132  # bytes that detect_kind needs: the 128-byte DICOM preamble and its DICM marker

_MAGIC = (
    (b"\xff\xd8\xff", JPEG),
    (b"\x89PNG\r\n\x1a\n", PNG),
    (b"II*\x00", TIFF),
    (b"MM\x00*", TIFF),
    (b"GIF87a", GIF),
    (b"GIF89a", GIF),
)

# Explicit VR codes, to recognise a DICOM data set written without the Part 10 preamble.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)


def detect_kind(head: bytes) -> str | None:
    """Name the format of a file from its first bytes (at least 132), or None when unknown.

    DICOM is recognised by the ``DICM`` marker after the 128-byte preamble, or, for a data set
    written without the preamble, by an opening element of group 0002 or 0008.
    """
    if len(head) >= HEAD and head[128:HEAD] == b"DICM":
        return DICOM  # first: a preamble may itself hold a TIFF header (dual-personality files)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return DICOM if _is_raw_dataset(head) else None


def _is_raw_dataset(head: bytes) -> bool:
    if len(head) < 12:
        return False
    for order in "<>":
        group, element = struct.unpack(order + "HH", head[:4])
        if group not in (0x0002, 0x0008) or element > 0x00FF:
            continue
        if head[4:6] in _VRS:  # explicit VR, little or big endian
            return True
        length = struct.unpack(order + "I", head[4:8])[0]
        if order == "<" and 0 < length < 1024:  # implicit VR exists only in little endian
            return True
    return False


def looks_complete(kind: str | None, tail: bytes) -> bool:
    """True when a file's last bytes show its format's end marker (used to trust close-write events)."""
    if kind == JPEG:
        return tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    if kind == PNG:
        return tail.endswith(b"IEND\xaeB`\x82")
    return False
