"""MQTT findings of the security review, each as an attack against real parts: response topics outside the allowed
prefixes, forged answers to `visual-agent ask`, the embedded amqtt broker (credentials, topic rights, CONNECT
timeout, retained caps), and mutual TLS to mosquitto with a client certificate made here."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.daemon import daemon_process, free_tcp_port, run_cli, write_config
from tests.fixtures.mqtt import PahoPeer
from tests.fixtures.pki import TestCA
from tests.waiting import wait_until
from visual_agent.broker import EmbeddedBroker
from visual_agent.config import MqttConfig
from visual_agent.errors import EmbeddedBrokerError, MessagingError
from visual_agent.mqtt import MqttMessager

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]

PREFIX = "sec"


# --- response topics -----------------------------------------------------------------------------------------


async def test_daemon_refuses_response_topics_outside_the_allowed_prefixes(tmp_path, running_mosquitto, paho_peer,
                                                                           topic_prefix, stub_llm):
    """A response topic outside `<prefix>/reply/` (another device's command topic, our own status) gets nothing:
    the answer goes to `<prefix>/answer` with a `forbidden_response_topic` error; `<prefix>/reply/...` works."""
    peer = paho_peer("5")
    answer, status = f"{topic_prefix}/answer", f"{topic_prefix}/status"
    lock, mine = f"{topic_prefix}-homeassistant/switch/front_door_lock/set", f"{topic_prefix}/reply/me"
    for topic in (answer, lock, mine, status):
        peer.subscribe(topic)
    page_port = free_tcp_port()
    cfg = write_config(tmp_path / "d.yaml", {
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model", "max_retries": 0},
        "webrtc": {"port": page_port}, "agent": {"frame_wait_s": 0.2},
        "mqtt": {"host": running_mosquitto.host, "port": running_mosquitto.port, "prefix": topic_prefix},
    })
    async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log"):
        await asyncio.to_thread(peer.get, 20, status)
        for qid, to in (("to-lock", lock), ("to-status", status)):
            peer.publish(f"{topic_prefix}/ask", json.dumps({"id": qid, "question": "open?"}), response_topic=to,
                         correlation_data=b"c")
        peer.publish(f"{topic_prefix}/ask", json.dumps({"id": "ok", "question": "fine?"}), response_topic=mine,
                     correlation_data=b"c")
        seen = await asyncio.to_thread(peer.until, mine, 30)
    by_topic = [(m.topic, json.loads(m.payload)["id"]) for m in seen if m.topic != status or m.payload[:1] == b"{"]
    assert (answer, "to-lock") in by_topic and (answer, "to-status") in by_topic and by_topic[-1] == (mine, "ok")
    assert not [t for t, _ in by_topic if t in (lock, status)], by_topic
    refused = [json.loads(m.payload) for m in seen if m.topic == answer]
    assert {a["error"]["type"] for a in refused} == {"forbidden_response_topic"}


def test_messager_response_topic_prefixes_config():
    cfg = MqttConfig(prefix="va")
    m = MqttMessager(cfg)
    assert m.response_topic_allowed("va/reply/cli-1") and not m.response_topic_allowed("va/reply/")
    assert not m.response_topic_allowed("va/status") and not m.response_topic_allowed("va/reply/+")
    m = MqttMessager(MqttConfig(prefix="va", response_topic_prefixes=["apps/answers/"]))
    assert m.response_topic_allowed("apps/answers/x") and not m.response_topic_allowed("va/reply/x")
    with pytest.raises(ValueError):
        MqttConfig(response_topic_prefixes=["a/#"])


# --- visual-agent ask --------------------------------------------------------------------------------------------


async def test_cli_ask_takes_only_its_own_answer_and_strips_terminal_escapes(tmp_path, running_mosquitto, topic_prefix):
    """A forger who sees the question answers first on the reply topic (no or wrong correlation data) with escape
    sequences; `ask` prints only the answer carrying its own correlation data, without terminal controls."""
    ask = f"{topic_prefix}/ask"
    daemon = PahoPeer(running_mosquitto.host, running_mosquitto.port)  # a stand-in daemon that also forges

    def on_message(client, userdata, msg) -> None:
        q = json.loads(msg.payload)
        reply, corr = msg.properties.ResponseTopic, msg.properties.CorrelationData

        def answer(text, correlation):
            body = json.dumps({"id": q["id"], "question": q["question"], "text": text, "error": None})
            daemon.publish(reply, body, correlation_data=correlation)

        answer("FORGED \x1b[2J\x1b]0;pwned\x07", None)
        answer("FORGED with a guess", q["id"].encode())
        answer("genuine \x1b[31mred\x1b[0m\x9b2J text", corr)

    daemon.client.on_message = on_message
    daemon.subscribe(ask)
    cfg = write_config(tmp_path / "a.yaml", {"mqtt": {"host": running_mosquitto.host, "port": running_mosquitto.port,
                                                      "prefix": topic_prefix}})
    try:
        rc, out, err = await run_cli("ask", "who?", "--config", str(cfg), "--timeout", "20")
    finally:
        daemon.close()
    assert (rc, out) == (0, "genuine red text\n"), (out, err)


# --- the embedded broker -----------------------------------------------------------------------------------------


def _client(port: int, *, username=None, password=None, will=None, client_id=None, clean=True) -> tuple[paho.Client, int]:
    """A 3.1.1 paho client (amqtt speaks 3.1.1); returns it and its CONNACK code (0 accepted)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv311, clean_session=clean)
    if username is not None:
        client.username_pw_set(username, password)
    if will:
        client.will_set(will, b"offline", qos=1, retain=True)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: codes.append(int(rc.value))
    client.on_disconnect = lambda c, u, f, rc, p: codes.append(-1) if not codes else None
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not codes and time.monotonic() < deadline:
        time.sleep(0.01)
    return client, (codes[0] if codes else -2)


