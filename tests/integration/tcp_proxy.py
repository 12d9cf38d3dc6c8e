"""A TCP forwarder, run as its own process: `python tcp_proxy.py LISTEN_PORT TARGET_PORT` (both on 127.0.0.1).

The integration tests kill it to make PostgreSQL "go away" for the workers (open connections drop,
new ones are refused) and start it again on the same port to bring it back.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def main(listen_port: int, target_port: int) -> None:
    """Accept connections on ``listen_port`` and forward each to ``target_port`` until killed."""
    server = socket.create_server(("127.0.0.1", listen_port))  # SO_REUSEADDR: a restart may rebind at once
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port), timeout=5)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
