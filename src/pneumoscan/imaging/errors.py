"""Imaging errors: what a file that cannot become a model input raises, and which codec errors mean damage."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from pneumoscan.domain import DicomMeta

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clean_text(text: str, limit: int = 300) -> str:
    """One line of printable text, at most ``limit`` characters: safe to store and to log."""
    return " ".join(_CONTROL.sub(" ", text).split())[:limit]


def describe(exc: BaseException) -> str:
    """An exception as one short line: its type, and its message when it has one."""
    text = clean_text(str(exc), 200)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ImagingError(Exception):
    """A file that cannot become a model input. ``transient`` errors may succeed on a retry."""

    transient = False

    def __init__(self, reason: str, dicom: DicomMeta | None = None) -> None:
        reason = clean_text(reason)
        super().__init__(reason)
        self.reason = reason
        self.dicom = dicom  # what the header said, when it was read: a rejected instance still has its study


class Rejected(ImagingError):
    """Permanent: the bytes are not a usable chest radiograph. Retrying will not help."""


class Ignored(Rejected):
    """Not for the model by rule: a non-image object (a report, key object, presentation state...). Stored once
    as ``ignored`` with this reason; it never counts among its study's instances nor reopens the study."""


class Unavailable(ImagingError):
    """Transient: the file could not be read or decoded right now (permissions, vanished, memory)."""

    transient = True


class InternalError(Exception):
    """Not the file's fault: decoding failed in a way no codec reports damaged bytes, so it is our bug.

    Deliberately not an ImagingError: the file must end ``failed`` (and be retried once the bug is
    fixed), never ``rejected`` for good. The original exception is chained as ``__cause__``, with its
    traceback, for the log.
    """

    def __init__(self, reason: str) -> None:
        reason = clean_text(reason)
        super().__init__(reason)
        self.reason = reason


# What damaged bytes make the codecs raise, wherever in decoding they surface: Pillow's
# UnidentifiedImageError and other OSErrors ("image file is truncated"), SyntaxError from its plugins'
# header checks and ValueError; pydicom's ValueError and OSError, also raised later from lazily converted
# values; struct.error, EOFError and zlib.error from short or mangled compressed data; numpy's ValueError
# for a buffer that does not fit the shape a header claims. Anything else is a bug (InternalError).
DAMAGED: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
# Pillow treats these as damaged files too (Image.open turns them into UnidentifiedImageError), but
# they escape unconverted once the file is open: a TIFF without its size tags raises TypeError on seek.
PILLOW_DAMAGED: tuple[type[Exception], ...] = (TypeError, IndexError)
# pydicom's pixel handlers report a missing required element (Rows, a LUT's Descriptor or Data) as
# AttributeError or KeyError, as they look it up by keyword or by tag; a wrongly typed or sized value as
# TypeError or IndexError; and the failure of every decoding plugin as RuntimeError.
PYDICOM_DAMAGED: tuple[type[Exception], ...] = (AttributeError, KeyError, TypeError, IndexError, RuntimeError)


@contextmanager
def codec(kind: str, families: tuple[type[Exception], ...]) -> Iterator[None]:
    """Around a call into a codec only: ``families`` raised inside it mean damaged bytes, not a bug of ours.

    Keep the block to the library call itself, so that the same types raised by our own code still
    surface as InternalError.
    """
    try:
        yield
    except NotImplementedError:  # a RuntimeError, but it means "unsupported", which decode() says as such
        raise
    except families as exc:
        raise Rejected(f"corrupt or truncated {kind.upper()}: {describe(exc)}") from None
