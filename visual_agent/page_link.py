"""The page's URL with its token (``/#token=...``): shown to a person, never written to a log or a journal.

`visual-agent run` prints it only when its stdout is a terminal (under systemd, stdout goes to the journal, where
every reader of the log would find the token); `visual-agent url` prints it on request, from the config.
"""

from __future__ import annotations

import sys
from typing import TextIO

from webrtc.addresses import reachable_hosts
from webrtc.config import WebRTCConfig

__all__ = ["page_url", "show_on_terminal"]


def page_url(web: WebRTCConfig, *, host: str | None = None, port: int | None = None) -> str:
    """The page's URL for `web` (``/#token=<token>`` when one is set): `host` as the browser will name this machine
    (default: the bound address; for a wildcard bind the certificate's name or a LAN address, as
    `WebRTCServer.page_url`), `port` the bound one (default: the configured one)."""
    name = host or reachable_hosts(web.host, _certificate_names(web))[0]
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"
    base = f"{'https' if web.tls else 'http'}://{name}:{web.port if port is None else port}/"
    return f"{base}#token={web.auth_token}" if web.auth_token else base


def _certificate_names(web: WebRTCConfig) -> list[str]:
    """The HTTPS certificate's names (none when it cannot be read: the URL then names an address)."""
    from webrtc.tls import certificate_names

    return certificate_names(web.tls_certfile) if web.tls_certfile else []


def show_on_terminal(line: str, stream: TextIO | None = None) -> bool:
    """Print `line` only when `stream` (default stdout) is a terminal; True when printed."""
    stream = sys.stdout if stream is None else stream
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one
        return False
    if interactive:
        print(line, file=stream, flush=True)
    return interactive
