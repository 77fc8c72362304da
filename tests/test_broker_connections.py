"""The embedded broker's connections under attack: sockets that close before CONNECT, and idle sockets re-opened to
hold every slot. Each test says what a legitimate client saw meanwhile (its time to CONNACK)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.fixtures.broker_clients import IdleSocketHolder, open_fds, time_to_connack
from tests.waiting import wait_until
from visual_agent.broker import EmbeddedBroker
from visual_agent.config import MqttConfig

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]

PREFIX = "conn"


def _open_and_close(port: int, count: int, payload: bytes) -> None:
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as s:
            if payload:
                s.sendall(payload)


@pytest.mark.parametrize("payload", [b"", b"\x10\x7f", b"GET / HTTP/1.1\r\n\r\n"], ids=["silent", "half-connect", "junk"])
async def test_broker_frees_sockets_closed_before_connect(payload):
    """200 connections closed before (or in the middle of) their CONNECT leave no descriptor behind: the count is
    back to the baseline at once, long before the CONNECT timeout, and a real client still connects."""
    async with EmbeddedBroker.from_config(MqttConfig(prefix=PREFIX, embedded_port=0)) as broker:
        baseline = open_fds()
        await asyncio.to_thread(_open_and_close, broker.port, 200, payload)
        await wait_until(lambda: open_fds() <= baseline, 5, f"descriptors back to {baseline} (now {open_fds()})")
        waited = await asyncio.to_thread(time_to_connack, "127.0.0.1", broker.port, timeout=10)
        print(f"legitimate client after 200 closed sockets ({len(payload)} bytes each): CONNACK in {waited} s")
        assert waited is not None


async def test_broker_slot_hold_does_not_lock_a_client_out():
    """An attacker keeps 300 idle sockets open (more than the 256 slots) from five loopback addresses and opens a
    new one whenever the broker closes one. A legitimate client still gets its CONNACK, well before an attacker's
    socket would time out (its pre-CONNECT window is 20 s here), and the attacker's sockets were evicted."""
    window = 20.0
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0, embedded_connect_timeout_s=window)
    async with EmbeddedBroker.from_config(cfg) as broker:
        sources = tuple(f"127.0.0.{i}" for i in range(1, 6))
        with IdleSocketHolder("127.0.0.1", broker.port, 300, sources=sources) as attack:
            assert await asyncio.to_thread(attack.wait_filled)
            waits = []
            for _ in range(3):
                waits.append(await asyncio.to_thread(time_to_connack, "127.0.0.1", broker.port, timeout=window / 2))
            print(f"legitimate client under a {attack.count}-socket slot hold: CONNACK in {waits} s "
                  f"(attacker opened {attack.opened}, {attack.closed_by_server} closed by the broker)")
        assert None not in waits, waits
        assert broker.describe()["pending_evicted"] > 0
