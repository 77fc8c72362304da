"""Home Assistant `event` entities against a real mosquitto: a source's descriptions and a rule's state changes are
announced through MQTT discovery (Home Assistant's MQTT event platform) and published as `{"event_type", ...}`
events, never retained; a removed rule's event entity is cleared."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.rules_scene import BRIGHT, BrightnessJudge, write_scene_clip
from visual_agent.config import HomeAssistantConfig, MqttConfig
from visual_agent.config_loading import parse_config
from visual_agent.daemon import Daemon
from visual_agent.errors import ErrorType, QuestionError
from visual_agent.homeassistant import HomeAssistantDiscovery
from visual_agent.messages import Answer, Question
from visual_agent.mqtt import MqttMessager
from visual_agent.rules import RuleConfig, RuleDiscovery

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]


async def test_homeassistant_description_events(running_mosquitto, paho_peer, topic_prefix):
    disc_prefix = f"{topic_prefix}/ha"
    events = paho_peer("5")
    events.subscribe(f"{topic_prefix}/+/description/ha")
    cfg = MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port)
    async with MqttMessager(cfg, status_topic=f"{topic_prefix}/status") as m:
        ha = HomeAssistantDiscovery(m, topic_prefix, HomeAssistantConfig(enabled=True, discovery_prefix=disc_prefix,
                                                                         node_id="va"))
        failed = Answer.failed(Question("Describe", source="porch"), QuestionError(ErrorType.NO_FRAME, "no frame"))
        await ha.publish_description(failed, "scene")  # an error is no event
        await ha.publish_description(Answer(id="d1", question="Describe", text="a cat on the step", source="porch",
                                            model="m"), "scene")
        await ha.publish_description(Answer(id="d2", question="Describe", text="an empty step", source="porch"),
                                     "something-new")
        first = await asyncio.to_thread(events.get, 10, f"{topic_prefix}/porch/description/ha")
        second = await asyncio.to_thread(events.get, 10, f"{topic_prefix}/porch/description/ha")
        late = paho_peer("5")
        late.subscribe(f"{disc_prefix}/event/#")
        config_msg = await asyncio.to_thread(late.get, 10, f"{disc_prefix}/event/va/porch_descriptions/config")
    assert not first.retain and json.loads(first.payload) == {
        "event_type": "scene", "text": "a cat on the step", "source": "porch", "id": "d1", "question": "Describe",
        "model": "m"}
    assert json.loads(second.payload)["event_type"] == "description"  # an unknown trigger keeps a declared type
    conf = json.loads(config_msg.payload)
    assert config_msg.retain and conf["state_topic"] == f"{topic_prefix}/porch/description/ha"
    assert conf["event_types"] == ["periodic", "scene", "memory", "description"]
    assert conf["unique_id"] == "va_porch_descriptions" and conf["device"]["identifiers"] == ["va"]
    assert conf["availability_topic"] == f"{topic_prefix}/status"


async def test_homeassistant_rule_change_events(running_mosquitto, paho_peer, topic_prefix):
    disc_prefix = f"{topic_prefix}/ha"
    rule = RuleConfig(name="person_at_door", source="door", question="Is a person at the door?")
    watcher = paho_peer("5")
    watcher.subscribe(f"{disc_prefix}/event/#")
    watcher.subscribe(f"{topic_prefix}/door/rules/+/event/ha")
    config_topic = f"{disc_prefix}/event/va/door_person_at_door_event/config"
    cfg = MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port)
    async with MqttMessager(cfg, status_topic=f"{topic_prefix}/status") as m:
        ha = RuleDiscovery(m, topic_prefix, HomeAssistantConfig(enabled=True, discovery_prefix=disc_prefix, node_id="va"))
        await ha.publish_change("door", "person_at_door", "on", "off", answer=True, reason="before the announce")
        await ha.announce(rule)
        conf = json.loads((await asyncio.to_thread(watcher.get, 10, config_topic)).payload)
        await ha.publish_change("door", "person_at_door", "on", "off", answer=True, reason="someone in a red coat")
        event = await asyncio.to_thread(watcher.get, 10, f"{topic_prefix}/door/rules/person_at_door/event/ha")
        await ha.remove(rule)
        cleared = await asyncio.to_thread(watcher.get, 10, config_topic)
    assert conf["state_topic"] == f"{topic_prefix}/door/rules/person_at_door/event/ha"
    assert conf["event_types"] == ["on", "off"] and conf["unique_id"] == "va_door_person_at_door_event"
    assert not event.retain and json.loads(event.payload) == {
        "event_type": "on", "rule": "person_at_door", "source": "door", "question": "Is a person at the door?",
        "previous": "off", "answer": True, "reason": "someone in a red coat"}  # the change before the announce: none
    assert cleared.payload == b""


async def test_homeassistant_events_from_a_running_daemon(tmp_path, running_mosquitto, paho_peer, topic_prefix,
                                                          stub_llm):
    """The daemon wires both: a rule turning on and a periodic description reach Home Assistant as events."""
    stub_llm.reply_fn = BrightnessJudge()  # yes for the bright clip
    clip = write_scene_clip(tmp_path / "bright.mp4", [(2.0, BRIGHT)])
    disc_prefix = f"{topic_prefix}/ha"
    watcher = paho_peer("5")
    watcher.subscribe(f"{topic_prefix}/cam/#")
    config = parse_config({
        "llm": {"provider": "vllm", "base_url": stub_llm.base_url, "model_name": stub_llm.model},
        "webrtc": {"host": "127.0.0.1", "port": 0},
        "sources": [{"name": "cam", "kind": "file", "url": str(clip), "loop": True}],
        "mqtt": {"host": running_mosquitto.host, "port": running_mosquitto.port, "prefix": topic_prefix,
                 "homeassistant": {"enabled": True, "discovery_prefix": disc_prefix, "node_id": "va"}},
        "agent": {"periodic_interval_s": 1.0},
        "storage": {"enabled": False},
        "rules": [{"name": "bright", "source": "cam", "question": "Is it bright?", "check_every_s": 0.5,
                   "on_after": 1}],
    }, environ={})
    daemon = Daemon(config)
    await daemon.start()
    try:
        rule_event = await asyncio.to_thread(watcher.get, 30, f"{topic_prefix}/cam/rules/bright/event/ha")
        description = await asyncio.to_thread(watcher.get, 30, f"{topic_prefix}/cam/description/ha")
    finally:
        await daemon.close()
    late = paho_peer("5")
    late.subscribe(f"{disc_prefix}/event/#")
    configs = {m.topic for m in [await asyncio.to_thread(late.get, 10) for _ in range(2)]}
    assert configs == {f"{disc_prefix}/event/va/cam_bright_event/config", f"{disc_prefix}/event/va/cam_descriptions/config"}
    change = json.loads(rule_event.payload)
    assert change["event_type"] == "on" and change["previous"] == "off" and change["answer"] is True
    assert change["reason"].startswith("mean brightness")
    said = json.loads(description.payload)
    assert said["event_type"] == "periodic" and said["source"] == "cam" and said["text"]
