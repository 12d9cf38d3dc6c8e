"""The web app: `serve`."""

from __future__ import annotations

import socket

import click

from pneumoscan.cli._common import _database, _friendly, _settings, err


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; keep the default behind a TLS reverse proxy (see the README).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.pass_context
@_friendly
def serve(ctx: click.Context, host: str, port: int) -> None:
    """Serve the review web app and its API (/worklist, /dashboard, /api, /docs, /metrics)."""
    import uvicorn

    from pneumoscan.web.app import create_app

    settings = _settings(ctx)
    try:  # the one ValueError here is the user's to fix: an empty secret file left in the data folder
        settings.web_secret()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    app = create_app(settings, _database(settings))
    listening = _bound(host, port)  # before saying "serving on": a port in use is one line, not a uvicorn error
    err.print(f"serving on http://{host}:{port}/ (Ctrl+C to stop)", style="dim")
    config = uvicorn.Config(app, log_level="warning", proxy_headers=True, server_header=False)
    uvicorn.Server(config).run(sockets=[listening])


def _bound(host: str, port: int) -> socket.socket:
    """A socket bound to HOST:PORT and listening, or one line saying why it cannot be."""
    listening = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listening = socket.socket(family, kind, proto)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(2048)
    except OSError as exc:
        if listening is not None:
            listening.close()
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return listening