def _stop(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


async def test_embedded_broker_only_the_daemon_publishes_status_and_answers():
    """Anyone local may connect (loopback, no password set) and ask, but publish nothing else under the prefix
    (answers, replies, status, Home Assistant's state topics, the rule set), nor leave a last will there; the
    daemon's own client (its per-start credential) may."""
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0)
    async with EmbeddedBroker.from_config(cfg) as broker:
        daemon_cfg = broker.daemon_client_config(MqttConfig(host="127.0.0.1", port=broker.port, prefix=PREFIX))
        async with MqttMessager(daemon_cfg, status_topic=f"{PREFIX}/status",
                                subscriptions=[f"{PREFIX}/status", f"{PREFIX}/answer/#", f"{PREFIX}/reply/#", f"{PREFIX}/door/#",
                                               f"{PREFIX}/probe", f"{PREFIX}/ask", f"{PREFIX}/rules/#"]) as daemon:
            assert (await daemon.next_message(5)).payload == b"online"  # its own status: allowed
            intruder, code = await asyncio.to_thread(_client, broker.port)
            assert code == 0
            for topic, payload in ((f"{PREFIX}/status", b"forged offline"), (f"{PREFIX}/answer", b'{"id":"x","text":"fake"}'),
                                   (f"{PREFIX}/reply/cli", b"fake"), (f"{PREFIX}/answer/partial", b"fake"),
                                   (f"{PREFIX}/door/state", b'{"text":"nobody there"}'),  # Home Assistant's sensor
                                   (f"{PREFIX}/door/description", b"fake"), (f"{PREFIX}/probe", b"fake"),
                                   (f"{PREFIX}/door/rules/person/event", b'{"state":"on"}'),  # a rule's state
                                   (f"{PREFIX}/rules/error", b"fake"),
                                   (f"{PREFIX}/rules/set", b"[]")):  # only the daemon or the operator (a password)
                intruder.publish(topic, payload, qos=1, retain=True)  # amqtt sends no PUBACK for a refused one
            # What others are meant to send: questions (also per source).
            # (Not `wait_for_publish(5)`: no PUBACK for these came after the refused ones, so each such wait ran out
            # its 5 s and returned silently, proving nothing; the daemon's receipt below is the proof of delivery.)
            for topic in (f"{PREFIX}/ask", f"{PREFIX}/door/ask"):
                intruder.publish(topic, b"allowed", qos=1)
                got = await daemon.next_message(5)
                assert (got.topic, got.payload) == (topic, b"allowed")  # nothing forged came before it
            await wait_until(lambda: broker.describe()["publish_denied"] == 10, what="10 refused publishes")
            await asyncio.to_thread(_stop, intruder)
            _, code = await asyncio.to_thread(_client, broker.port, will=f"{PREFIX}/status")
            assert code != 0  # a last will on our status topic is refused at CONNECT
        late, code = await asyncio.to_thread(_client, broker.port)
        got_status: list[bytes] = []
        late.on_message = lambda c, u, m: got_status.append(m.payload)
        late.subscribe(f"{PREFIX}/status", 1)
        await wait_until(lambda: bool(got_status), what="the retained status")
        assert set(got_status) == {b"offline"}  # the daemon's own (at its close, maybe its will too), not the forged one
        await asyncio.to_thread(_stop, late)


