"""The embedded broker's memory under attack: megabyte messages, a persistent session that hoards an offline queue,
and sessions opened to be kept. The queues are measured in amqtt's own session queues (what the daemon holds);
each test says what a legitimate client saw meanwhile."""

from __future__ import annotations

import asyncio
import re
import socket

import pytest

from tests.fixtures.broker_clients import Mqtt311
from tests.waiting import wait_until
from visual_agent.broker import EmbeddedBroker
from visual_agent.config import MqttConfig
from visual_agent.mqtt import MqttMessager

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]

PREFIX = "lim"
MB = 1024 * 1024


def _queued(broker: EmbeddedBroker) -> tuple[int, int]:
    """(messages, payload bytes) in every session's offline queue, read from amqtt's sessions."""
    count = size = 0
    for session, _ in broker._broker._sessions.values():
        queued = list(session.retained_messages._queue)
        count += len(queued)
        size += sum(len(m.data) for m in queued)
    return count, size


def _publish_all(port: int, topic: str, payloads: list[bytes]) -> None:
    with Mqtt311(port) as attacker:
        for payload in payloads:
            attacker.client.publish(topic, payload, qos=1)
        attacker.client.publish("flood/done", b"", qos=1).wait_for_publish(30)


def _hoard(port: int, client_id: str) -> None:
    """A persistent session subscribed to everything, then gone: the broker queues for it."""
    with Mqtt311(port, client_id=client_id, clean=False) as hoarder:
        assert hoarder.connack == 0 and hoarder.subscribe("#") == [1]


async def test_broker_offline_queue_is_bounded_by_count_and_bytes():
    """The finding: a persistent session subscribed to `#` disconnects, then 150 messages are published outside the
    prefix. The session's queue keeps at most `embedded_max_queued_messages` / `embedded_max_queued_bytes` (the
    rest is dropped, counted); the hoarder gets what was kept when it comes back; a subscriber meanwhile got all.
    (150 x 30 KiB against a 256 KiB bound: a larger flood only loads the machine more; a reader on an overloaded one
    can lose messages to amqtt's own 5 s PUBACK timeout.)"""
    bound = 256 * 1024
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0, embedded_max_queued_messages=20, embedded_max_queued_bytes=bound)
    async with EmbeddedBroker.from_config(cfg) as broker:
        await asyncio.to_thread(_hoard, broker.port, "hoarder")
        with await asyncio.to_thread(Mqtt311, broker.port) as legit:
            await asyncio.to_thread(legit.subscribe, "flood/#")
            await asyncio.to_thread(_publish_all, broker.port, "flood/x", [bytes(30 * 1024)] * 150)
            got = await asyncio.to_thread(legit.collect, 151, 60)
        print(f"legitimate subscriber during the flood: {len(got) - 1} of 150 messages")
        assert sorted(m.topic for m in got) == ["flood/done"] + ["flood/x"] * 150
        count, size = _queued(broker)
        print(f"queued for the hoarder: {count} messages, {size} bytes")
        assert size <= bound and count <= 20, (count, size)
        assert broker.describe()["queue_dropped"] >= 150 - count
        with await asyncio.to_thread(Mqtt311, broker.port, client_id="hoarder", clean=False) as back:
            kept = await asyncio.to_thread(back.collect, count, 30)
        assert "flood/done" in {m.topic for m in kept}  # what was kept, the sentinel too, nothing lost of it
        assert _queued(broker) == (0, 0)


async def test_broker_closes_a_connection_that_sends_a_megabyte():
    """150 x 1 MB (the finding's flood) stops at the first message: the connection is closed before the body is
    read (counted); nothing is queued; a legitimate client still round-trips; the daemon's own client may publish
    more than a client's limit (its evidence pictures)."""
    async with EmbeddedBroker.from_config(MqttConfig(prefix=PREFIX, embedded_port=0)) as broker:
        await asyncio.to_thread(_hoard, broker.port, "hoarder")
        with await asyncio.to_thread(Mqtt311, broker.port) as attacker:
            for _ in range(150):
                attacker.client.publish("flood/x", bytes(MB), qos=1)
            await wait_until(lambda: broker.describe().get("message_too_large") or _queued(broker)[0] >= 150, 60,
                             "the megabyte refused (or all 150 queued)")
        assert _queued(broker) == (0, 0), f"queued for the hoarder: {_queued(broker)} (messages, bytes)"
        daemon_cfg = broker.daemon_client_config(MqttConfig(host="127.0.0.1", port=broker.port, prefix=PREFIX,
                                                            max_payload_bytes=2 * MB))
        async with MqttMessager(daemon_cfg, subscriptions=[f"{PREFIX}/big"]) as daemon:
            await daemon.publish(f"{PREFIX}/big", bytes(512 * 1024), wait=True)
            assert len((await daemon.next_message(10)).payload) == 512 * 1024
        with await asyncio.to_thread(Mqtt311, broker.port) as legit:
            assert legit.connack == 0 and await asyncio.to_thread(legit.subscribe, "ok/#") == [1]
            legit.client.publish("ok/1", b"hello", qos=1)
            assert [m.payload for m in await asyncio.to_thread(legit.until, "ok/1")] == [b"hello"]


