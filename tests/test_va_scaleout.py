"""Many daemons on one broker: `<prefix>/<source>/ask` reaches the daemon holding the source, and replicas holding
the same source share its questions with `mqtt.shared_group`, each answered once, none lost when one is killed.

Real parts: mosquitto, `visual-agent run` subprocesses, aiortc cameras publishing to each daemon's page; the LLM is
the stand-in server (which daemon answers is the point, not the model).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from providers import create_provider
from tests.fixtures.daemon import daemon_config, daemon_process, free_tcp_port, wait_frames, write_config
from tests.fixtures.frames import Buffers, solid
from tests.fixtures.mqtt import answers_by_id
from tests.fixtures.webrtc import CounterVideoTrack, publish
from tests.metrics_scrape import scrape, value
from tests.waiting import wait_until
from visual_agent.agent import VisualAgent
from visual_agent.config import AgentConfig, MqttConfig
from visual_agent.mqtt import MqttMessager

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(240)]


def replica_config(tmp_path, name: str, *, mosquitto, prefix: str, llm_url: str, group: str | None = None):
    page_port = free_tcp_port()
    cfg = daemon_config(tmp_path, llm={"provider": "openai", "base_url": llm_url, "model_name": "stub-model"},
                        mosquitto=mosquitto, prefix=prefix, page_port=page_port, max_in_flight=16)
    if group:
        cfg["mqtt"]["shared_group"] = group
    return write_config(tmp_path / f"{name}.yaml", cfg), page_port


@contextlib.asynccontextmanager
async def daemon_with_camera(tmp_path, name: str, source: str, **kw):
    config, page_port = replica_config(tmp_path, name, **kw)
    async with daemon_process(config, page_port=page_port, log_path=tmp_path / f"{name}.log") as daemon:
        async with publish(daemon.page_url, CounterVideoTrack(160, 120, 15), source=source):
            await wait_frames(daemon.page_url, source)
            await wait_subscribed(daemon)
            yield daemon


async def wait_subscribed(daemon, timeout: float = 10.0) -> None:
    """Until the daemon's log says it takes questions on its source's topic (checked every SOURCE_CHECK_S)."""
    await wait_until(lambda: "agent: taking questions about" in daemon.log(), timeout, interval=0.05,
                     what=lambda: f"the daemon taking questions on its source's topic; its log:\n{daemon.log()}")


def mqtt_questions(daemon) -> float:
    return value(scrape(daemon.page_url + "/metrics"), "visual_agent_questions_total", via="mqtt")


async def test_scaleout_each_source_topic_reaches_the_daemon_holding_it(tmp_path, running_mosquitto, paho_peer,
                                                                        topic_prefix, stub_llm):
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/answer")
    kw = dict(mosquitto=running_mosquitto, prefix=topic_prefix, llm_url=stub_llm.base_url)
    async with daemon_with_camera(tmp_path, "a", "cam-a", **kw) as a, daemon_with_camera(tmp_path, "b", "cam-b", **kw) as b:
        ids = set()
        for i in range(4):
            for source in ("cam-a", "cam-b"):
                qid = f"{source}-{i}"
                ids.add(qid)
                # the topic's source wins over a payload that names another
                peer.publish(f"{topic_prefix}/{source}/ask", json.dumps({"id": qid, "question": "what?", "source": "x"}))
        got = await answers_by_id(peer, ids)
        counts = await asyncio.to_thread(lambda: (mqtt_questions(a), mqtt_questions(b)))
    for qid, answer in got.items():
        assert answer["error"] is None and answer["source"] == qid.rsplit("-", 1)[0], answer
    assert counts == (4, 4)  # each daemon took exactly its own source's questions, none twice


async def test_scaleout_replicas_share_a_source_and_survive_a_kill(tmp_path, running_mosquitto, paho_peer,
                                                                   topic_prefix, stub_llm):
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/answer")
    kw = dict(mosquitto=running_mosquitto, prefix=topic_prefix, llm_url=stub_llm.base_url, group="replicas")
    async with daemon_with_camera(tmp_path, "r1", "cam", **kw) as r1, daemon_with_camera(tmp_path, "r2", "cam", **kw) as r2:
        first = {f"q1-{i}" for i in range(10)}
        for qid in sorted(first):
            peer.publish(f"{topic_prefix}/cam/ask", json.dumps({"id": qid, "question": "what?"}))
        got = await answers_by_id(peer, first)
        shares = await asyncio.to_thread(lambda: (mqtt_questions(r1), mqtt_questions(r2)))
        assert sum(shares) == 10 and min(shares) > 0, shares  # shared, each once
        r1.proc.kill()  # no DISCONNECT, no offline grace: the broker sees the socket close
        await r1.proc.wait()
        second = {f"q2-{i}" for i in range(10)}
        for qid in sorted(second):
            peer.publish(f"{topic_prefix}/cam/ask", json.dumps({"id": qid, "question": "still there?"}))
        got |= await answers_by_id(peer, second)
        r2_after = await asyncio.to_thread(mqtt_questions, r2)
    assert all(a["error"] is None and a["source"] == "cam" for a in got.values())
    assert r2_after - shares[1] == 10  # the survivor took every question after the kill


async def test_scaleout_source_topic_follows_the_source(running_mosquitto, paho_peer, topic_prefix, stub_llm):
    """Subscribed when a source appears, unsubscribed when it goes (in-process agent, plain FrameBuffers)."""
    from visual_agent.intakes import serve
    from visual_agent.mqtt_intake import MqttQuestions

    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/answer")
    driver = Buffers()
    llm = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model"})
    messager = MqttMessager(MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port))
    await messager.start()
    agent = VisualAgent(llm=llm, messager=messager, webrtc_driver=driver, config=AgentConfig(), prefix=topic_prefix)
    stack = contextlib.AsyncExitStack()
    intake: MqttQuestions | None = (await serve(stack, agent)).mqtt
    assert intake is not None

    try:
        from webrtc import FrameBuffer

        driver.buffers["door"] = FrameBuffer("door")
        driver.buffers["door"].put(solid(80))
        await wait_until(lambda: "door" in intake.source_topics, 5, what="door's topic subscribed")
        peer.publish(f"{topic_prefix}/door/ask", json.dumps({"id": "d-1", "question": "open?"}))
        assert (await answers_by_id(peer, {"d-1"}))["d-1"]["source"] == "door"
        del driver.buffers["door"]
        await wait_until(lambda: "door" not in intake.source_topics, 5, what="door's topic dropped")
        before = agent.counters.copy()
        peer.publish(f"{topic_prefix}/door/ask", json.dumps({"id": "d-2", "question": "anyone?"}))
        # a sentinel on <prefix>/ask from the same publisher arrives after it: by its answer, d-2 would have been taken
        peer.publish(f"{topic_prefix}/ask", json.dumps({"id": "sentinel", "question": "and now?", "source": "door"}))
        got = await answers_by_id(peer, {"sentinel"})
        assert got["sentinel"]["error"]["type"] == "unknown_source"
        assert agent.counters - before == {"errors.unknown_source": 1}  # d-2 reached nobody
    finally:
        await agent.drain(0.5)
        await stack.aclose()
        await messager.close()
        await llm.aclose()
    assert messager._subscriptions == [f"{topic_prefix}/ask"]


def test_scaleout_topics_and_shared_session():
    from visual_agent.topics import Topics

    t = Topics("va")
    assert t.source_ask("cam") == "va/cam/ask"
    assert t.source_ask_subscription("cam", "g") == "$share/g/va/cam/ask"
    assert t.source_of_ask("va/cam/ask") == "cam"
    for other in ("va/ask", "va/a/b/ask", "vb/cam/ask", "va/cam/answer", "va//ask"):
        assert t.source_of_ask(other) is None, other
    # a replica in a shared group ends its session with its connection (its share goes to the live ones) ...
    assert MqttConfig(host="h", shared_group="g").for_client().session_expiry_s == 0
    # ... unless the config says otherwise; without a group the session outlives a broker restart
    assert MqttConfig(host="h", shared_group="g", session_expiry_s=60).for_client().session_expiry_s == 60
    from visual_agent.config import DEFAULT_SESSION_EXPIRY_S

    assert MqttConfig(host="h").for_client().session_expiry_s == DEFAULT_SESSION_EXPIRY_S > 0
