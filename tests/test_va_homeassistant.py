"""Home Assistant discovery against a real mosquitto: a retained sensor config per source and its state."""

from __future__ import annotations

import asyncio
import json

import pytest

from visual_agent.config import HomeAssistantConfig, MqttConfig
from visual_agent.homeassistant import HomeAssistantDiscovery
from visual_agent.messages import Answer
from visual_agent.mqtt import MqttMessager

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]


async def test_homeassistant_sensor_config_and_state(running_mosquitto, paho_peer, topic_prefix):
    cfg = MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port)
    disc_prefix = f"{topic_prefix}/ha"
    async with MqttMessager(cfg, status_topic=f"{topic_prefix}/status") as m:
        ha = HomeAssistantDiscovery(m, topic_prefix, HomeAssistantConfig(enabled=True, discovery_prefix=disc_prefix, node_id="va one"))
        await ha.on_answer(Answer(id="1", question="q", text="a cat on the sofa", source="living.room"))
        # acknowledged after the two retained messages sent before it on the same connection: they are at the broker
        await m.publish(f"{topic_prefix}/marker", b"", wait=True)
        late = paho_peer("3.1.1")  # subscribes afterwards: all are retained
        late.subscribe(f"{disc_prefix}/#")
        config_msg = await asyncio.to_thread(late.get, 5, f"{disc_prefix}/sensor/va_one/living_room/config")
        late.subscribe(f"{topic_prefix}/living.room/state")
        state_msg = await asyncio.to_thread(late.get, 5, f"{topic_prefix}/living.room/state")
    assert config_msg.topic == f"{disc_prefix}/sensor/va_one/living_room/config" and config_msg.retain
    conf = json.loads(config_msg.payload)
    assert conf["state_topic"] == f"{topic_prefix}/living.room/state" and conf["availability_topic"] == f"{topic_prefix}/status"
    assert conf["unique_id"] == "va_one_living_room_view" and conf["device"]["identifiers"] == ["va_one"]
    assert state_msg.retain and json.loads(state_msg.payload)["text"] == "a cat on the sofa"
