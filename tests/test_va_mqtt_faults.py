"""No question lost across restarts and broker faults: `visual-agent run` as a subprocess against real mosquitto
(persistence on, restarted mid-test), with a local LLM HTTP server that answers, stalls or never answers on purpose.

What each test proves is in its docstring. The LLM is a STAND-IN (a local aiohttp server speaking the OpenAI chat
API): these tests are about MQTT delivery, not the model.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aiohttp
import pytest

from tests.fixtures.daemon import daemon_process, free_tcp_port
from tests.fixtures.mqtt import PahoPeer
from tests.mqtt_daemon import answers_on, kept_session_asker, looping_clip, mqtt_daemon_config, wait_status
from tests.waiting import wait_until
from visual_agent import MessagingError
from visual_agent.config import MqttConfig
from visual_agent.mqtt import MqttMessager

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]

NO_MATCHING_SUBSCRIBERS = 16


async def _health(page_url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(page_url + "/healthz") as r:
        return await r.json()


async def _until_health(page_url: str, pred, what: str, timeout: float = 20.0) -> dict:
    """The daemon's `/healthz` once `pred` holds for it."""
    last: dict = {}

    async def holds() -> bool:
        last.clear()
        last.update(await _health(page_url))
        return pred(last)

    await wait_until(holds, timeout, what=lambda: f"{what} in /healthz (broker: {last.get('broker')})", interval=0.05)
    return last


async def test_daemon_online_means_a_question_asked_at_once_is_answered(tmp_path, running_mosquitto, paho_peer,
                                                                         topic_prefix, stub_llm):
    """`online` is published only after the ask subscription's SUBACK: a client that asks the moment it sees `online`
    gets PUBACK 0 (not 16, "no matching subscribers") and an answer."""
    peer = paho_peer("5")
    status, ask, answer = f"{topic_prefix}/status", f"{topic_prefix}/ask", f"{topic_prefix}/answer"
    sent: list = []

    def on_message(client, userdata, msg) -> None:  # on paho's thread: asks with no delay at all
        if msg.topic == status and msg.payload == b"online" and not sent:
            sent.append(client.publish(ask, json.dumps({"id": "first", "question": "ready?"}), qos=1))
        peer.messages.put(msg)

    peer.client.on_message = on_message
    peer.subscribe(status)
    peer.subscribe(answer)
    page_port = free_tcp_port()
    cfg = mqtt_daemon_config(tmp_path, running_mosquitto, topic_prefix, page_port, stub_llm.base_url, agent={"frame_wait_s": 0.5})
    async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log") as daemon:
        got = await asyncio.to_thread(answers_on, peer, answer, {"first"})
        assert await asyncio.to_thread(peer.puback, sent[0]) == 0, daemon.log()
    assert [a["id"] for a in got] == ["first"]


async def test_daemon_fixed_client_id_answers_questions_asked_while_it_was_stopped(tmp_path, mosquitto_factory,
                                                                                   topic_prefix, stub_llm):
    """With `mqtt.client_id` the session outlives a clean stop (and a mosquitto restart with persistence on): the
    QoS-1 questions asked meanwhile are answered at the next start, each exactly once, with `queued_s`."""
    broker = mosquitto_factory()
    asker = kept_session_asker(broker, topic_prefix)
    try:
        answer, ask = f"{topic_prefix}/answer", f"{topic_prefix}/ask"
        page_port = free_tcp_port()
        cfg = mqtt_daemon_config(tmp_path, broker, topic_prefix, page_port, stub_llm.base_url, agent={"frame_wait_s": 0.2},
                      client_id=f"va-test-{uuid.uuid4().hex[:8]}")
        async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d1.log") as daemon:
            await wait_status(asker, b"online")
            assert await daemon.terminate() == 0, daemon.log()
        await wait_status(asker, b"offline")
        asked_at = time.time()
        infos = [asker.publish(ask, json.dumps({"id": f"q{i}", "question": "still there?", "asked_at": asked_at}))
                 for i in range(3)]
        assert [await asyncio.to_thread(asker.puback, i) for i in infos] == [0, 0, 0]  # the kept session takes them
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)  # the broker restores sessions and queued messages from its file
        await wait_until(asker.client.is_connected, 15, what="the asker reconnected")
        async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d2.log") as daemon:
            got = await asyncio.to_thread(answers_on, asker, answer, {"q0", "q1", "q2"})
            asker.publish(ask, json.dumps({"id": "after", "question": "and now?"}))
            got += await asyncio.to_thread(answers_on, asker, answer, {"after"})
            log = daemon.log()
        counts = {i: sum(1 for a in got if a["id"] == i) for i in ("q0", "q1", "q2", "after")}
        assert counts == {"q0": 1, "q1": 1, "q2": 1, "after": 1}, (counts, log)
        queued = [a for a in got if a["id"] != "after"]
        assert all(a["queued_s"] > 0 for a in queued), queued
        assert "queued_s" not in next(a for a in got if a["id"] == "after")
    finally:
        asker.close()