async def test_embedded_broker_daemon_client_id_cannot_be_taken_over():
    """amqtt takes a client id over before it checks the newcomer's credentials, and copies them onto the existing
    session: anyone who knew the daemon's client id (/healthz shows it) could disconnect the daemon, or leave its
    session with credentials that may not publish its answers. A newcomer with the daemon's id is refused and
    changes nothing, with a clean session or not."""
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0)
    async with EmbeddedBroker.from_config(cfg) as broker:
        daemon_cfg = broker.daemon_client_config(MqttConfig(host="127.0.0.1", port=broker.port, prefix=PREFIX,
                                                             client_id="va-daemon-known"))
        async with MqttMessager(daemon_cfg, subscriptions=[f"{PREFIX}/answer"]) as daemon:
            for clean in (True, False):
                intruder, code = await asyncio.to_thread(_client, broker.port, client_id="va-daemon-known", clean=clean)
                await asyncio.to_thread(_stop, intruder)
                assert code != 0, clean
            await daemon.publish(f"{PREFIX}/answer", b"still the daemon's", wait=True)
            assert (await daemon.next_message(5)).payload == b"still the daemon's"  # its subscription and rights kept
            assert daemon.stats.connects == 1 and broker.describe()["publish_denied"] == 0


async def test_embedded_broker_credentials():
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0, username="agent", password="s3cret-pw")
    async with EmbeddedBroker.from_config(cfg) as broker:
        for user, password, accepted in ((None, None, False), ("agent", "wrong", False), ("other", "s3cret-pw", False),
                                         ("agent", "s3cret-pw", True)):
            client, code = await asyncio.to_thread(_client, broker.port, username=user, password=password)
            await asyncio.to_thread(_stop, client)
            assert (code == 0) is accepted, (user, password, code)
        assert broker.describe()["auth_failures"] == 3 and "s3cret" not in repr(broker) + json.dumps(broker.describe())


async def test_embedded_broker_beyond_loopback_needs_a_password():
    with pytest.raises(EmbeddedBrokerError, match=r"0\.0\.0\.0.*mqtt\.username and mqtt\.password"):
        await EmbeddedBroker.from_config(MqttConfig(embedded_host="0.0.0.0", embedded_port=0)).start()
    cfg = MqttConfig(embedded_host="0.0.0.0", embedded_port=0, username="agent", password="pw")
    async with EmbeddedBroker.from_config(cfg) as broker:
        assert broker.port


async def test_cli_run_refuses_an_open_embedded_broker_beyond_loopback(tmp_path):
    cfg = write_config(tmp_path / "open.yaml", {"webrtc": {"port": 0}, "mqtt": {"embedded_host": "0.0.0.0", "embedded_port": 0}})
    rc, out, err = await run_cli("run", "--config", str(cfg), timeout=60)
    assert rc == 2 and "mqtt.username and mqtt.password" in err and "Traceback" not in err, (out, err)