async def test_broker_keeps_a_bounded_number_of_sessions():
    """Persistent sessions opened and left (each could hoard a queue) are kept up to `embedded_max_sessions`; the
    longest-disconnected are forgotten (counted); a legitimate persistent client's newest session survives."""
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0, embedded_max_sessions=5)
    async with EmbeddedBroker.from_config(cfg) as broker:
        for i in range(30):
            await asyncio.to_thread(_hoard, broker.port, f"hoarder-{i}")
        await asyncio.to_thread(_hoard, broker.port, "legit")
        await wait_until(lambda: len(broker._broker._sessions) <= 5, 10,
                         f"at most 5 sessions kept (now {len(broker._broker._sessions)})")
        assert "legit" in broker._broker._sessions and broker.describe()["sessions_evicted"] == 26


def _slow_subscriber(port: int) -> socket.socket:
    """A connected client subscribed to `#` (QoS 0) that then never reads: the broker's sends to it back up."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client_id = b"slow"
    connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    s.sendall(bytes([0x10, len(connect)]) + connect)
    assert _recv_exactly(s, 4) == b"\x20\x02\x00\x00"  # CONNACK accepted
    subscribe = b"\x00\x01" + b"\x00\x01#" + b"\x00"
    s.sendall(bytes([0x82, len(subscribe)]) + subscribe)
    assert _recv_exactly(s, 5) == b"\x90\x03\x00\x01\x00"  # SUBACK QoS 0
    return s


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def test_broker_bounds_what_waits_for_a_client_that_does_not_read():
    """A connected client subscribes to `#` and stops reading; 100 x 200 KiB (20 MB) are published. What the broker
    holds for it (messages waiting to be written to its socket) stays within `embedded_max_unsent_bytes` (8 MiB) plus
    one message (the rest is dropped, counted); a reading subscriber got all 100."""
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0)
    async with EmbeddedBroker.from_config(cfg) as broker:
        slow = await asyncio.to_thread(_slow_subscriber, broker.port)
        try:
            with await asyncio.to_thread(Mqtt311, broker.port) as legit:
                await asyncio.to_thread(legit.subscribe, "flood/#")
                await asyncio.to_thread(_publish_all, broker.port, "flood/x", [bytes(200 * 1024)] * 100)
                got = await asyncio.to_thread(legit.collect, 101, 60)
            held = _held_for(broker, "slow")
            print(f"reading subscriber: {len(got) - 1} of 100; held for the one that does not read: {held} bytes")
            assert len(got) == 101
            assert held <= 8 * MB + 256 * 1024, held
            assert broker.describe()["queue_dropped"] > 0
        finally:
            slow.close()


def _held_for(broker: EmbeddedBroker, client_id: str) -> int:
    """Payload bytes the broker holds for `client_id`: its unfinished sends (amqtt's `mqtt_publish` tasks, each
    waiting for the connection's write lock or for its socket to drain)."""
    handler = broker._broker._sessions[client_id][1]
    waiting = 0
    for task in asyncio.all_tasks():
        frame = task.get_coro().cr_frame
        if frame is not None and frame.f_code.co_name == "mqtt_publish" and frame.f_locals.get("self") is handler:
            waiting += len(frame.f_locals.get("data") or b"")
    return waiting


async def test_broker_refusals_are_prometheus_counters():
    """The refusals /healthz counts are on /metrics too (`BrokerCollector` on the daemon's registry)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from visual_agent.broker_metrics import BrokerCollector

    async with EmbeddedBroker.from_config(MqttConfig(prefix=PREFIX, embedded_port=0)) as broker:
        registry = CollectorRegistry()
        registry.register(BrokerCollector(broker))
        assert 'visual_agent_embedded_broker_refusals_total{kind="message_too_large"} 0.0' in generate_latest(registry).decode()
        with await asyncio.to_thread(Mqtt311, broker.port) as attacker:
            attacker.client.publish("flood/x", bytes(MB), qos=1)
            await wait_until(lambda: broker.describe()["message_too_large"] >= 1, 30, "the megabyte refused")
        text = generate_latest(registry).decode()
        refused = re.search(r'visual_agent_embedded_broker_refusals_total\{kind="message_too_large"\} (\S+)', text)
        assert refused and float(refused.group(1)) >= 1, text  # paho may have sent it again after the close
        assert 'visual_agent_embedded_broker_connections{state="pending"} 0.0' in text
