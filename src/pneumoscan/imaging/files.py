"""Reading input files: never through a link, never blocking on a pipe, and only the content that was classified."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from typing import BinaryIO

# Never follow a link (it may point outside the inbox), and never block opening a named pipe.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def open_input(path: str) -> BinaryIO:
    """Open an input file for reading without following a link or blocking on a pipe.

    Raises OSError as ``os.open`` does (a link gives ELOOP); the caller checks that it is a regular file.
    """
    return os.fdopen(os.open(path, _OPEN_FLAGS), "rb")


def read_content(paths: Iterable[str], sha256: str) -> tuple[str, bytes] | None:
    """(path, bytes) of the first of ``paths`` that is a regular file holding the content ``sha256``, else None.

    How stored images are read back to be shown or sent: by the paths their content was seen at,
    never following a link, and only while the bytes are still the ones that were classified.
    """
    for path in paths:
        try:
            with open_input(path) as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    continue
                data = fh.read()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == sha256:
            return path, data
    return None
