"""Sending back to PACS: the C-STORE SCU that hands our derived objects (report, heatmap) to the results destination."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from pneumoscan.config import Settings

log = logging.getLogger(__name__)

TIMEOUT = 15.0  # seconds for the association, each DIMSE message and the network, each


class SendError(Exception):
    """The object could not be built or the peer did not accept it; the reason is for the log and the database."""


class StoreSCU:
    """C-STORE of a study's objects to one peer (AE title, host, port), all in one association."""

    def __init__(self, ae_title: str, called: str, host: str, port: int, *, timeout: float = TIMEOUT) -> None:
        self.ae_title, self.called, self.host, self.port, self.timeout = ae_title, called, host, port, timeout

    @classmethod
    def for_results(cls, settings: Settings) -> StoreSCU | None:
        """The sender to PNEUMOSCAN_RESULTS_DESTINATION, as PNEUMOSCAN_DICOM_AE_TITLE; None when none is set."""
        if settings.destination is None:
            return None
        called, host, port = settings.destination
        return cls(settings.dicom_ae_title, called, host, port)

    @property
    def peer(self) -> str:
        return f"{self.called}@{self.host}:{self.port}"

    def send(self, objects: Sequence[Dataset]) -> None:
        """C-STORE ``objects`` in one association; ``SendError`` unless the peer stored each.

        Replies are read by category (``pynetdicom.status.code_to_category``): success and warning (0xB000,
        0xB006, 0xB007: stored, perhaps coerced) mean stored; anything else is a refusal, with the peer's reason.
        """
        from pynetdicom import AE
        from pynetdicom.status import code_to_category

        from pneumoscan.dicomnet.netlog import quiet_requests

        quiet_requests()  # the study round says the outcome in one line; pynetdicom's own lines would repeat it
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for item in objects:
            ae.add_requested_context(item.SOPClassUID, item.file_meta.TransferSyntaxUID)
        assoc = ae.associate(self.host, self.port, ae_title=self.called)
        if not assoc.is_established:
            raise SendError(f"{self.peer} refused or did not answer the association")
        try:
            for item in objects:
                status = assoc.send_c_store(item)
                code = getattr(status, "Status", None)
                if code is None:
                    raise SendError(f"{self.peer} gave no C-STORE response")
                category = code_to_category(code)
                comment = str(status.get("ErrorComment", "") or "").strip()
                if category == "Warning":
                    log.warning("%s stored %s with a warning: status 0x%04X%s", self.peer, item.SOPInstanceUID, code,
                                f" ({comment})" if comment else "")
                elif category != "Success":
                    raise SendError(f"{self.peer} answered C-STORE {category.lower()} 0x{code:04X}"
                                    + (f": {comment}" if comment else ""))
        finally:
            assoc.release()
