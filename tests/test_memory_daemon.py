"""The event store inside a running daemon (stand-in LLM, real mosquitto, real page server): /healthz, `GET /events`
behind the token, `<prefix>/events/query` on the daemon's own connection, and a corrupt store that costs the memory,
never the daemon."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fixtures.mqtt import PahoPeer
from visual_agent.config_loading import parse_config
from visual_agent.daemon import Daemon

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]

TOKEN = "daemon-events-token"


def daemon_config(tmp_path: Path, stub_llm: Any, mosquitto: Any, prefix: str, **storage: Any) -> Any:
    return parse_config({
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "api_key": "x", "model_name": stub_llm.model},
        "webrtc": {"host": "127.0.0.1", "port": 0, "host_candidate_addresses": ["127.0.0.1"], "auth_token": TOKEN},
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "prefix": prefix, "reconnect_min_s": 0.1},
        "storage": {"path": str(tmp_path / "state"), **storage},
    }, environ={})


async def http_get(url: str, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        body = await r.read()
        return r.status, (json.loads(body) if r.content_type == "application/json" else body)


async def test_memory_daemon_serves_events_and_reports_the_store(tmp_path, stub_llm, running_mosquitto, topic_prefix):
    daemon = Daemon(daemon_config(tmp_path, stub_llm, running_mosquitto, topic_prefix))
    await daemon.start()
    peer = PahoPeer(running_mosquitto.host, running_mosquitto.port)
    try:
        assert daemon.memory.store is not None
        await daemon.memory.store.write(_event("door", "a parcel by the door"))
        status, health = await http_get(daemon.driver.url + "/healthz")
        assert status == 200 and health["storage"]["state"] == "ok"
        assert health["storage"]["path"] == str(tmp_path / "state" / "events.db")
        assert (await http_get(daemon.driver.url + "/events", token=None))[0] == 401
        status, body = await http_get(daemon.driver.url + "/events?q=parcel")
        assert status == 200 and [e["text"] for e in body["events"]] == ["a parcel by the door"]
        reply = f"{topic_prefix}/reply/peer"
        await asyncio.to_thread(peer.subscribe, reply)
        peer.publish(f"{topic_prefix}/events/query", json.dumps({"q": "parcel"}), response_topic=reply,
                     correlation_data=b"1")
        answer = json.loads((await asyncio.to_thread(peer.get, 10.0, reply)).payload)
        assert answer["error"] is None and answer["events"][0]["id"] == body["events"][0]["id"]
    finally:
        peer.close()
        await daemon.close()


async def test_memory_daemon_runs_on_with_a_corrupt_store(tmp_path, stub_llm, running_mosquitto, topic_prefix):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "events.db").write_bytes(b"\x00garbage, not SQLite" * 512)
    daemon = Daemon(daemon_config(tmp_path, stub_llm, running_mosquitto, topic_prefix))
    await daemon.start()  # no exception: the daemon works without its memory
    try:
        status, health = await http_get(daemon.driver.url + "/healthz")
        assert status == 200 and health["storage"]["state"] == "unavailable"
        assert "not a database" in health["storage"]["error"]
        status, body = await http_get(daemon.driver.url + "/events")
        assert status == 503 and "not a database" in body["error"]
    finally:
        await daemon.close()


async def test_memory_daemon_storage_disabled(tmp_path, stub_llm, running_mosquitto, topic_prefix):
    daemon = Daemon(daemon_config(tmp_path, stub_llm, running_mosquitto, topic_prefix, enabled=False))
    await daemon.start()
    try:
        status, health = await http_get(daemon.driver.url + "/healthz")
        assert health["storage"] == {"state": "disabled"}
        assert (await http_get(daemon.driver.url + "/events"))[0] == 404
        assert not (tmp_path / "state").exists()
    finally:
        await daemon.close()


def _event(source: str, text: str) -> Any:
    from visual_agent.memory import Event

    return Event(source=source, kind="answer", text=text)


async def test_memory_daemon_embedded_broker_lets_clients_query_events(tmp_path, stub_llm):
    """The embedded broker lets other clients publish on `<prefix>/events/query` (only the daemon publishes the
    answer, on `<prefix>/events/result` for an MQTT 3.1.1 asker)."""
    config = parse_config({
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "api_key": "x", "model_name": stub_llm.model},
        "webrtc": {"host": "127.0.0.1", "port": 0, "host_candidate_addresses": ["127.0.0.1"]},
        "mqtt": {"embedded_port": 0, "prefix": "mem"}, "storage": {"path": str(tmp_path)},
    }, environ={})
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert daemon.memory.store is not None and daemon.broker is not None
        await daemon.memory.store.write(_event("door", "a parcel by the door"))
        peer = await asyncio.to_thread(PahoPeer, "127.0.0.1", daemon.broker.port, protocol="3.1.1")
        try:
            await asyncio.to_thread(peer.subscribe, "mem/events/result")
            peer.publish("mem/events/query", json.dumps({"id": "x", "q": "parcel"}))
            answer = json.loads((await asyncio.to_thread(peer.get, 10.0, "mem/events/result")).payload)
        finally:
            peer.close()
        assert answer["id"] == "x" and [e["text"] for e in answer["events"]] == ["a parcel by the door"]
    finally:
        await daemon.close()
