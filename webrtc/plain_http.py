"""`TlsOrHint`: the TLS port's first bytes decide. A TLS handshake goes on to TLS as before; a plain ``http://``
request (a person who typed http://) gets a redirect to the same URL over https (the fragment, and so the page's
token, survives a redirect), or a one-line hint when its request line cannot be read, instead of an empty reply.

asyncio has no way to hand bytes already read to `start_tls`, so the TLS layer is stdlib's own `SSLProtocol`,
made here and fed the first chunk: the same object `loop.create_server(ssl=...)` makes for each connection.
"""

from __future__ import annotations

import asyncio
import math
import re
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

__all__ = ["TlsOrHint"]

_TLS_HANDSHAKE = 0x16
"""The first byte of a TLS record carrying a handshake (a ClientHello)."""
_REQUEST = re.compile(rb"^(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (/[\x21-\x7e]{0,2000}) HTTP/1\.[01]\r\n")
_HOST = re.compile(rb"\r\nhost: *([A-Za-z0-9.:\[\]-]{1,255})\r\n", re.IGNORECASE)
_HINT = b"This port speaks HTTPS: open https:// instead of http://.\n"


class TlsOrHint(asyncio.Protocol):
    """One connection on the TLS port before its first bytes: TLS (`make_inner()` then serves it) or a hint."""

    def __init__(self, make_inner: Callable[[], asyncio.BaseProtocol], ssl_context: Any, *,
                 handshake_timeout_s: float) -> None:
        self.make_inner = make_inner
        self.ssl_context = ssl_context
        self.handshake_timeout_s = handshake_timeout_s
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.plain_requests = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(self.handshake_timeout_s, transport.close)  # silent peers

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if data[0] == _TLS_HANDSHAKE:
            loop = asyncio.get_running_loop()
            handshake: asyncio.Future[Any] = loop.create_future()  # a failed handshake's error lands here: read it
            handshake.add_done_callback(lambda f: f.cancelled() or f.exception())
            tls = sslproto.SSLProtocol(loop, self.make_inner(), self.ssl_context, handshake, server_side=True,
                                       ssl_handshake_timeout=math.ceil(self.handshake_timeout_s))
            self.transport.set_protocol(tls)
            tls.connection_made(self.transport)
            buffer = tls.get_buffer(len(data))
            n = min(len(buffer), len(data))
            buffer[:n] = data[:n]
            tls.buffer_updated(n)
            if n < len(data):  # more than one read buffer in the first chunk (not seen: a ClientHello is small)
                self.transport.close()
            return
        self.transport.write(_answer(data))
        self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _answer(head: bytes) -> bytes:
    request, host = _REQUEST.match(head), _HOST.search(head)
    if request is not None and host is not None:
        location = b"https://" + host.group(1) + request.group(1)
        return (b"HTTP/1.1 301 Moved Permanently\r\nLocation: " + location + b"\r\nContent-Type: text/plain\r\n"
                b"Content-Length: " + str(len(_HINT)).encode() + b"\r\nConnection: close\r\n\r\n" + _HINT)
    return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: " + str(len(_HINT)).encode()
            + b"\r\nConnection: close\r\n\r\n" + _HINT)
