"""`asgi_handler`: an ASGI application served as one aiohttp route, so the MCP SDK's streamable HTTP endpoint runs on
the daemon's own port, behind the same guard (token, Host and Origin checks, TLS, request-head deadline) as the page.

Only what the MCP endpoint needs: the request body is read first (bounded in size and time), then handed over in one
`http.request` message; the response is streamed as the application sends it; `http.disconnect` follows once the
application is done, or as soon as the client has gone away (a write to it failed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web

from ..http_body import BodyError, read_body

__all__ = ["AsgiApp", "asgi_handler"]

Message = MutableMapping[str, Any]
AsgiApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]


def _scope(request: web.Request) -> dict[str, Any]:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method, "scheme": request.scheme, "path": request.path,
        "raw_path": request.raw_path.split("?", 1)[0].encode("latin-1"),
        "query_string": request.query_string.encode("latin-1"), "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.raw_headers],
        "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
        "server": tuple(sock[:2]) if isinstance(sock, tuple) else None,
        "state": {},
    }


def asgi_handler(app: AsgiApp, *, max_body_bytes: int, body_timeout_s: float) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler that serves `app`; bodies over `max_body_bytes` get 413, slower than `body_timeout_s` 408."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            body = await read_body(request, max_bytes=max_body_bytes, timeout_s=body_timeout_s)
        except BodyError as exc:
            return web.Response(status=exc.status, text=f"request {exc}\n")
        finished = asyncio.Event()
        delivered = False
        response: web.StreamResponse | None = None

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal response
            if message["type"] == "http.response.start":
                response = web.StreamResponse(status=int(message["status"]))
                for name, value in message.get("headers", ()):
                    response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
                await response.prepare(request)
            elif message["type"] == "http.response.body" and response is not None:
                try:
                    await response.write(bytes(message.get("body", b"")))
                    if not message.get("more_body", False):
                        await response.write_eof()
                except ConnectionError:  # the client went away: nothing more to send it
                    finished.set()

        try:
            await app(_scope(request), receive, send)
        finally:
            finished.set()
        if response is None:  # the application sent nothing: its failure, said as one
            return web.Response(status=500, text="the MCP endpoint gave no answer\n")
        return response

    return handle
