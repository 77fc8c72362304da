"""Rules managed over MQTT against real mosquitto: a retained set on `<prefix>/rules/set` is validated (a bad one is
answered on `<prefix>/rules/error` and changes nothing), survives a restart (the state is published again), removed
rules leave no retained topics; Home Assistant discovery of a binary_sensor and an evidence image per rule.
The model is the STAND-IN of tests/fixtures/llm_stub.py."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from providers import create_provider
from tests.fixtures.frames import Buffers
from tests.waiting import wait_until
from visual_agent.agent import VisualAgent
from visual_agent.config import HomeAssistantConfig, MqttConfig
from visual_agent.mqtt import MqttMessager
from visual_agent.rules import RuleConfig, RuleControl, RuleDiscovery, RuleEngine

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

RULE = {"name": "person_at_door", "source": "door", "question": "Is a person standing at the door?"}


@contextlib.asynccontextmanager
async def daemon_like(mosquitto, stub, prefix, *, config_rules=(), homeassistant: HomeAssistantConfig | None = None):
    """What the daemon wires: the agent's messager publishes, a second connection takes `<prefix>/rules/set`."""
    llm = create_provider({"provider": "vllm", "base_url": stub.base_url, "model_name": stub.model})
    messager = MqttMessager(MqttConfig(host=mosquitto.host, port=mosquitto.port, reconnect_min_s=0.1))
    control_messager = MqttMessager(MqttConfig(host=mosquitto.host, port=mosquitto.port, reconnect_min_s=0.1),
                                    persistent_session=False, name="mqtt-rules")
    await messager.start()
    await control_messager.start()
    agent = VisualAgent(llm=llm, messager=messager, webrtc_driver=Buffers(), prefix=prefix)
    discovery = RuleDiscovery(messager, prefix, homeassistant) if homeassistant else None
    engine = RuleEngine(agent, [RuleConfig(**r) for r in config_rules], discovery=discovery)
    await engine.start()
    control = RuleControl(engine, control_messager)
    await control.start()
    try:
        yield engine
    finally:
        await control.close()
        await control_messager.close(publish_offline=False)
        await engine.close()
        await agent.close(grace_s=0.5)
        await messager.close()
        await llm.aclose()



def get(peer, topic, timeout=10.0):
    return peer.get(timeout, topic=topic)


