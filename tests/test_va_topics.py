"""visual_agent.topics: every MQTT topic built in one place; the agent, Home Assistant and `ask` use it."""

from __future__ import annotations

from visual_agent import HomeAssistantConfig, HomeAssistantDiscovery, MqttConfig, MqttMessager, Topics
from visual_agent.topics import ha_object_id, valid_reply_topic


def test_topics_fixed_ones_under_the_prefix():
    t = Topics("va/home")
    assert (t.ask, t.answer, t.partial, t.status) == ("va/home/ask", "va/home/answer", "va/home/answer/partial",
                                                      "va/home/status")
    assert Topics("va/home").as_dict() == {"ask": t.ask, "answer": t.answer, "partial": t.partial, "status": t.status}


def test_topics_per_source_and_reply():
    t = Topics("va")
    assert t.description("cam1") == "va/cam1/description"
    assert t.state("cam1") == "va/cam1/state"
    assert t.reply("visual-agent-ask-1234") == "va/reply/visual-agent-ask-1234"


def test_topics_shared_subscription_only_with_a_group():
    t = Topics("va")
    assert t.ask_subscription(None) == "va/ask"
    assert t.ask_subscription("cams") == "$share/cams/va/ask"


def test_topics_reply_topic_must_be_a_plain_topic():
    assert valid_reply_topic("va/reply/x") == "va/reply/x"
    for bad in (None, "", "va/+/x", "va/#", "va/\0"):
        assert valid_reply_topic(bad) is None


def test_topics_home_assistant_discovery_uses_the_same_topics():
    messager = MqttMessager(MqttConfig(prefix="va"), name="topics-test")  # not started: nothing is published here
    ha = HomeAssistantDiscovery(messager, "va", HomeAssistantConfig(node_id="my node"))
    payload = ha.discovery_payload("front door")
    t = Topics("va")
    assert payload["state_topic"] == t.state("front door") and payload["availability_topic"] == t.status
    assert ha.discovery_topic("front door") == "homeassistant/sensor/my_node/front_door/config"
    assert ha_object_id("a/b c") == "a_b_c"
