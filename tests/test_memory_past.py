"""Scene memory and questions about the past, end to end: a daemon (stand-in model that answers from the pictures,
real mosquitto, real page server) watches a looping clip of known colour scenes, records each scene, and answers
"when was the scene blue?" from the store, the same through MQTT and the page's data channel, and again after a
restart."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fixtures.llm_stub import StubLLM, start_stub_llm
from tests.fixtures.mqtt import PahoPeer
from tests.fixtures.webrtc import CounterVideoTrack, publish
from tests.memory_scene import ColourWitness, colour_of_jpeg, write_colour_clip
from tests.waiting import wait_until
from visual_agent.config_loading import parse_config
from visual_agent.daemon import Daemon
from visual_agent.memory import EventQuery

pytestmark = [pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(180)]

TOKEN = "memory-past-token"


@pytest.fixture
async def witness_llm():
    witness = ColourWitness()
    stub = await start_stub_llm(StubLLM(model="colour-witness", reply_fn=witness))
    yield stub, witness
    await stub.close()


def config(tmp_path: Path, stub: Any, mosquitto: Any, prefix: str, clip: Path, llm: dict[str, Any] | None = None,
           **memory: Any) -> Any:
    return parse_config({
        "llm": {"provider": "openai", "base_url": stub.base_url, "api_key": "x", "model_name": stub.model, **(llm or {})},
        "webrtc": {"host": "127.0.0.1", "port": 0, "host_candidate_addresses": ["127.0.0.1"], "auth_token": TOKEN},
        "sources": [{"name": "clip", "kind": "file", "url": str(clip), "loop": True}],
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "prefix": prefix, "reconnect_min_s": 0.1},
        "storage": {"path": str(tmp_path / "state"),
                    "memory": {"enabled": True, "every_s": 1, "check_interval_s": 0.2, **memory}},
    }, environ={})


async def http_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json() if r.content_type == "application/json" else await r.read()


async def ask_mqtt(peer: PahoPeer, prefix: str, question: dict[str, Any]) -> dict[str, Any]:
    reply = f"{prefix}/reply/memory-test"
    await asyncio.to_thread(peer.subscribe, reply)
    peer.publish(f"{prefix}/ask", json.dumps(question), response_topic=reply, correlation_data=question["id"].encode())
    while True:
        msg = await asyncio.to_thread(peer.get, 30.0, reply)
        answer = json.loads(msg.payload)
        if answer["id"] == question["id"]:
            return answer


async def test_memory_scene_memory_and_a_past_question_over_mqtt_page_and_restart(
        tmp_path, witness_llm, running_mosquitto, topic_prefix):
    stub, witness = witness_llm
    clip = write_colour_clip(tmp_path / "scenes.mp4", [(2.0, "red"), (2.0, "green"), (2.0, "blue")])
    started = time.time()
    daemon = Daemon(config(tmp_path, stub, running_mosquitto, topic_prefix, clip))
    await daemon.start()
    peer = PahoPeer(running_mosquitto.host, running_mosquitto.port)
    try:
        store = daemon.memory.store
        assert store is not None

        def seen_colours() -> set[str]:
            return {e.text.rsplit(" ", 1)[-1] for e in store.query(EventQuery(kind="memory", limit=100))}

        await wait_until(lambda: seen_colours() >= {"red", "green", "blue"}, 60, "a memory of each colour scene")
        until = time.time()
        memories = await store.aquery(EventQuery(kind="memory", limit=100))
        for event in memories:  # each memory keeps the picture the model described
            jpeg = await http_json(f"{daemon.driver.url}/events/{event.id}.jpg")
            assert colour_of_jpeg(jpeg) == event.text.rsplit(" ", 1)[-1], event
        blue_ids = {e.id for e in memories if e.text.endswith("blue")}

        question = {"id": "past-1", "question": "When was the scene blue?", "since": started, "until": until}
        answer = await ask_mqtt(peer, topic_prefix, question)
        assert answer["error"] is None, answer
        cited = answer["events"]
        assert cited and all(started <= e["at"] <= until for e in cited) and {e["source"] for e in cited} == {"clip"}
        assert [e["at"] for e in cited] == sorted(e["at"] for e in cited)  # oldest first
        shown = witness.past_requests[-1]
        assert len(shown) == len(cited)  # every cited event's thumbnail reached the model, with its caption
        assert [colour for _, colour in shown].count("blue") == len([e for e in cited if e["id"] in blue_ids])
        assert answer["text"].startswith("blue at ") and len(answer["text"].split(", ")) == sum(
            1 for _, colour in shown if colour == "blue")

        # the same question on the page's data channel gets the same events
        async with publish(daemon.driver.url, CounterVideoTrack(160, 120, 15), source="page", token=TOKEN) as pub:
            await pub.wait_open()
            # a page question that names no source is about the page's own camera: this one names the clip
            pub.channel.send(json.dumps({**question, "id": "past-page", "source": "clip"}))
            while True:
                got = json.loads(await asyncio.wait_for(pub.messages.get(), 30))
                if got.get("id") == "past-page" and "text" in got:
                    break
        assert got["error"] is None and got["events"] == cited and got["text"] == answer["text"]

        # the same listing through GET /events and <prefix>/events/query
        listed = (await http_json(f"{daemon.driver.url}/events?kind=memory&q=blue&limit=100"))["events"]
        await asyncio.to_thread(peer.subscribe, f"{topic_prefix}/reply/q")
        peer.publish(f"{topic_prefix}/events/query", json.dumps({"kind": "memory", "q": "blue", "limit": 100}),
                     response_topic=f"{topic_prefix}/reply/q")
        over_mqtt = json.loads((await asyncio.to_thread(peer.get, 10.0, f"{topic_prefix}/reply/q")).payload)
        assert listed and [e["id"] for e in over_mqtt["events"]][:len(listed)] == [e["id"] for e in listed][
            :len(over_mqtt["events"])]
        assert all(e["text"].endswith("blue") for e in listed)
        assert daemon.memory.trigger is not None and daemon.memory.trigger.counters["described"] >= 3
    finally:
        await daemon.close()

    # a restart keeps the store: the same past question gets the same events
    daemon = Daemon(config(tmp_path, stub, running_mosquitto, topic_prefix, clip, enabled=False))
    await daemon.start()
    try:
        again = await ask_mqtt(peer, topic_prefix, {**question, "id": "past-2"})
        assert again["error"] is None and again["events"] == cited and again["text"] == answer["text"]
    finally:
        peer.close()
        await daemon.close()


async def test_memory_past_question_edges(tmp_path, witness_llm, running_mosquitto, topic_prefix):
    stub, witness = witness_llm
    clip = write_colour_clip(tmp_path / "scenes.mp4", [(1.0, "red")])
    daemon = Daemon(config(tmp_path, stub, running_mosquitto, topic_prefix, clip, enabled=False))
    await daemon.start()
    peer = PahoPeer(running_mosquitto.host, running_mosquitto.port)
    try:
        calls = len(stub.requests)
        empty = await ask_mqtt(peer, topic_prefix, {"id": "e1", "question": "anything?", "since": 1000, "until": 2000})
        assert empty["error"] is None and empty["events"] == [] and "Nothing was recorded" in empty["text"]
        assert len(stub.requests) == calls  # no model call for an empty window
        for bad in ({"since": -5}, {"until": "yesterday"}, {"since": 10, "until": 5}, {"since": True},
                    {"since": 10, "lookback_s": 5}):
            refused = await ask_mqtt(peer, topic_prefix, {"id": "b", "question": "when?", **bad})
            assert refused["error"]["type"] == "bad_payload", (bad, refused)
        # lookback_s beyond the frames kept (agent.lookback_s is 0 here): answered from the store
        far = await ask_mqtt(peer, topic_prefix, {"id": "l1", "question": "what happened?", "lookback_s": 3600})
        assert far["error"] is None and far["events"] == []
    finally:
        peer.close()
        await daemon.close()


async def test_memory_past_question_without_a_store(tmp_path, witness_llm, running_mosquitto, topic_prefix):
    stub, _ = witness_llm
    clip = write_colour_clip(tmp_path / "scenes.mp4", [(1.0, "red")])
    cfg = config(tmp_path, stub, running_mosquitto, topic_prefix, clip)
    cfg.storage.enabled = False
    daemon = Daemon(cfg)
    await daemon.start()
    peer = PahoPeer(running_mosquitto.host, running_mosquitto.port)
    try:
        refused = await ask_mqtt(peer, topic_prefix, {"id": "n1", "question": "when?", "since": 1000})
        assert refused["error"]["type"] == "bad_payload" and "storage.enabled" in refused["error"]["message"]
    finally:
        peer.close()
        await daemon.close()


async def test_memory_past_question_fits_the_context_by_showing_fewer_events(tmp_path, witness_llm, running_mosquitto,
                                                                             topic_prefix):
    """Eight long stored texts do not fit a 600-token model: the lower-ranked half is left out until they do, and
    the answer says how many (`trimmed.events`) and cites only the events shown."""
    stub, witness = witness_llm
    clip = write_colour_clip(tmp_path / "scenes.mp4", [(1.0, "red")])
    daemon = Daemon(config(tmp_path, stub, running_mosquitto, topic_prefix, clip, llm={"context_tokens": 600},
                           enabled=False))
    await daemon.start()
    peer = PahoPeer(running_mosquitto.host, running_mosquitto.port)
    try:
        store = daemon.memory.store
        assert store is not None
        from visual_agent.memory import Event

        for i in range(8):
            await store.write(Event(source="clip", kind="memory", at=1000.0 + i,
                                    text=f"number {i}: " + "a long and winding description of the scene " * 10))
        answer = await ask_mqtt(peer, topic_prefix, {"id": "fit", "question": "what happened?", "since": 900,
                                                     "until": 2000})
        assert answer["error"] is None, answer
        assert answer["trimmed"]["events"] >= 4 and len(answer["events"]) == 8 - answer["trimmed"]["events"]
        assert [e["at"] for e in answer["events"]] == sorted(e["at"] for e in answer["events"])
    finally:
        peer.close()
        await daemon.close()
