"""Input files: which files are inputs at all (the ignore rule), and the one way to open one (no link, no pipe)."""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".swp")

# Never follow a link (it may point outside the inbox), and never block opening a named pipe.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def is_ignored(path: Path, root: Path) -> bool:
    """The ignore rule: hidden files or folders, partial-download suffixes, and editor backups (``~``)."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return True
    if not parts or any(part.startswith(".") for part in parts):
        return True
    name = parts[-1].lower()
    return name.endswith("~") or name.endswith(IGNORED_SUFFIXES)


def iter_files(root: Path) -> Iterator[Path]:
    """Every not ignored file under ``root``, never following a symbolic link.

    A link (to a file or a folder, inside the inbox or out) is yielded as it is, unresolved, so that
    the pipeline can reject it with its reason rather than it vanishing without a trace.
    """
    for folder, dirs, files in os.walk(root):
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
        for name in sorted(files + links):
            path = Path(folder) / name
            if not is_ignored(path, root):
                yield path


def staging_name(name: str) -> str:
    """A unique temporary name to write a file under before renaming it to ``name``: one the ignore rule skips.

    Hidden and ``.tmp``, so that a watcher never sees half a file, whatever the folder.
    """
    return f".{name}.{secrets.token_hex(4)}.tmp"


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