async def test_embedded_broker_idle_connections_do_not_lock_clients_out():
    """260 TCP connections that never send CONNECT (more than the broker's 256 slots) are closed (the oldest silent
    ones for newcomers, the rest after the CONNECT timeout), so a real client still gets in."""
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0, embedded_connect_timeout_s=1)
    async with EmbeddedBroker.from_config(cfg) as broker:
        # from a thread: the broker runs on this loop and must accept them meanwhile
        idle = await asyncio.to_thread(lambda: [socket.create_connection(("127.0.0.1", broker.port)) for _ in range(260)])
        try:
            client = MqttConfig(host="127.0.0.1", port=broker.port, protocol="3.1.1", connect_timeout_s=20)
            async with MqttMessager(client) as m:
                assert m.connected
            state = broker.describe()  # closed for the client: evicted as the oldest silent ones, or timed out
            assert state["pending_evicted"] + state["connect_timeouts"] >= 1
        finally:
            for s in idle:
                s.close()


async def test_embedded_broker_bounds_retained_messages():
    """At most `embedded_max_retained` retained topics of at most `embedded_max_retained_bytes` each; the rest is
    delivered but not kept."""
    cfg = MqttConfig(prefix=PREFIX, embedded_port=0, embedded_max_retained=5, embedded_max_retained_bytes=1024)
    async with EmbeddedBroker.from_config(cfg) as broker:
        client = MqttConfig(host="127.0.0.1", port=broker.port, protocol="3.1.1")
        async with MqttMessager(client, subscriptions=["cap/#"]) as m:
            for i in range(10):
                await m.publish(f"cap/{i}", b"x" * 100, retain=True, wait=True)
            await m.publish("cap/big", b"y" * 2048, retain=True, wait=True)
            got = [await m.next_message(5) for _ in range(11)]
            assert got[-1].payload == b"y" * 2048  # delivered, just not retained
            await wait_until(lambda: broker.describe()["retain_refused"] == 6, what="6 refused retains")
            assert broker.describe()["retained"] == 5
            await m.publish("cap/0", b"replaced", retain=True, wait=True)  # a kept topic may be updated
            await m.next_message(5)
            assert broker.describe()["retain_refused"] == 6


async def test_embedded_broker_default_caps_keep_no_large_retains():
    """The finding: 100 retained 1 MB messages grew the daemon by 106 MB. With the defaults a client's packet is at
    most 256 KiB (tests/test_broker_limits.py) and a retained one at most 64 KiB (1000 topics: 64 MB at most): a
    128 KiB retained message is delivered and not kept."""
    async with EmbeddedBroker.from_config(MqttConfig(prefix=PREFIX, embedded_port=0)) as broker:
        client = MqttConfig(host="127.0.0.1", port=broker.port, protocol="3.1.1", max_payload_bytes=2 * 1024 * 1024)
        async with MqttMessager(client, subscriptions=["big/#"]) as m:
            for i in range(3):
                await m.publish(f"big/{i}", b"z" * (128 * 1024), retain=True, wait=True)
            assert [len((await m.next_message(10)).payload) for _ in range(3)] == [128 * 1024] * 3
        await wait_until(lambda: broker.describe()["retain_refused"] == 3, what="3 refused retains")
        assert broker.describe()["retained"] == 0


# --- mutual TLS ---------------------------------------------------------------------------------------------------


async def test_messager_mutual_tls_with_a_client_certificate(mosquitto_factory, broker_files):
    """mosquitto with `require_certificate true`: our client certificate (signed by a CA made here with
    `cryptography`) gets in; the same client without one is refused."""
    d = broker_files
    ca = TestCA(d)
    server_cert, server_key = ca.issue("server", ["127.0.0.1"])
    client_cert, client_key = ca.issue("client", ["visual-agent"], client=True)
    for f in d.iterdir():
        f.chmod(0o644)
    broker = mosquitto_factory(listener_extra=f"cafile {ca.pem}\ncertfile {server_cert}\nkeyfile {server_key}\n"
                                              "require_certificate true\n")
    tls = {"enabled": True, "ca_certs": str(ca.pem)}
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, tls={**tls, "certfile": str(client_cert), "keyfile": str(client_key)})
    async with MqttMessager(cfg, subscriptions=["mtls/in"]) as m:
        await m.publish("mtls/in", b"with a client certificate", wait=True)
        assert (await m.next_message(5)).payload == b"with a client certificate"
    m = MqttMessager(MqttConfig(host="127.0.0.1", port=broker.port, tls=tls, reconnect_min_s=5))
    with pytest.raises(MessagingError, match="cannot reach the MQTT broker"):
        await m.start(timeout=3)
    assert m.last_error and not m.connected
    await m.close()


