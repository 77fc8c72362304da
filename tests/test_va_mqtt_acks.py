"""A question is acknowledged to the broker (PUBACK) only once it is dealt with, in the order the questions came.

Against real mosquitto: a daemon with a kept session (fixed `mqtt.client_id`) killed with SIGKILL while the LLM
holds a question answers it after its restart, exactly once; PUBACKs leave in arrival order (seen in mosquitto's
debug log) when the messages are settled out of order; `ReleaseQueue` as a unit. The LLM is a STAND-IN (`HeldLLM`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid

import pytest

from providers import create_provider
from tests.fixtures.daemon import daemon_process, free_tcp_port
from tests.fixtures.mqtt import PahoPeer
from tests.mqtt_daemon import answers_on, kept_session_asker, looping_clip, mqtt_daemon_config, wait_status
from tests.waiting import wait_until
from visual_agent.agent import VisualAgent
from visual_agent.config import AgentConfig, MqttConfig
from visual_agent.intakes import serve
from visual_agent.mqtt import MqttMessager
from visual_agent.mqtt_acks import ReleaseQueue
from visual_agent.topics import Topics

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(120)]


async def test_daemon_killed_during_an_llm_call_answers_that_question_after_its_restart(tmp_path, mosquitto_factory,
                                                                                      topic_prefix, held_llm):
    """SIGKILL while the LLM holds a question: the question was never acknowledged, so the broker keeps it in the
    daemon's session and hands it to the restarted daemon (DUP set), which answers it exactly once."""
    broker = mosquitto_factory()
    asker = kept_session_asker(broker, topic_prefix)
    try:
        answer, ask = f"{topic_prefix}/answer", f"{topic_prefix}/ask"
        page_port = free_tcp_port()
        cfg = mqtt_daemon_config(tmp_path, broker, topic_prefix, page_port, held_llm.base_url, sources=looping_clip(tmp_path),
                      client_id=f"va-test-{uuid.uuid4().hex[:8]}")
        async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d1.log") as daemon:
            await wait_status(asker, b"online")
            asker.publish(ask, json.dumps({"id": "killed", "question": "what now?", "source": "cam"}))
            await held_llm.wait_requests(1)
            daemon.proc.kill()
            await daemon.proc.wait()
        await wait_status(asker, b"offline")  # the last will
        held_llm.release()
        async with daemon_process(cfg, page_port=page_port, log_path=tmp_path / "d2.log") as daemon:
            got = await asyncio.to_thread(answers_on, asker, answer, {"killed"})
            asker.publish(ask, json.dumps({"id": "after", "question": "and now?", "source": "cam"}))
            got += await asyncio.to_thread(answers_on, asker, answer, {"after"})
            log = daemon.log()
        counts = {i: sum(1 for a in got if a["id"] == i) for i in ("killed", "after")}
        assert counts == {"killed": 1, "after": 1}, (counts, log)
        killed = next(a for a in got if a["id"] == "killed")
        assert killed["error"] is None and killed["text"] == "held answer", killed
    finally:
        asker.close()


_SENT = re.compile(r"Sending PUBLISH to (\S+) \(d\d, q1, r\d, m(\d+), '([^']*)'")
_PUBACK = re.compile(r"Received PUBACK from (\S+) \(Mid: (\d+)")


async def test_messager_pubacks_leave_in_arrival_order_when_settled_out_of_order(mosquitto_factory, topic_prefix):
    """Three questions settled last-first: mosquitto's debug log shows no PUBACK before the first is settled, and
    then the three PUBACKs in the order mosquitto sent the messages."""
    broker = mosquitto_factory(listener_extra="log_type debug\n")
    topic = f"{topic_prefix}/ask"
    m = MqttMessager(MqttConfig(host=broker.host, port=broker.port), subscriptions=[topic], settle_by_consumer=True)
    peer = PahoPeer(broker.host, broker.port)
    await m.start()
    try:
        for i in range(3):
            peer.publish(topic, f"q{i}".encode())
        got = [await m.next_message(10) for _ in range(3)]
        assert [g.payload for g in got] == [b"q0", b"q1", b"q2"]
        got[2].settle()
        got[1].settle()
        peer.publish(topic, b"probe")  # a round trip through mosquitto after the two settles
        probe = await m.next_message(10)
        assert _pubacks(broker, m.client_id) == [], "acknowledged before the first message was settled"
        got[0].settle()
        probe.settle()
        await wait_until(lambda: len(_pubacks(broker, m.client_id)) == 4, timeout=10, what="four PUBACKs")
        sent = [int(mid) for who, mid, t in _SENT.findall(broker.log.read_text()) if who == m.client_id and t == topic]
        assert _pubacks(broker, m.client_id) == sent, broker.log.read_text()[-3000:]
    finally:
        peer.close()
        await m.close()


