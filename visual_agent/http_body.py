"""`read_body`: a request body read whole, bounded in size and in time, for the routes the daemon adds to the page's
server (`WebRTCServer.add_route`: the console's API, the MCP endpoint).

The page server's deadline covers the request head only (`webrtc.header_timeout_s`); a handler that awaited its
body with no bound of its own could be held, with its connection, by a client that sends the head and then trickles
or withholds the body. These routes therefore keep the rules `/offer` keeps: at most their own byte limit (413) and
`webrtc.body_timeout_s` (408).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["BodyError", "read_body"]


class BodyError(Exception):
    """The body was refused: `status` 413 (over the limit) or 408 (not received in time); the message says which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: web.Request, *, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body; `BodyError` when it is over `max_bytes` (declared or sent) or slower than `timeout_s`."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyError(413, f"body of {request.content_length} bytes is over the {max_bytes}-byte limit")

    async def read_all() -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(max_bytes + 1 - size):  # read() may return less than asked
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise BodyError(413, f"body is over the {max_bytes}-byte limit")
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read_all(), timeout_s)
    except TimeoutError:
        raise BodyError(408, f"body not received within {timeout_s:g} s (webrtc.body_timeout_s)") from None
