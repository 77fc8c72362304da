"""The page's URL with its token (``/#token=...``): shown to a person, never written to a log or a journal.

`visual-agent run` prints it only when its stdout is a terminal (under systemd, stdout goes to the journal, where
every reader of the log would find the token); `visual-agent url` prints it on request, from the config.
"""

from __future__ import annotations

import sys
from typing import TextIO

from webrtc import addresses
from webrtc.config import WebRTCConfig

__all__ = ["page_url", "show_on_terminal"]


def page_url(web: WebRTCConfig, *, host: str | None = None, port: int | None = None) -> str:
    """The page's URL for `web` (``/#token=<token>`` when one is set): `host` as the browser will name this machine
    (default: the bound address; for a wildcard bind the certificate's name or a LAN address, as the running
    daemon prints it), `port` the bound one (default: the configured one)."""
    return addresses.page_url(web, web.port if port is None else port, host)


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