async def test_rules_set_over_mqtt_is_validated_and_survives_a_restart(running_mosquitto, paho_peer, topic_prefix, stub_llm):
    admin = paho_peer("5")
    watcher = paho_peer("5")
    watcher.subscribe(f"{topic_prefix}/rules/error")
    watcher.subscribe(f"{topic_prefix}/+/rules/+")
    config_rule = {**RULE, "name": "from_config"}
    async with daemon_like(running_mosquitto, stub_llm, topic_prefix, config_rules=[config_rule]) as engine:
        first = json.loads((await asyncio.to_thread(get, watcher, f"{topic_prefix}/door/rules/from_config")).payload)
        assert first["state"] == "off" and first["checks"] == 0 and first["origin"] == "config"
        admin.publish(f"{topic_prefix}/rules/set", json.dumps([RULE]), retain=True).wait_for_publish(5)
        await wait_until(lambda: len(engine.rules()) == 2, 10, "the MQTT rule")
        state = json.loads((await asyncio.to_thread(get, watcher, f"{topic_prefix}/door/rules/person_at_door")).payload)
        assert state["state"] == "off" and state["origin"] == "mqtt" and state["question"] == RULE["question"]
        # bad sets: answered on rules/error, and the rules stay as they were
        for bad, why in [(b"[{", "not a JSON list"), (json.dumps([{**RULE, "name": "A B"}]), "name"),
                         (json.dumps([{**RULE, "name": "from_config"}]), "already used by config")]:
            admin.publish(f"{topic_prefix}/rules/set", bad).wait_for_publish(5)
            error = json.loads((await asyncio.to_thread(get, watcher, f"{topic_prefix}/rules/error")).payload)
            assert why in error["error"]
        assert sorted(r.config.name for r in engine.rules()) == ["from_config", "person_at_door"]
        assert engine.stats()["rule_sets_refused"] == 3
    # a restart: the retained set comes back, and each rule's state is published again
    while not watcher.messages.empty():
        watcher.messages.get_nowait()
    async with daemon_like(running_mosquitto, stub_llm, topic_prefix, config_rules=[config_rule]) as engine:
        await wait_until(lambda: len(engine.rules()) == 2, 10, "the retained MQTT rule after the restart")
        seen = set()

        def republished():
            while seen != {"from_config", "person_at_door"}:
                msg = watcher.get(10)
                if not msg.retain and msg.topic.startswith(f"{topic_prefix}/door/rules/") and msg.payload:
                    seen.add(json.loads(msg.payload)["rule"])

        await asyncio.to_thread(republished)
        # clearing the set removes the rule and its retained state
        admin.publish(f"{topic_prefix}/rules/set", b"", retain=True).wait_for_publish(5)
        await wait_until(lambda: [r.config.name for r in engine.rules()] == ["from_config"], 10, "the MQTT rule to go")
    late = paho_peer("5")
    late.subscribe(f"{topic_prefix}/door/rules/#")
    retained = []
    with contextlib.suppress(TimeoutError):
        while True:
            retained.append(await asyncio.to_thread(late.get, 1.0))
    assert {m.topic for m in retained if m.payload} == {f"{topic_prefix}/door/rules/from_config"}


async def test_rules_home_assistant_discovery_per_rule(running_mosquitto, paho_peer, topic_prefix, stub_llm):
    ha = HomeAssistantConfig(enabled=True, discovery_prefix=f"{topic_prefix}/ha", node_id="va_test")
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/ha/#")
    admin = paho_peer("5")
    async with daemon_like(running_mosquitto, stub_llm, topic_prefix, homeassistant=ha) as engine:
        admin.publish(f"{topic_prefix}/rules/set", json.dumps([RULE])).wait_for_publish(5)
        sensor = await asyncio.to_thread(get, peer, f"{topic_prefix}/ha/binary_sensor/va_test/door_person_at_door/config")
        image = await asyncio.to_thread(get, peer, f"{topic_prefix}/ha/image/va_test/door_person_at_door_evidence/config")
        config = json.loads(sensor.payload)
        assert config["state_topic"] == f"{topic_prefix}/door/rules/person_at_door"
        assert (config["payload_on"], config["payload_off"]) == ("on", "off")
        assert config["value_template"] == "{{ value_json.state }}"
        assert config["availability_topic"] == f"{topic_prefix}/status"
        picture = json.loads(image.payload)
        assert picture["image_topic"] == f"{topic_prefix}/door/rules/person_at_door/evidence"
        assert picture["content_type"] == "image/jpeg"
        assert picture["device"]["identifiers"] == ["va_test"] == config["device"]["identifiers"]
        # a removed rule's entities are cleared (empty retained configs)
        admin.publish(f"{topic_prefix}/rules/set", b"[]").wait_for_publish(5)
        cleared = await asyncio.to_thread(get, peer, f"{topic_prefix}/ha/binary_sensor/va_test/door_person_at_door/config")
        assert cleared.payload == b""
        await wait_until(lambda: not engine.rules(), 5, "the rule to go")


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_rules_daemon_restart_keeps_config_and_retained_rules_and_republishes(
        tmp_path, running_mosquitto, paho_peer, topic_prefix, stub_llm):
    from tests.fixtures.daemon import daemon_process, free_tcp_port, write_config

    page_port = free_tcp_port()
    config = write_config(tmp_path / "rules.yaml", {
        "llm": {"provider": "vllm", "base_url": stub_llm.base_url, "model_name": stub_llm.model},
        "webrtc": {"host": "127.0.0.1", "port": page_port, "host_candidate_addresses": ["127.0.0.1"]},
        "mqtt": {"host": running_mosquitto.host, "port": running_mosquitto.port, "prefix": topic_prefix,
                 "homeassistant": {"enabled": True, "discovery_prefix": f"{topic_prefix}/ha", "node_id": "va"}},
        "rules": [{**RULE, "name": "from_config"}],
    })
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/door/rules/+")
    peer.subscribe(f"{topic_prefix}/ha/binary_sensor/#")
    admin = paho_peer("5")

    def states_and_sensors(wanted: set[str]) -> set[str]:
        seen: set[str] = set()
        while not wanted <= seen:
            msg = peer.get(30)
            if msg.payload:
                seen.add(msg.topic)
        return seen

    wanted = {f"{topic_prefix}/door/rules/from_config", f"{topic_prefix}/door/rules/person_at_door",
              f"{topic_prefix}/ha/binary_sensor/va/door_from_config/config",
              f"{topic_prefix}/ha/binary_sensor/va/door_person_at_door/config"}
    try:
        async with daemon_process(config, page_port=page_port, log_path=tmp_path / "first.log"):
            admin.publish(f"{topic_prefix}/rules/set", json.dumps([RULE]), retain=True).wait_for_publish(5)
            await asyncio.to_thread(states_and_sensors, wanted)
        while not peer.messages.empty():
            peer.messages.get_nowait()
        async with daemon_process(config, page_port=page_port, log_path=tmp_path / "second.log") as second:
            await asyncio.to_thread(states_and_sensors, wanted)  # config and retained rules, published again
            from tests.fixtures.daemon import _get

            health = json.loads(await asyncio.to_thread(_get, second.page_url + "/healthz"))
            assert health["rules"]["counters"]["rules"] == 2  # no auth token set: /healthz shows the detail
    finally:
        admin.publish(f"{topic_prefix}/rules/set", b"", retain=True).wait_for_publish(5)