def _pubacks(broker, client_id: str) -> list[int]:
    return [int(mid) for who, mid in _PUBACK.findall(broker.log.read_text()) if who == client_id]


def test_release_queue_acks_the_head_run_in_arrival_order():
    acked: list[int] = []
    queue = ReleaseQueue(lambda mid, qos: acked.append(mid) or True)
    a, b, c = (queue.arrived(mid, 1, dup=False) for mid in (5, 6, 7))
    assert a and b and c
    c()
    b()
    assert acked == []
    a()
    assert acked == [5, 6, 7]
    assert queue.arrived(9, 0, dup=False) is not None and len(queue) == 0  # QoS 0: nothing to acknowledge
    a()  # settling twice does nothing
    assert acked == [5, 6, 7]
    d = queue.arrived(8, 1, dup=False)
    assert d and queue.arrived(8, 1, dup=True) is None  # resent on the same connection: not new, one place
    d()
    assert acked == [5, 6, 7, 8] and len(queue) == 0


def test_release_queue_after_a_reconnect_acks_in_the_order_of_the_redeliveries():
    """A kept session: un-acknowledged messages come again (DUP) on the new connection; each takes the place of its
    redelivery, and a redelivered copy is not handed out a second time."""
    acked: list[int] = []
    queue = ReleaseQueue(lambda mid, qos: acked.append(mid) or True)
    first, second = queue.arrived(1, 1, dup=False), queue.arrived(2, 1, dup=False)
    assert first and second
    queue.reconnected(session_present=True)
    second()
    assert acked == []
    assert queue.arrived(2, 1, dup=True) is None  # the original is still being handled: this copy is not new
    assert acked == [2]
    assert queue.arrived(1, 1, dup=True) is None
    first()
    assert acked == [2, 1]
    lost = queue.arrived(3, 1, dup=False)
    assert lost
    queue.reconnected(session_present=False)  # a new session: the broker forgot message 3
    lost()
    assert acked == [2, 1] and len(queue) == 0


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_messager_replica_in_a_shared_group_starts_a_clean_session(mosquitto_factory, protocol):
    """A replica (`mqtt.shared_group`, its session ending with the connection) connects with clean start, so a broker
    that hands a dead member's unacknowledged share to the others (EMQX, HiveMQ) may; a lone daemon with a fixed id
    resumes its session (mosquitto's log: `c1` / `c0`)."""
    broker = mosquitto_factory(listener_extra="log_type debug\n")
    for group, clean in (("replicas", "c1"), (None, "c0")):
        client_id = f"va-{uuid.uuid4().hex[:8]}"
        cfg = MqttConfig(host=broker.host, port=broker.port, protocol=protocol, client_id=client_id, shared_group=group)
        async with MqttMessager(cfg.for_client(), settle_by_consumer=True):
            pass
        seen = re.findall(rf"as {client_id} \(p\d, (c\d)", broker.log.read_text())
        assert seen == [clean], (group, seen)


async def test_mqtt_intake_settles_what_is_not_a_question_so_nothing_waits_behind_it(running_mosquitto, paho_peer,
                                                                                  topic_prefix, stub_llm):
    """A bad payload is settled when its error answer is out, a question when its answer is: each acknowledged, and
    the bad one first (it arrived first), so it never holds the question's acknowledgement back."""
    peer = paho_peer("5")
    t = Topics(topic_prefix)
    peer.subscribe(t.answer)
    llm = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model", "max_retries": 0})
    messager = MqttMessager(MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port), settle_by_consumer=True)
    await messager.start()
    agent = VisualAgent(llm=llm, messager=messager, prefix=topic_prefix, provider_name="openai",
                        config=AgentConfig(frame_wait_s=0.1))
    async with contextlib.AsyncExitStack() as stack:
        await serve(stack, agent)
        try:
            peer.publish(t.ask, b"{not json")
            peer.publish(t.ask, json.dumps({"id": "q", "question": "anyone?"}))
            got = [json.loads((await asyncio.to_thread(peer.get, 10, t.answer)).payload) for _ in range(2)]
            await wait_until(lambda: messager.describe()["unacknowledged"] == 0, what="both acknowledged")
        finally:
            await stack.aclose()
            await messager.close()
            await llm.aclose()
    assert [a["error"]["type"] for a in got if a["id"] != "q"] == ["bad_payload"], got
    assert [a["id"] for a in got].count("q") == 1
    assert messager.stats.received == 2