# --- the mosquitto ACL that docs/SECURITY.md recommends -----------------------------------------------------------

NOT_AUTHORIZED = 0x87


def _documented_acl(prefix: str) -> str:
    """The `# /etc/mosquitto/acl` block of docs/SECURITY.md, for `prefix`: the test runs what the docs say."""
    doc = (Path(__file__).parent.parent / "docs" / "SECURITY.md").read_text()
    block = re.search(r"```\n(# /etc/mosquitto/acl\n.*?)```", doc, re.S)
    assert block, "docs/SECURITY.md has no mosquitto ACL block"
    return block.group(1).replace("visual_agent/", f"{prefix}/")


async def test_documented_mosquitto_acl_keeps_answers_to_their_askers(tmp_path, mosquitto_factory, broker_files,
                                                                       stub_llm, topic_prefix):
    """With the ACL from docs/SECURITY.md the daemon and `visual-agent ask` work, and another user of the same
    broker reads neither the status nor anyone's answers but its own, and cannot publish an answer or the status."""
    d = broker_files
    (d / "acl").write_text(_documented_acl(topic_prefix))
    users = {"visual-agent": "daemon-pw-1", "alice": "alice-pw-1", "mallory": "mallory-pw-1"}
    for i, (user, password) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(d / "passwd"), user, password],
                       check=True, capture_output=True)
    for f in d.iterdir():
        f.chmod(0o644)
    broker = mosquitto_factory(listener_extra=f"password_file {d}/passwd\nacl_file {d}/acl\n", anonymous=False)
    mqtt = {"host": broker.host, "port": broker.port, "prefix": topic_prefix}
    page_port = free_tcp_port()
    daemon_cfg = write_config(tmp_path / "d.yaml", {
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model", "max_retries": 0},
        "webrtc": {"port": page_port}, "agent": {"frame_wait_s": 0.2}, "mqtt": {**mqtt, "username": "visual-agent"}})
    alice_cfg = write_config(tmp_path / "a.yaml", {"mqtt": {**mqtt, "username": "alice"}})
    mallory = PahoPeer(broker.host, broker.port, username="mallory", password=users["mallory"])
    mine = f"{topic_prefix}/reply/{mallory.client._client_id.decode()}"
    try:
        mallory.subscribe("#")
        mallory.subscribe(f"{topic_prefix}/reply/#")
        async with daemon_process(daemon_cfg, page_port=page_port, log_path=tmp_path / "d.log",
                                  env={"VISUAL_AGENT__MQTT__PASSWORD": users["visual-agent"]}):
            deadline = time.monotonic() + 40
            while True:  # until the daemon has subscribed: a question before that is not kept
                rc, out, err = await run_cli("ask", "who is there?", "--config", str(alice_cfg), "--timeout", "5",
                                             "--json", env={"VISUAL_AGENT__MQTT__PASSWORD": users["alice"]})
                if rc != 3 or time.monotonic() > deadline:  # 3: no answer in time
                    break
            assert json.loads(out)["question"] == "who is there?", (rc, out, err)  # an answer (no_frame: no camera)
            # alice's answer went out before mallory's question: had mallory been able to read it, it came first
            mallory.publish(f"{topic_prefix}/ask", json.dumps({"id": "m", "question": "mine?"}), response_topic=mine,
                            correlation_data=b"m")
            seen = await asyncio.to_thread(mallory.until, mine, 30)
            assert [m.topic for m in seen if m.topic.startswith(f"{topic_prefix}/")] == [mine], [m.topic for m in seen]
            for topic, payload, retain in ((f"{topic_prefix}/status", b"offline", True),
                                           (f"{topic_prefix}/answer", b'{"id":"x","question":"q","text":"fake"}', False),
                                           (f"{topic_prefix}/reply/visual-agent-ask-00000000", b"fake", False)):
                assert mallory.puback(mallory.publish(topic, payload, retain=retain)) == NOT_AUTHORIZED, topic
    finally:
        mallory.close()
