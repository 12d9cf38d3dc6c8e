"""pynetdicom's log lines about our own outgoing associations (C-STORE, C-ECHO) kept out: we say it in one line."""

from __future__ import annotations

import logging
import threading

_lock = threading.Lock()
_filtered: set[str] = set()


def _requesting(thread: threading.Thread) -> bool:
    """Whether ``thread`` works for an association we requested rather than for the receiver.

    pynetdicom names an association's thread RequestorThread@ or AcceptorThread@; its DUL reactor thread
    runs the DUL's bound ``run_reactor`` (``Thread._target``), and the DUL knows its association. The
    receiver's server and request threads belong to pynetdicom's or socketserver's objects. Any other
    thread (the main thread, a study monitor, a Celery worker) is a caller of ``associate``: ours.
    """
    if thread.name.startswith("RequestorThread@"):
        return True
    if thread.name.startswith("AcceptorThread@"):
        return False
    target = getattr(thread, "_target", None)
    owner = getattr(target, "__self__", None)
    if owner is None:
        return True
    association = getattr(owner, "assoc", None)
    if association is not None:
        return bool(getattr(association, "is_requestor", False))
    return not type(owner).__module__.startswith(("pynetdicom", "socketserver"))


def _not_about_our_requests(record: logging.LogRecord) -> bool:
    """Log filter: pynetdicom's info, warning and error records about associations we request are dropped (the
    sender and doctor say the outcome in one line of their own); the receiver's records and debug ones (-vv)
    pass. A logger's filters run in the thread that logs, so the current thread is the record's."""
    return record.levelno < logging.INFO or not _requesting(threading.current_thread())


def quiet_requests() -> None:
    """Put the filter on every pynetdicom logger not yet filtered (call after importing pynetdicom)."""
    with _lock:
        for name in list(logging.root.manager.loggerDict):
            if (name == "pynetdicom" or name.startswith("pynetdicom.")) and name not in _filtered:
                logging.getLogger(name).addFilter(_not_about_our_requests)
                _filtered.add(name)
