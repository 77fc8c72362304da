"""MqttMessager against a real mosquitto (MQTT 5 and 3.1.1) and the embedded amqtt broker."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.waiting import wait_until
from visual_agent.broker import EmbeddedBroker
from visual_agent.config import MqttConfig
from visual_agent.errors import MessagingError
from visual_agent.mqtt import MqttMessager

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]


def _cfg(broker, **kw) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5, **kw)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_messager_receives_and_publishes(running_mosquitto, paho_peer, topic_prefix, protocol):
    peer = paho_peer(protocol)
    peer.subscribe(f"{topic_prefix}/out")
    async with MqttMessager(_cfg(running_mosquitto, protocol=protocol), subscriptions=[f"{topic_prefix}/in"]) as m:
        assert m.protocol.value == protocol
        peer.publish(f"{topic_prefix}/in", b"hello", qos=1)
        msg = await m.next_message(5)
        assert (msg.topic, msg.payload, msg.qos) == (f"{topic_prefix}/in", b"hello", 1)
        await m.publish(f"{topic_prefix}/out", b"answer", wait=True)
        got = await asyncio.to_thread(peer.get, 5)
        assert got.payload == b"answer" and got.qos == 1


async def test_messager_mqtt5_response_topic_and_correlation(running_mosquitto, paho_peer, topic_prefix):
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/reply/me")
    async with MqttMessager(_cfg(running_mosquitto), subscriptions=[f"{topic_prefix}/in"]) as m:
        peer.publish(f"{topic_prefix}/in", b"q", response_topic=f"{topic_prefix}/reply/me", correlation_data=b"\x01corr")
        msg = await m.next_message(5)
        assert msg.response_topic == f"{topic_prefix}/reply/me" and msg.correlation_data == b"\x01corr"
        await m.publish(msg.response_topic, b"a", correlation_data=msg.correlation_data)
        got = await asyncio.to_thread(peer.get, 5)
        assert got.payload == b"a" and got.properties.CorrelationData == b"\x01corr"


async def test_messager_status_online_then_offline_retained(running_mosquitto, paho_peer, topic_prefix):
    status = f"{topic_prefix}/status"
    m = MqttMessager(_cfg(running_mosquitto), status_topic=status)
    await m.start()
    late = paho_peer("5")
    late.subscribe(status)
    got = await asyncio.to_thread(late.get, 5)
    assert got.payload == b"online" and got.retain
    await m.close()
    await m.close()  # idempotent
    got = await asyncio.to_thread(late.get, 5)
    assert got.payload == b"offline"
    later = paho_peer("3.1.1")
    later.subscribe(status)
    got = await asyncio.to_thread(later.get, 5)
    assert got.payload == b"offline" and got.retain


async def test_messager_close_twice_at_once_closes_once(running_mosquitto, paho_peer, topic_prefix):
    """A second `close()` while the first is publishing ``offline`` waits for it instead of closing a second time
    beside it (``offline`` is published once) and returns with the messager closed."""
    status = f"{topic_prefix}/status"
    peer = paho_peer("5")
    peer.subscribe(status)
    m = MqttMessager(_cfg(running_mosquitto), status_topic=status)
    await m.start()
    assert (await asyncio.to_thread(peer.get, 5)).payload == b"online"
    first = asyncio.create_task(m.close())
    await asyncio.sleep(0)  # the first call is under way
    await m.close()
    assert m.state == "closed"
    await first
    peer.publish(status, b"marker", qos=1).wait_for_publish(5)
    seen = [(await asyncio.to_thread(peer.get, 5)).payload]
    while seen[-1] != b"marker":
        seen.append((await asyncio.to_thread(peer.get, 5)).payload)
    assert seen == [b"offline", b"marker"], seen


async def test_messager_last_will_on_lost_connection(running_mosquitto, paho_peer, topic_prefix):
    status = f"{topic_prefix}/status"
    peer = paho_peer("5")
    peer.subscribe(status)
    m = MqttMessager(_cfg(running_mosquitto, keepalive_s=5), status_topic=status)
    await m.start()
    assert (await asyncio.to_thread(peer.get, 5)).payload == b"online"
    m._bridge.socket().close()  # the process "dies": no DISCONNECT, the broker sends the will
    got = await asyncio.to_thread(peer.get, 10)
    assert got.payload == b"offline"
    await m.close(publish_offline=False)


async def test_messager_broker_restart_keeps_questions_and_outbox(running_mosquitto, paho_peer, topic_prefix):
    """Broker down: the asker's QoS-1 question and our answer wait; after the restart both arrive."""
    broker = running_mosquitto
    asker = paho_peer("5", persistent=True)
    asker.subscribe(f"{topic_prefix}/answer")
    m = MqttMessager(_cfg(broker), subscriptions=[f"{topic_prefix}/ask"])
    await m.start()
    asker.publish(f"{topic_prefix}/ask", b"marker", qos=1)  # once it arrives, the broker holds our subscription
    assert (await m.next_message(10)).payload == b"marker"
    await asyncio.to_thread(broker.stop)
    await wait_until(lambda: not m.connected, 5, what="the messager saw the broker go")
    await m.publish(f"{topic_prefix}/answer", b"made while offline")
    assert m.stats.outboxed == 1
    asker.publish(f"{topic_prefix}/ask", b"asked while the broker was down", qos=1)
    await asyncio.to_thread(broker.start)
    await m.wait_connected(10)
    msg = await m.next_message(10)
    assert msg.payload == b"asked while the broker was down"
    got = await asyncio.to_thread(asker.get, 10)
    assert got.payload == b"made while offline"
    await m.close()


