"""`POST /api/ask` against a real daemon (a looping file source, mosquitto, the STAND-IN model): a page with no camera
of its own asks any source and gets the answer JSON of `<prefix>/answer` (copied there too); the token guards it;
bad bodies get a clear 4xx in the answer's shape; a tab that floods gets `busy` while another tab is answered."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.console_daemon import QUESTION_REPLY, TOKEN, console_daemon
from tests.waiting import wait_until

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]


def _headers(tab: str | None = "tab-a", token: str | None = TOKEN) -> dict[str, str]:
    return {**({"Authorization": f"Bearer {token}"} if token else {}), **({"X-Console-Tab": tab} if tab else {})}


async def _ask(http: aiohttp.ClientSession, url: str, body: object, **headers: str | None) -> tuple[int, object]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(f"{url}/api/ask", data=data, headers=_headers(**headers)) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:  # the guard's refusals are plain text
            return r.status, text


async def test_console_ask_answers_a_configured_source_with_no_peer_connected(tmp_path, stub_llm, running_mosquitto,
                                                                              paho_peer, topic_prefix):
    listener = paho_peer("5")
    listener.subscribe(f"{topic_prefix}/answer")
    async with console_daemon(tmp_path, stub_llm, mosquitto=running_mosquitto, prefix=topic_prefix) as daemon, \
            aiohttp.ClientSession() as http:
        url = daemon.driver.url
        await daemon.driver.get_buffer("door").wait_for_frame(10)
        assert daemon.driver.peers() == []
        status, answer = await _ask(http, url, {"id": "q1", "question": "What do you see?", "source": "door",
                                               "conversation": "tab-a"})
        assert status == 200, answer
        assert answer["id"] == "q1" and answer["text"] == QUESTION_REPLY and answer["source"] == "door"
        assert answer["error"] is None and answer["model"] == stub_llm.model and answer["frames"]
        copied = json.loads((await asyncio.to_thread(listener.get, 10, f"{topic_prefix}/answer")).payload)
        assert copied == answer  # the same JSON MQTT listeners get
        metrics = daemon.metrics.exposition()[0].decode()
        assert 'visual_agent_questions_total{via="page"} 1.0' in metrics

        status, answer = await _ask(http, url, {"question": "And now?", "source": "nowhere"})
        assert status == 404 and answer["error"]["type"] == "unknown_source" and "nowhere" in answer["error"]["message"]


async def test_console_ask_refuses_without_the_token_and_bad_bodies_clearly(tmp_path, stub_llm):
    async with console_daemon(tmp_path, stub_llm) as daemon, aiohttp.ClientSession() as http:
        url = daemon.driver.url
        body = {"question": "What do you see?", "source": "door"}
        assert (await _ask(http, url, body, token=None))[0] == 401
        assert (await _ask(http, url, body, token="not-the-token"))[0] == 401

        status, answer = await _ask(http, url, b"What do you see?")  # text, not JSON (MQTT would take it)
        assert status == 400 and answer["error"]["type"] == "bad_payload" and "not JSON" in answer["error"]["message"]
        status, answer = await _ask(http, url, ["What do you see?"])
        assert status == 400 and "JSON object" in answer["error"]["message"]
        status, answer = await _ask(http, url, {"question": "Hi", "frames": "many"})
        assert status == 400 and answer["error"]["type"] == "bad_payload" and "frames" in answer["error"]["message"]
        limit = daemon.agent.max_payload_bytes
        status, answer = await _ask(http, url, {"question": "x" * limit})
        assert status == 413 and f"{limit}-byte limit" in answer["error"]["message"]
        status, answer = await _ask(http, url, body, tab="../../etc")
        assert status == 400 and "X-Console-Tab" in answer["error"]["message"]
        assert stub_llm.requests == []  # none of them reached the model

        status, answer = await _ask(http, url, {**body, "since": 0, "until": 1})  # the past: from the event store
        assert status == 200 and answer["error"] is None and answer["events"] == []


async def test_console_ask_gives_a_flooding_tab_busy_while_another_tab_is_answered(tmp_path, stub_llm):
    stub_llm.delay_s = 1.0
    agent = {"max_in_flight": 2, "max_queued_per_asker": 1, "max_queued": 4, "queue_wait_s": 20}
    async with console_daemon(tmp_path, stub_llm, extra={"agent": agent}) as daemon, aiohttp.ClientSession() as http:
        url = daemon.driver.url
        await daemon.driver.get_buffer("door").wait_for_frame(10)
        body = {"question": "What do you see?", "source": "door"}
        flood = [asyncio.create_task(_ask(http, url, {**body, "id": f"a{i}"}, tab="flooder")) for i in range(6)]
        await wait_until(lambda: daemon.agent.in_flight == 2, 10, "the flooding tab holding both slots")
        status, answer = await _ask(http, url, {**body, "id": "b"}, tab="other")
        assert status == 200 and answer["id"] == "b" and answer["text"] == QUESTION_REPLY
        flooded = await asyncio.gather(*flood)
    outcomes = sorted(status for status, _ in flooded)
    assert outcomes.count(429) >= 3 and outcomes.count(200) >= 2, flooded  # its share answered, the rest refused
    assert set(outcomes) == {200, 429}
    busy = [a for s, a in flooded if s == 429]
    assert all(a["error"]["type"] == "busy" for a in busy)
    assert sorted(a["id"] for _, a in flooded) == [f"a{i}" for i in range(6)]  # one answer per question


@pytest.mark.parametrize(("method", "path"), [("POST", "/api/ask"), ("PUT", "/api/rules/lamp")])
async def test_console_slow_body_gets_408_within_body_timeout(tmp_path, stub_llm, method, path):
    """A client that sends its headers and then trickles (or withholds) the body is cut off after
    `webrtc.body_timeout_s`, as `/offer` is: it cannot hold a handler, and its connection, for ever."""
    webrtc = {"host": "127.0.0.1", "port": 0, "host_candidate_addresses": ["127.0.0.1"], "auth_token": TOKEN,
              "body_timeout_s": 0.5}
    async with console_daemon(tmp_path, stub_llm, extra={"webrtc": webrtc}) as daemon:
        port = daemon.driver.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"question\"".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readline(), 10)  # a deadline for the test, not a speed
            assert head.startswith(b"HTTP/1.1 408"), head
        finally:
            writer.close()


async def test_console_ask_streams_ndjson_pieces_then_the_answer_when_asked(tmp_path, stub_llm):
    async with console_daemon(tmp_path, stub_llm) as daemon, aiohttp.ClientSession() as http:
        url = daemon.driver.url
        await daemon.driver.get_buffer("door").wait_for_frame(10)
        headers = {**_headers(), "Accept": "application/x-ndjson"}
        body = {"id": "s1", "question": "What do you see?", "source": "door"}
        async with http.post(f"{url}/api/ask", json=body, headers=headers) as r:
            assert r.status == 200 and r.content_type == "application/x-ndjson"
            lines = [json.loads(line) async for line in r.content if line.strip()]
        *pieces, answer = lines
        assert len(pieces) == len(QUESTION_REPLY.split(" ")) and [p["seq"] for p in pieces] == list(range(1, len(pieces) + 1))
        assert "".join(p["delta"] for p in pieces) == QUESTION_REPLY and {p["id"] for p in pieces} == {"s1"}
        assert answer["id"] == "s1" and answer["text"] == QUESTION_REPLY and answer["error"] is None
        async with http.post(f"{url}/api/ask", json={**body, "source": "nowhere"}, headers=headers) as r:
            assert r.status == 404 and r.content_type == "application/json"  # refused before any piece: plain JSON
            assert (await r.json())["error"]["type"] == "unknown_source"
