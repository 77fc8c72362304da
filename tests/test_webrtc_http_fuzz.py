"""Every header and JSON field the ingest server reads, fuzzed over real HTTP against a real `WebRTCServer` (with a
token, metrics and a live publisher holding a source, so the deeper checks are reached): /offer, /whip, WHIP DELETE,
/healthz, /metrics, /webrtc-config.

Bounded and derandomized (hypothesis, the same examples every run). What must hold: every answer is a 2xx-4xx (or
503), nothing the client sent writes a traceback or an ERROR into the log, each log line is one line, and nothing
is left behind (peers, pending sessions) once the examples are done.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.http import raw_request
from tests.fixtures.webrtc import CounterVideoTrack, offer_sdp, publish
from tests.waiting import wait_until
from webrtc import WebRTCConfig

pytestmark = [pytest.mark.webrtc, pytest.mark.timeout(180)]

TOKEN = "fuzz-token-0123456789"
BOUNDED = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
ROUTES = [("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/webrtc-config"), ("POST", "/offer"), ("POST", "/whip"),
          ("DELETE", "/whip/{resource}")]

header_bytes = st.binary(max_size=48).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
"""Any bytes a header value can hold without ending the line (non-UTF-8, NUL and other controls included)."""
odd_text = st.one_of(st.text(max_size=24), st.sampled_from(["\ud800", "a\udfff", "\udc80x", "cam\x00", "é" * 40,
                                                            "cam", "offer", "", " "]))
"""JSON strings, lone surrogates among them (json.dumps escapes them; json.loads gives them back)."""
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), odd_text),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(odd_text, inner, max_size=3)), max_leaves=6)


def _maybe(strategy, valid):
    return st.one_of(st.just(valid), st.none(), strategy)


def _header(name: bytes, value: bytes | None) -> list[tuple[bytes, bytes]]:
    return [] if value is None else [(name, value)]


@st.composite
def requests(draw):
    method, path = draw(st.sampled_from(ROUTES))
    auth = draw(_maybe(st.one_of(header_bytes, header_bytes.map(lambda b: b"Bearer " + b)), b"Bearer " + TOKEN.encode()))
    headers = _header(b"Authorization", auth)
    headers += _header(b"Host", draw(st.one_of(st.none(), st.none(), header_bytes)))
    headers += _header(b"Origin", draw(st.one_of(st.none(), st.none(), header_bytes)))
    body = b""
    if path == "/offer":
        fields = draw(st.dictionaries(st.sampled_from(["sdp", "type", "source", "replaces", "x"]), json_values, max_size=4))
        fields = {"type": "offer", "sdp": "{sdp}", **fields} if draw(st.booleans()) else fields
        body = json.dumps(fields).encode()
        headers += _header(b"Content-Type", draw(_maybe(header_bytes, b"application/json")))
    elif path == "/whip":
        query = draw(st.one_of(st.none(), st.binary(max_size=24)))
        path += f"?source={quote_from_bytes(query)}" if query is not None else ""
        body = draw(st.one_of(st.just(b"{sdp}"), st.binary(max_size=200)))
        headers += _header(b"Content-Type", draw(_maybe(header_bytes, b"application/sdp")))
    elif path.startswith("/whip/"):
        path = path.format(resource=quote_from_bytes(draw(st.binary(min_size=1, max_size=40))))
    return method, path, headers, body


async def test_fuzz_http_headers_and_json_fields_never_500_nor_traceback(webrtc_server_factory, caplog):
    caplog.set_level(logging.INFO)
    server = await webrtc_server_factory(WebRTCConfig(
        host="127.0.0.1", port=0, host_candidate_addresses=["127.0.0.1"], auth_token=TOKEN, body_timeout_s=2))
    server.metrics_exposition = lambda: (b"# fuzz\n", "text/plain; version=0.0.4")
    sdp = await offer_sdp()
    examples: list = []

    @settings(BOUNDED, max_examples=160)
    @given(requests())
    def collect(request):
        examples.append(request)

    collect()
    statuses = []
    async with publish(server.url, CounterVideoTrack(160, 120), source="cam", token=TOKEN):
        await server.get_buffer("cam").wait_for_frame(10)
        for method, path, headers, body in examples:
            body = body.replace(b"{sdp}", json.dumps(sdp)[1:-1].encode() if path == "/offer" else sdp.encode())
            r = await raw_request(server.port, method, path, headers, body)
            statuses.append(r.status)
            assert 200 <= r.status < 500 or r.status == 503, (method, path, headers, body[:80], r)
            if r.status in (200, 201) and method == "POST":  # a session the server took: end it again
                peer_id = r.headers.get("x-peer-id") or json.loads(r.body).get("peer_id")
                await server.close_peer(peer_id)
        assert [p.source for p in server.peers()] == ["cam"]  # the rightful publisher was never displaced
    assert {400, 401, 421} <= set(statuses)
    await wait_until(lambda: server.peers() == [] and server.registry.pending == 0, timeout=10, what="no session left")
    # aiortc's own connect task of an answered-then-closed peer may log its cancellation; ours log nothing of the kind
    bad = [r.getMessage() for r in caplog.records
           if (r.exc_info or r.levelno >= logging.ERROR) and "RTCPeerConnection.__connect" not in r.getMessage()]
    assert bad == [], bad[:3]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("webrtc", "aiohttp"))]
    assert all("\n" not in line for line in ours), [line for line in ours if "\n" in line][:3]
