"""`GET /events`, `GET /events/<id>.jpg` (on a real WebRTCServer behind its token) and `<prefix>/events/query` (on a
real mosquitto), as a client and as an attacker meets them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest

from tests.fixtures.mqtt import PahoPeer
from visual_agent.config import MqttConfig
from visual_agent.memory import Event, EventStore, StorageConfig
from visual_agent.memory.http import EventRoutes
from visual_agent.memory.mqtt_query import EventQueries
from visual_agent.mqtt import MqttMessager
from webrtc import WebRTCConfig, WebRTCServer

pytestmark = [pytest.mark.timeout(60)]

TOKEN = "events-token-for-tests"


@pytest.fixture
async def store(tmp_path: Path):
    store = EventStore(StorageConfig(path=str(tmp_path)))
    assert await store.start()
    for i, (source, text, rgb) in enumerate([("door", "a red parcel on the step", (220, 20, 20)),
                                             ("door", "the step is empty", (20, 220, 20)),
                                             ("yard", "a blue car in the yard", (20, 20, 220))]):
        await store.write(Event(source=source, kind="memory", text=text, at=1000.0 + i,
                                image=np.full((240, 320, 3), rgb, np.uint8)))
    yield store
    await store.aclose()


@pytest.fixture
async def events_server(store: EventStore):
    server = WebRTCServer(WebRTCConfig(host="127.0.0.1", port=0, host_candidate_addresses=["127.0.0.1"],
                                       auth_token=TOKEN))
    EventRoutes(store).register(server.add_route)
    await server.start()
    yield server
    await server.close()


async def _get(url: str, token: str | None = TOKEN) -> tuple[int, bytes, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        return r.status, await r.read(), r.content_type


async def test_memory_http_events_list_filter_and_thumbnail(events_server: WebRTCServer) -> None:
    base = events_server.url
    status, body, ctype = await _get(base + "/events")
    assert status == 200 and ctype == "application/json"
    events = json.loads(body)["events"]
    assert [e["text"] for e in events] == ["a blue car in the yard", "the step is empty", "a red parcel on the step"]
    first = events[-1]
    assert set(first) >= {"id", "at", "source", "kind", "text", "thumbnail"} and first["at"] == 1000.0
    status, body, _ = await _get(base + "/events?source=door&q=parcel&since=999&until=1000.5&kind=memory&limit=5")
    assert status == 200 and [e["id"] for e in json.loads(body)["events"]] == [first["id"]]
    status, jpeg, ctype = await _get(base + first["thumbnail"])
    assert status == 200 and ctype == "image/jpeg"
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture[..., 2].mean() > 150 and picture[..., 1].mean() < 80  # the red parcel's frame (BGR)


async def test_memory_http_events_need_the_token(events_server: WebRTCServer) -> None:
    base = events_server.url
    for path in ("/events", "/events/1.jpg", "/events?q=parcel"):
        assert (await _get(base + path, token=None))[0] == 401
        assert (await _get(base + path, token="wrong"))[0] == 401


async def test_memory_http_events_refuse_bad_parameters(events_server: WebRTCServer) -> None:
    base = events_server.url
    for query in ("limit=100000000", "limit=-1", "limit=abc", "since=nan", "since=1e400", "until=1&since=2",
                  "kind=secret", "limit=1&limit=2", "foo=bar", "source=" + "a" * 300, "q=" + "x" * 600):
        status, body, _ = await _get(f"{base}/events?{query}")
        assert status == 400 and json.loads(body)["error"], query
    # FTS5 syntax and SQL in q are only ever matched as words
    for q in ('%22', 'parcel%22%20OR%20%22car', 'NEAR(parcel%20car)', 'parcel*', "'%3B%20DROP%20TABLE%20events%3B--",
              'text%3Aparcel', '%28%28%28'):
        status, body, _ = await _get(f"{base}/events?q={q}")
        assert status == 200, (q, body)
    status, body, _ = await _get(f"{base}/events?q=%ff%fe")  # not UTF-8: read as replacement characters, no words
    assert status in (200, 400)
    status, body, _ = await _get(f"{base}/events")
    assert len(json.loads(body)["events"]) == 3  # nothing was dropped


async def test_memory_http_thumbnail_path_traversal_and_unknown_ids(events_server: WebRTCServer) -> None:
    base = events_server.url
    for path in ("/events/../../etc/passwd.jpg", "/events/..%2f..%2fetc%2fpasswd.jpg", "/events/1.jpg/../x",
                 "/events/-1.jpg", "/events/1e3.jpg", "/events/%2e%2e.jpg", "/events/9999999999999999999999.jpg",
                 "/events/abc.jpg"):
        status, body, ctype = await _get(base + path)
        assert status in (400, 404) and ctype != "image/jpeg", path
    assert (await _get(base + "/events/123456.jpg"))[0] == 404
    assert (await _get(base + "/events/1.jpg?n=99"))[0] == 400
    assert (await _get(base + "/events/1.jpg?n=x"))[0] == 400


async def test_memory_http_unavailable_store_is_a_503(tmp_path: Path) -> None:
    (tmp_path / "events.db").write_bytes(b"garbage" * 1000)
    store = EventStore(StorageConfig(path=str(tmp_path)))
    assert not await store.start()
    server = WebRTCServer(WebRTCConfig(host="127.0.0.1", port=0, host_candidate_addresses=["127.0.0.1"]))
    EventRoutes(store).register(server.add_route)
    await server.start()
    try:
        status, body, _ = await _get(server.url + "/events", token=None)
        assert status == 503 and "not a database" in json.loads(body)["error"]
    finally:
        await server.close()


@pytest.fixture
async def events_mqtt(store: EventStore, running_mosquitto, topic_prefix: str):
    cfg = MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port, prefix=topic_prefix,
                     reconnect_min_s=0.1)
    messager = MqttMessager(cfg, persistent_session=False, name="mqtt-events")
    await messager.start()
    queries = EventQueries(store, messager, topic_prefix)
    await queries.start()
    peer = PahoPeer(running_mosquitto.host, running_mosquitto.port)
    yield queries, peer, topic_prefix
    peer.close()
    await queries.close()
    await messager.close(publish_offline=False)


async def _ask(peer: PahoPeer, prefix: str, payload: bytes | str, reply: str | None = None,
               correlation: bytes | None = None, listen: str | None = None) -> tuple[dict, object]:
    listen = listen or reply or f"{prefix}/events/result"
    await asyncio.to_thread(peer.subscribe, listen)
    peer.publish(f"{prefix}/events/query", payload, response_topic=reply, correlation_data=correlation)
    msg = await asyncio.to_thread(peer.get, 10.0, listen)
    return json.loads(msg.payload), msg


async def test_memory_mqtt_events_query_request_response(events_mqtt) -> None:
    queries, peer, prefix = events_mqtt
    reply = f"{prefix}/reply/me"
    answer, msg = await _ask(peer, prefix, json.dumps({"id": "q1", "q": "parcel", "source": "door"}), reply, b"c-1")
    assert answer["error"] is None and answer["id"] == "q1"
    assert [e["text"] for e in answer["events"]] == ["a red parcel on the step"]
    assert set(answer["events"][0]) >= {"id", "at", "source", "kind", "text", "thumbnail"}
    assert msg.properties.CorrelationData == b"c-1"
    answer, _ = await _ask(peer, prefix, json.dumps({"since": 1001, "limit": 1}), reply)
    assert [e["text"] for e in answer["events"]] == ["a blue car in the yard"]


async def test_memory_mqtt_events_query_bad_requests_get_one_clear_answer(events_mqtt) -> None:
    queries, peer, prefix = events_mqtt
    reply = f"{prefix}/reply/me"
    for payload in (b"\xff\xfe not utf-8", b"[1, 2]", b"{not json", json.dumps({"limit": 10**9}).encode(),
                    json.dumps({"limit": "5"}).encode(), json.dumps({"id": {"x": 1}}).encode(),
                    json.dumps({"since": "yesterday"}).encode(), json.dumps({"q": "x" * 600}).encode(),
                    b"{" + b" " * 5000 + b"}", json.dumps({"drop": "table"}).encode()):
        answer, _ = await _ask(peer, prefix, payload, reply)
        assert answer["events"] == [] and answer["error"]["type"] == "bad_payload" and answer["error"]["message"]
    answer, _ = await _ask(peer, prefix, json.dumps({"q": 'parcel" OR "car NEAR('}), reply)
    assert answer["error"] is None
    # a response topic outside mqtt.response_topic_prefixes: refused, the error goes to <prefix>/events/result
    answer, _ = await _ask(peer, prefix, json.dumps({"id": 7}), f"{prefix}/status", listen=f"{prefix}/events/result")
    assert answer["error"]["type"] == "forbidden_response_topic" and answer["events"] == []
    assert queries.refused == 11 and queries.answered == 1