@pytest.mark.e2e
@pytest.mark.webrtc
@pytest.mark.timeout(120)
async def test_rules_page_gets_its_sources_rule_states_on_its_data_channel(tmp_path, running_mosquitto, topic_prefix, stub_llm):
    from tests.fixtures.daemon import daemon_process, free_tcp_port, write_config
    from tests.fixtures.webrtc import CounterVideoTrack, publish

    stub_llm.reply = json.dumps({"answer": True, "reason": "a stand-in yes"})
    page_port = free_tcp_port()
    config = write_config(tmp_path / "page.yaml", {
        "llm": {"provider": "vllm", "base_url": stub_llm.base_url, "model_name": stub_llm.model},
        "webrtc": {"host": "127.0.0.1", "port": page_port, "host_candidate_addresses": ["127.0.0.1"]},
        "mqtt": {"host": running_mosquitto.host, "port": running_mosquitto.port, "prefix": topic_prefix},
        "rules": [{"name": "anyone", "source": "cam", "question": "Anyone there?", "check_every_s": 0.5,
                   "on_after": 1},
                  {"name": "elsewhere", "source": "other", "question": "Anyone there?"}],
    })
    async with daemon_process(config, page_port=page_port, log_path=tmp_path / "daemon.log") as daemon:
        async with publish(daemon.page_url, CounterVideoTrack(320, 240, 15), source="cam") as pub:
            await pub.wait_open()
            seen = []
            while not any(m.get("state") == "on" for m in seen):
                text = await asyncio.wait_for(pub.messages.get(), 30)
                msg = json.loads(text)
                assert msg["type"] == "rule"
                seen.append(msg)
    assert {m["rule"] for m in seen} == {"anyone"}  # only the rules of the page's own source
    assert seen[-1]["reason"] == "a stand-in yes" and seen[-1]["checks"] >= 1
