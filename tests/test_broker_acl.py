"""The embedded broker's topic rights under attack: anonymous clients rewriting the rule set or Home Assistant's
discovery configs, and reading (or hoarding) other askers' questions. Each test says what the legitimate side
(the daemon's client, an asker) saw."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.broker_clients import Mqtt311
from tests.waiting import wait_until
from visual_agent.broker import EmbeddedBroker
from visual_agent.config import MqttConfig
from visual_agent.mqtt import MqttMessager

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]

PREFIX = "acl"
RULES = f"{PREFIX}/rules/set"


def _daemon(broker: EmbeddedBroker, subscriptions: list[str]) -> MqttMessager:
    cfg = broker.daemon_client_config(MqttConfig(host="127.0.0.1", port=broker.port, prefix=PREFIX))
    return MqttMessager(cfg, subscriptions=subscriptions)


def _publish(port: int, messages: list[tuple[str, bytes]], sentinel: str = f"{PREFIX}/ask", **login) -> None:
    """Publish `messages` retained, then b"sentinel" on `sentinel` (call it in a thread: it waits for PUBACKs)."""
    with Mqtt311(port, **login) as client:
        assert client.connack == 0
        for topic, payload in messages:
            client.client.publish(topic, payload, qos=1, retain=True)
        client.client.publish(sentinel, b"sentinel", qos=1).wait_for_publish(10)


def _retained(broker: EmbeddedBroker, topic: str) -> bytes | None:
    kept = broker._broker._retained_messages.get(topic)
    return None if kept is None else bytes(kept.data)


@pytest.mark.parametrize("discovery", ["homeassistant", "ha_custom"])
async def test_broker_anonymous_clients_cannot_rewrite_rules_or_discovery(discovery):
    """Anonymous (loopback, no broker password): a client's retained rule set, its empty payload (a delete), and its
    discovery configs under the configured discovery prefix are dropped (counted); the daemon's retained ones stay,
    and the daemon's client saw only the sentinel question after its own."""
    ha_config = f"{discovery}/sensor/{PREFIX}/frontdoor/config"
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0, homeassistant={"discovery_prefix": discovery})
    async with EmbeddedBroker.from_config(cfg) as broker, _daemon(broker, [RULES, f"{discovery}/#", f"{PREFIX}/ask"]) as daemon:
        await daemon.publish(RULES, b'[{"name": "person"}]', retain=True, wait=True)
        await daemon.publish(ha_config, b'{"state_topic": "acl/frontdoor/state"}', retain=True, wait=True)
        own = [await daemon.next_message(5) for _ in range(2)]
        assert {m.topic for m in own} == {RULES, ha_config}
        attack = [(RULES, b"[]"), (RULES, b""), (ha_config, b'{"state_topic": "attacker/owned"}'),
                  (f"{discovery}/binary_sensor/{PREFIX}/x/config", b"{}")]
        await asyncio.to_thread(_publish, broker.port, attack)
        seen = await daemon.next_message(10)
        print(f"daemon's client after the attack: first message {seen.topic} {seen.payload!r}")
        assert (seen.topic, seen.payload) == (f"{PREFIX}/ask", b"sentinel")
        assert _retained(broker, RULES) == b'[{"name": "person"}]'
        assert _retained(broker, ha_config) == b'{"state_topic": "acl/frontdoor/state"}'
        assert broker.describe()["publish_denied"] == 4


async def test_broker_operator_may_set_rules_with_the_broker_password():
    """With `mqtt.username`/`mqtt.password`, a client logged in as that user is the operator: it sets the rules and
    Home Assistant's discovery configs; it still cannot publish an answer or the status."""
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0, username="operator", password="op-secret-1")
    async with EmbeddedBroker.from_config(cfg) as broker, _daemon(broker, ["homeassistant/#", f"{PREFIX}/#"]) as daemon:
        ha_config = "homeassistant/sensor/acl/door/config"
        login = {"username": "operator", "password": "op-secret-1"}
        await asyncio.to_thread(_publish, broker.port, [(RULES, b"[]"), (ha_config, b"{}"), (f"{PREFIX}/status", b"offline")],
                                **login)
        got = [await daemon.next_message(5) for _ in range(3)]
        assert [(m.topic, m.payload) for m in got] == [(RULES, b"[]"), (ha_config, b"{}"), (f"{PREFIX}/ask", b"sentinel")]
        assert broker.describe()["publish_denied"] == 1 and _retained(broker, f"{PREFIX}/status") is None


async def test_broker_questions_are_write_only():
    """Another client cannot read the questions: a subscription to `<prefix>/ask` or `<prefix>/+/ask` is refused in
    its SUBACK, `#` and `<prefix>/#` are granted but never carry a question (nor does a persistent session's offline
    queue), and a retained question is not kept. The daemon's client got every question."""
    async with EmbeddedBroker.from_config(MqttConfig(prefix=PREFIX, embedded_port=0)) as broker, \
            _daemon(broker, [f"{PREFIX}/ask", f"{PREFIX}/+/ask"]) as daemon:
        with await asyncio.to_thread(Mqtt311, broker.port) as spy:
            codes = [await asyncio.to_thread(spy.subscribe, f) for f in (f"{PREFIX}/ask", f"{PREFIX}/+/ask", "+/+/ask")]
            assert codes == [[128], [128], [128]], codes
            assert await asyncio.to_thread(spy.subscribe, "#") == [1]
            assert await asyncio.to_thread(spy.subscribe, f"{PREFIX}/#") == [1]
            with await asyncio.to_thread(Mqtt311, broker.port, client_id="hoarder", clean=False) as hoarder:
                assert await asyncio.to_thread(hoarder.subscribe, "#") == [1]
            questions = [(f"{PREFIX}/ask", b'{"question": "door code?", "conversation": "c1"}'),
                         (f"{PREFIX}/frontdoor/ask", b"who is there?")]
            await asyncio.to_thread(_publish, broker.port, questions, sentinel="other/sentinel")
            seen = await asyncio.to_thread(spy.until, "other/sentinel")
            assert [m.topic for m in seen] == ["other/sentinel"], [m.topic for m in seen]
            got = [await daemon.next_message(5) for _ in questions]
            print(f"daemon's client got {len(got)} of {len(questions)} questions; the spy got {len(seen) - 1}")
            assert [(m.topic, m.payload) for m in got] == questions
        hoarded = broker._broker._sessions["hoarder"][0].retained_messages._queue
        assert [m.topic for m in hoarded] == ["other/sentinel"]
        await wait_until(lambda: broker.describe()["retain_refused"] == 2, 5, "2 retained questions refused")
        assert broker.describe()["subscribe_denied"] == 3