async def test_daemon_random_client_id_ends_its_session_on_a_clean_stop(tmp_path, running_mosquitto, paho_peer,
                                                                        topic_prefix, stub_llm):
    """Without `mqtt.client_id` a clean stop ends the session: no orphan subscription keeps taking questions."""
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/status")
    page_port = free_tcp_port()
    cfg = mqtt_daemon_config(tmp_path, running_mosquitto, topic_prefix, page_port, stub_llm.base_url)
    async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log") as daemon:
        await wait_status(peer, b"online")
        assert await daemon.terminate() == 0, daemon.log()
    info = peer.publish(f"{topic_prefix}/ask", b"anyone?")
    assert await asyncio.to_thread(peer.puback, info) == NO_MATCHING_SUBSCRIBERS


async def test_messager_311_with_random_id_uses_a_clean_session(running_mosquitto, paho_peer, topic_prefix):
    """MQTT 3.1.1 with a random client id: clean session, so a stop leaves no orphan subscription behind."""
    topic = f"{topic_prefix}/ask"
    m = MqttMessager(MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port, protocol="3.1.1"),
                     subscriptions=[topic])
    await m.start()
    await m.close()
    peer = paho_peer("5")
    assert await asyncio.to_thread(peer.puback, peer.publish(topic, b"anyone?")) == NO_MATCHING_SUBSCRIBERS


async def test_daemon_starts_without_broker_and_connects_when_it_appears(tmp_path, mosquitto_factory, topic_prefix, stub_llm):
    """Broker down at start: the page is served, /healthz says the broker is not connected; when mosquitto comes up
    the daemon connects, says `online` and answers."""
    broker = mosquitto_factory()
    await asyncio.to_thread(broker.stop)
    page_port = free_tcp_port()
    cfg = mqtt_daemon_config(tmp_path, broker, topic_prefix, page_port, stub_llm.base_url, agent={"frame_wait_s": 0.2})
    async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log") as daemon:
        health = await _until_health(daemon.page_url, lambda h: "broker" in h, "the broker state")
        assert health["broker"]["state"] == "connecting" and health["broker"]["last_error"], health["broker"]
        await asyncio.to_thread(broker.start)
        peer = PahoPeer(broker.host, broker.port)
        try:
            peer.subscribe(f"{topic_prefix}/status")
            peer.subscribe(f"{topic_prefix}/answer")
            await wait_status(peer, b"online")
            peer.publish(f"{topic_prefix}/ask", json.dumps({"id": "late", "question": "up?"}))
            got = await asyncio.to_thread(answers_on, peer, f"{topic_prefix}/answer", {"late"})
        finally:
            peer.close()
    assert [a["id"] for a in got] == ["late"]


async def test_daemon_broker_restart_mid_stream_keeps_questions_and_bounds_the_outbox(tmp_path, mosquitto_factory,
                                                                                     topic_prefix, held_llm):
    """Broker restarted while three answers are being made: the daemon reconnects and says `online` again; answers
    made while offline go out after the reconnect up to `mqtt.outbox_max` (2), the rest is counted in /healthz; a
    question asked while the broker was down is answered (none lost)."""
    broker = mosquitto_factory()
    asker = kept_session_asker(broker, topic_prefix)
    try:
        answer, ask = f"{topic_prefix}/answer", f"{topic_prefix}/ask"
        page_port = free_tcp_port()
        cfg = mqtt_daemon_config(tmp_path, broker, topic_prefix, page_port, held_llm.base_url, sources=looping_clip(tmp_path),
                      outbox_max=2, client_id=f"va-test-{uuid.uuid4().hex[:8]}")
        async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log") as daemon:
            await wait_status(asker, b"online")
            for i in range(3):
                asker.publish(ask, json.dumps({"id": f"m{i}", "question": "what now?", "source": "cam"}))
            await held_llm.wait_requests(3)
            await asyncio.to_thread(broker.stop)
            await _until_health(daemon.page_url, lambda h: h.get("broker", {}).get("state") not in (None, "connected"), "the disconnect")
            asker.publish(ask, json.dumps({"id": "while-down", "question": "and this?", "source": "cam"}))  # queued by paho
            held_llm.release()
            await _until_health(daemon.page_url, lambda h: h.get("broker", {}).get("outbox_dropped") == 1, "one answer dropped")
            await asyncio.to_thread(broker.start)
            await wait_status(asker, b"online")
            got = await asyncio.to_thread(answers_on, asker, answer, {"while-down"})
            health = await _health(daemon.page_url)
            log = daemon.log()
        delivered = sorted(a["id"] for a in got if a["id"].startswith("m"))
        assert len(delivered) == 2 and set(delivered) <= {"m0", "m1", "m2"}, (delivered, log)
        assert health["broker"]["outbox_dropped"] == 1 and health["broker"]["connects"] >= 2, health["broker"]
        assert "outbox full" in log
    finally:
        asker.close()


