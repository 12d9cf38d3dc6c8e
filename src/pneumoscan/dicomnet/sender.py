"""Sending back to PACS: the C-STORE SCU that hands our derived objects (report, heatmap) to the results destination."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from pneumoscan.config import Settings

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
        """C-STORE ``objects`` in one association; ``SendError`` unless the peer answers success for each."""
        from pynetdicom import AE

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
                if code != 0x0000:
                    raise SendError(f"{self.peer} answered C-STORE status 0x{code:04X}")
        finally:
            assoc.release()
