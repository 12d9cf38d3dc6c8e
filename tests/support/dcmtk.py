"""dcmtk's echoscu, storescu and storescp as the real DICOM peers of the network tests, and free ports for them."""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .process import unavailable, wait_for

TOOLS = ("echoscu", "storescu", "storescp")
RECEIVER_AE = "PNEUMOSCAN"


def missing_tools() -> list[str]:
    """The dcmtk programs that are not installed (the Debian package dcmtk has them all)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def require_tools() -> None:
    """dcmtk's programs are installed; the test skips without them, or fails under CI."""
    if missing := missing_tools():
        unavailable(f"dcmtk is not installed ({', '.join(missing)} missing); `bash .ci/run` installs it")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Outcome:
    """What one or more runs of a dcmtk client said: the worst exit status and all output."""

    returncode: int
    output: str


def echoscu(port: int, calling: str, called: str = RECEIVER_AE) -> Outcome:
    """A C-ECHO from ``calling`` to ``called`` at 127.0.0.1:port."""
    done = subprocess.run(["echoscu", "-v", "-to", "10", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)
    return Outcome(done.returncode, done.stdout + done.stderr)


# storescu proposes uncompressed transfer syntaxes unless told otherwise: the option that makes it
# propose a compressed file's own transfer syntax, so that the file travels as it is.
_PROPOSE = {
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.5": "-xr",  # RLE lossless
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated
}


def storescu(port: int, files: list[Path], calling: str, *, called: str = RECEIVER_AE,
             options: tuple[str, ...] = ()) -> Outcome:
    """C-STORE ``files`` from ``calling``, each in its own transfer syntax: one association per syntax, in order.

    ``options`` go to every run (``-xi``, say, to send uncompressed files as implicit VR little endian).
    """
    import pydicom

    groups: dict[str, list[Path]] = {}
    for path in files:
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault("" if options else _PROPOSE.get(syntax, ""), []).append(path)
    returncode, output = 0, []
    for flag, paths in groups.items():
        args = ["storescu", "-v", "-to", "10", "-aet", calling, "-aec", called, *([flag] if flag else []), *options,
                "127.0.0.1", str(port), *map(str, paths)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        returncode = max(returncode, done.returncode)
        output.append(f"$ {' '.join(args)}\n{done.stdout}{done.stderr}")
    return Outcome(returncode, "\n".join(output))


class Storescp:
    """dcmtk's storescp as the results destination (a PACS): every object it receives, under its own file name."""

    def __init__(self, folder: Path, port: int, ae_title: str = "PACS") -> None:
        self.folder, self.port, self.ae_title = folder, port, ae_title
        self.log_path = folder.with_name(f"{folder.name}.log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def destination(self) -> str:
        """Its address as PNEUMOSCAN_RESULTS_DESTINATION spells it."""
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # +uf: a unique name per object received, so that an object received twice is two files.
            self._proc = subprocess.Popen(["storescp", "-v", "+uf", "-aet", self.ae_title, "-od", str(self.folder),
                                           str(self.port)], stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT)
        wait_for(lambda: self._proc is not None and (self._proc.poll() is not None
                                                     or echoscu(self.port, "PROBE", self.ae_title).returncode == 0),
                 20, interval=0.2, message=f"storescp on port {self.port}")
        assert self._proc.poll() is None, f"storescp exited with {self._proc.returncode}: {self.log()}"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def received(self) -> list[Path]:
        """The files of the objects received so far, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.iterdir() if p.is_file()), key=lambda p: (p.stat().st_mtime, p.name))

    def read(self, count: int, timeout: float, interval: float = 0.2) -> list[Any]:
        """Wait for ``count`` objects and read them all with pydicom (each file once fully written)."""
        import pydicom

        def ready() -> list[Any] | None:
            files = self.received()
            if len(files) < count:
                return None
            try:
                return [pydicom.dcmread(p) for p in files]
            except (OSError, pydicom.errors.InvalidDicomError, EOFError):  # still being written
                return None

        return wait_for(ready, timeout, interval=interval, message=f"{count} objects at the PACS:\n{self.log()}")


class CutProxy:
    """A TCP forwarder to 127.0.0.1:target that drops each connection after ``limit`` bytes from the client.

    The drop is abrupt (a reset, no DICOM release or abort): a network that fails, or a sender that
    dies, in the middle of an instance. Use as a context manager; ``port`` is where to connect.
    """

    def __init__(self, target: int, limit: int) -> None:
        self.target, self.limit = target, limit
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.cut = 0  # connections dropped so far
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> CutProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()

    def _forward(self, client: socket.socket, upstream: socket.socket) -> None:
        def back() -> None:
            with contextlib.suppress(OSError):
                while data := upstream.recv(65536):
                    client.sendall(data)

        threading.Thread(target=back, daemon=True).start()
        sent = 0
        with contextlib.suppress(OSError):
            while sent < self.limit and (data := client.recv(min(65536, self.limit - sent))):
                upstream.sendall(data)
                sent += len(data)
        if sent >= self.limit:
            self.cut += 1
        for sock in (client, upstream):  # SO_LINGER 0: close with a reset
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
