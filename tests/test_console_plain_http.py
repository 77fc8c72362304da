"""A person who types http:// for the HTTPS page gets a redirect to https (the token in the fragment survives it)
or a one-line hint, not an empty reply; HTTPS on the same port works as before."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest

from tests.fixtures.pki import TestCA
from webrtc import WebRTCConfig, WebRTCServer

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(60)]

TOKEN = "plain-http-test-token-0123456789"


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_console_plain_http_on_the_tls_port_is_sent_to_https(tmp_path):
    ca = TestCA(tmp_path)
    cert, key = ca.issue("server", ["localhost", "127.0.0.1"])
    config = WebRTCConfig(port=0, auth_token=TOKEN, tls_certfile=str(cert), tls_keyfile=str(key))
    async with WebRTCServer(config) as server:
        port = server.port
        answer = await _raw(port, f"GET /app.js?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = answer.split(b"\r\n\r\n")[0].decode()
        assert head.startswith("HTTP/1.1 301") and f"Location: https://127.0.0.1:{port}/app.js?x=1" in head
        assert answer.endswith(b"open https:// instead of http://.\n")
        odd = await _raw(port, b"HELLO\r\n\r\n")
        assert odd.startswith(b"HTTP/1.1 400") and b"open https://" in odd
        context = ssl.create_default_context(cafile=str(ca.pem))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=context) as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            async with http.get(f"https://127.0.0.1:{port}/webrtc-config", ssl=context,
                                headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