async def test_messager_outbox_is_bounded(running_mosquitto, topic_prefix):
    m = MqttMessager(MqttConfig(host="127.0.0.1", port=1, outbox_max=3, reconnect_min_s=5, reconnect_max_s=5))
    for i in range(5):
        await m.publish(f"{topic_prefix}/x", str(i))
    assert [o.payload for o in m._outbox] == [b"2", b"3", b"4"] and m.stats.outbox_dropped == 2
    await m.close()


async def test_messager_inbox_is_bounded(running_mosquitto, paho_peer, topic_prefix):
    peer = paho_peer("5")
    async with MqttMessager(_cfg(running_mosquitto, inbox_max=2), subscriptions=[f"{topic_prefix}/in"]) as m:
        for i in range(5):
            peer.publish(f"{topic_prefix}/in", str(i)).wait_for_publish(5)
        await wait_until(lambda: m.stats.received >= 5, 5, what="5 messages received")
        assert m.stats.received == 5 and m.stats.inbox_dropped == 3
        assert [(await m.next_message(1)).payload for _ in range(2)] == [b"0", b"1"]


async def test_messager_unreachable_broker_says_so():
    m = MqttMessager(MqttConfig(host="127.0.0.1", port=1, reconnect_min_s=0.1, reconnect_max_s=0.2))
    with pytest.raises(MessagingError, match="127.0.0.1:1"):
        await m.start(timeout=1.0)
    assert m.last_error and "refused" in m.last_error.lower()
    await m.close()