async def test_daemon_sigterm_during_llm_call_answers_shutdown_and_says_offline(tmp_path, running_mosquitto, paho_peer,
                                                                                topic_prefix, held_llm):
    """SIGTERM while the LLM holds a question: the question gets a `shutdown` error answer, `offline` is published
    and the process exits 0 within the grace period."""
    peer = paho_peer("5")
    answer, status = f"{topic_prefix}/answer", f"{topic_prefix}/status"
    peer.subscribe(answer)
    peer.subscribe(status)
    page_port = free_tcp_port()
    grace = 1.0
    cfg = mqtt_daemon_config(tmp_path, running_mosquitto, topic_prefix, page_port, held_llm.base_url,
                  sources=looping_clip(tmp_path), agent={"shutdown_grace_s": grace})
    async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d.log") as daemon:
        await wait_status(peer, b"online")
        peer.publish(f"{topic_prefix}/ask", json.dumps({"id": "inflight", "question": "slow?", "source": "cam"}))
        await held_llm.wait_requests(1)
        code = await daemon.terminate(timeout=grace + 15)
        seen = await asyncio.to_thread(peer.until, status, 10)
        log = daemon.log()
    final = [json.loads(m.payload) for m in seen if m.topic == answer]
    assert code == 0, log
    assert [(a["id"], a["error"]["type"]) for a in final] == [("inflight", "shutdown")], (final, log)
    assert seen[-1].payload == b"offline"



async def test_messager_refused_subscription_means_no_online():
    """A broker ACL that refuses the ask subscription (amqtt's own topic ACL plugin; mosquitto 2.0.11 grants a denied
    subscription and then delivers nothing): the messager does not say `online`, since it cannot take questions,
    says why in `last_error`, and keeps retrying with backoff."""
    from amqtt.broker import Broker

    port = free_tcp_port()
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
                    "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {"acl": {"anonymous": ["open/#"]}}},
    })
    await broker.start()
    try:
        cfg = MqttConfig(host="127.0.0.1", port=port, protocol="3.1.1", reconnect_min_s=0.1, reconnect_max_s=0.2)
        async with MqttMessager(cfg, subscriptions=["open/status"]) as watcher:
            m = MqttMessager(cfg, subscriptions=["closed/ask"], status_topic="open/status")
            with pytest.raises(MessagingError, match="refused the subscription to closed/ask"):
                await m.start(timeout=3)
            assert not m.connected and m.stats.connects >= 2  # it retried
            await m.close(publish_offline=False)
            await watcher.publish("open/status", b"marker", wait=True)
            seen = [(await watcher.next_message(10)).payload]
            while seen[-1] != b"marker":
                seen.append((await watcher.next_message(10)).payload)
            assert b"online" not in seen, seen  # the refused messager never said `online` (its will: offline)
            ok = MqttMessager(cfg, subscriptions=["open/ask"], status_topic="open/status")
            await ok.start(timeout=5)
            assert (await watcher.next_message(10)).payload == b"online"
            await ok.close()
    finally:
        await broker.shutdown()


def test_question_asked_at_is_checked_and_answers_carry_queued_s():
    from visual_agent.errors import QuestionError
    from visual_agent.messages import Answer, parse_question

    q = parse_question(b'{"id": 1, "question": "hi", "asked_at": 1700000000.5}', max_bytes=4096, max_chars=100, max_frames=4)
    assert q.asked_at == 1700000000.5
    for bad in ('"yesterday"', "-1", "true", "1e999"):
        with pytest.raises(QuestionError, match="asked_at"):
            parse_question(f'{{"id": 2, "question": "hi", "asked_at": {bad}}}', max_bytes=4096, max_chars=100, max_frames=4)
    assert "queued_s" not in Answer(id=1, question="hi").as_dict()
    assert Answer(id=1, question="hi", queued_s=2.34567).as_dict()["queued_s"] == 2.346
