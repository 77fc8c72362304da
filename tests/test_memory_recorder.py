"""What the daemon records through the agent's event seam: an answer with its question and the frame the model saw,
and a rule turning on with its evidence and look-back strip (stand-in model answering from the brightness of a clip
whose scene changes at known times, real mosquitto)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.fixtures.llm_stub import StubLLM, start_stub_llm
from tests.fixtures.mqtt import PahoPeer
from tests.rules_scene import BRIGHT, DARK, BrightnessJudge, decode_gray, write_scene_clip
from tests.waiting import wait_until
from visual_agent.config_loading import parse_config
from visual_agent.daemon import Daemon
from visual_agent.memory import EventQuery

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]


async def test_memory_records_answers_and_rule_events_with_evidence(tmp_path, running_mosquitto, topic_prefix):
    judge = BrightnessJudge()
    stub = await start_stub_llm(StubLLM(model="judge", reply_fn=judge))
    clip = write_scene_clip(tmp_path / "door.mp4", [(2.0, DARK), (4.0, BRIGHT)])
    cfg = parse_config({
        "llm": {"provider": "openai", "base_url": stub.base_url, "api_key": "x", "model_name": stub.model},
        "webrtc": {"host": "127.0.0.1", "port": 0, "host_candidate_addresses": ["127.0.0.1"]},
        "sources": [{"name": "door", "kind": "file", "url": str(clip), "loop": True}],
        "mqtt": {"host": running_mosquitto.host, "port": running_mosquitto.port, "prefix": topic_prefix},
        "rules": [{"name": "lamp", "source": "door", "question": "Is the light on?", "check_every_s": 0.5,
                   "on_after": 1, "off_after": 1, "cooldown_s": 0, "lookback_s": 2}],
        "storage": {"path": str(tmp_path / "state")},
    }, environ={})
    daemon = Daemon(cfg)
    await daemon.start()
    peer = PahoPeer(running_mosquitto.host, running_mosquitto.port)
    try:
        store = daemon.memory.store
        assert store is not None
        await wait_until(lambda: store.query(EventQuery(kind="rule", q="on")), 60, "a rule event turning on")
        (on,) = [e for e in store.query(EventQuery(kind="rule", limit=50)) if e.state == "on"][:1]
        assert on.rule == "lamp" and on.question == "Is the light on?" and on.source == "door"
        assert on.text.startswith("rule lamp turned on (yes)") and "brightness" in on.text
        evidence = decode_gray(store.thumbnail(on.id))
        assert evidence[evidence.shape[0] // 4:].mean() > 128  # the bright frame that turned it on
        assert on.strip == 1 and store.thumbnail(on.id, 1) is not None  # the look-back strip beside it

        await asyncio.to_thread(peer.subscribe, f"{topic_prefix}/reply/r")
        peer.publish(f"{topic_prefix}/ask", json.dumps({"id": "a1", "question": "Is anyone there?", "source": "door"}),
                     response_topic=f"{topic_prefix}/reply/r")
        answer = json.loads((await asyncio.to_thread(peer.get, 20.0, f"{topic_prefix}/reply/r")).payload)
        assert answer["error"] is None
        await wait_until(lambda: store.query(EventQuery(kind="answer")), 10, "the answer recorded")
        (recorded,) = store.query(EventQuery(kind="answer"))
        assert recorded.question == "Is anyone there?" and recorded.text == answer["text"]
        assert recorded.model == "judge" and len(recorded.frame_times) == 1 and store.thumbnail(recorded.id)
        assert abs(recorded.frame_times[0] - recorded.at) < 10
    finally:
        peer.close()
        await daemon.close()
        await stub.close()