async def test_messager_embedded_broker_falls_back_to_311_with_nodelay():
    async with EmbeddedBroker(0) as broker:
        cfg = MqttConfig(host="127.0.0.1", port=broker.port)
        async with MqttMessager(cfg, subscriptions=["e/in"]) as m:
            assert m.protocol.value == "3.1.1"
            for i in range(10):
                await m.publish("e/in", str(i), wait=True)
                assert (await m.next_message(5)).payload == str(i).encode()
            # without TCP_NODELAY a QoS-1 round trip to amqtt takes ~44 ms (speed: scripts/bench_agent.py --embedded-broker)
            assert m._bridge.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_messager_username_password(mosquitto_factory, broker_files):
    tmp_path = broker_files
    import subprocess

    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "agent", "s3cret-pw"], check=True)
    pwfile.chmod(0o644)
    broker = mosquitto_factory(listener_extra=f"password_file {pwfile}\n", anonymous=False)
    good = MqttConfig(host=broker.host, port=broker.port, username="agent", password="s3cret-pw")
    async with MqttMessager(good) as m:
        assert m.connected
    bad = MqttConfig(host=broker.host, port=broker.port, username="agent", password="wrong", reconnect_min_s=5)
    m = MqttMessager(bad)
    with pytest.raises(MessagingError, match=r"(?i)not authori[sz]ed|bad user name or password"):
        await m.start(timeout=3)
    assert "s3cret" not in repr(bad) and "wrong" not in repr(bad)
    await m.close()


async def test_messager_tls_with_ca(mosquitto_factory, broker_files):
    tmp_path = broker_files
    import subprocess

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
        "-extfile", "san.ext", "-out", "server.crt")
    for f in tmp_path.iterdir():
        f.chmod(0o644)
    broker = mosquitto_factory(listener_extra=f"cafile {tmp_path}/ca.crt\ncertfile {tmp_path}/server.crt\nkeyfile {tmp_path}/server.key\n")
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, tls={"enabled": True, "ca_certs": str(tmp_path / "ca.crt")})
    async with MqttMessager(cfg, subscriptions=["tls/in"]) as m:
        await m.publish("tls/in", b"over tls", wait=True)
        assert (await m.next_message(5)).payload == b"over tls"
    untrusted = MqttConfig(host="127.0.0.1", port=broker.port, tls={"enabled": True}, reconnect_min_s=5)
    m = MqttMessager(untrusted)
    with pytest.raises(MessagingError, match="(?i)certificate|ssl"):
        await m.start(timeout=3)
    await m.close()


async def test_messager_shared_subscription_splits_questions(running_mosquitto, paho_peer, topic_prefix):
    peer = paho_peer("5")
    shared = f"$share/grp/{topic_prefix}/ask"
    cfg = _cfg(running_mosquitto)
    async with MqttMessager(cfg, subscriptions=[shared]) as a, MqttMessager(cfg, subscriptions=[shared]) as b:
        for i in range(10):
            peer.publish(f"{topic_prefix}/ask", str(i)).wait_for_publish(5)
        await wait_until(lambda: a._inbox.qsize() + b._inbox.qsize() >= 10, what="ten questions between a and b")
        got_a = [(await a.next_message(1)).payload for _ in range(a._inbox.qsize())]
        got_b = [(await b.next_message(1)).payload for _ in range(b._inbox.qsize())]
    assert sorted(got_a + got_b, key=int) == [str(i).encode() for i in range(10)]  # each exactly once
    assert got_a and got_b


def test_bridge_uses_no_private_attributes():
    """The bridge drives paho and asyncio through their public API only: a private attribute (paho's
    `_out_messages`, `_sock_close`, asyncio's `loop._thread_id`) may change in any release under the pin."""
    import ast
    import inspect

    from visual_agent import mqtt, mqtt_bridge, mqtt_queues

    for module in (mqtt, mqtt_bridge, mqtt_queues):
        tree = ast.parse(inspect.getsource(module))
        foreign = sorted(
            f"{module.__name__}:{node.lineno}: .{node.attr}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ) + sorted(  # getattr(loop, "_thread_id", None) is the same thing spelled otherwise
            f"{module.__name__}:{node.lineno}: {node.args[1].value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")
        )
        assert not foreign, foreign


def test_bridge_paho_is_the_tested_major_version():
    """pyproject pins paho-mqtt to the major version these tests ran against (callback API VERSION2)."""
    from importlib.metadata import version

    from paho.mqtt.enums import CallbackAPIVersion

    assert int(version("paho-mqtt").split(".")[0]) == 2 and CallbackAPIVersion.VERSION2
