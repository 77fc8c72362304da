"""VisualAgent with real peers: mosquitto, the WebRTC ingest server with an aiortc publisher streaming a generated
video, the OpenAI-compatible provider. The LLM here is the STAND-IN server of tests/fixtures/llm_stub.py (answers at
once, can be slowed or fail), because these tests are about the agent's contract; test_va_e2e.py uses real vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest

from providers import create_provider
from tests.agents import running_agent
from tests.fixtures.frames import Buffers, solid
from tests.fixtures.webrtc import CounterVideoTrack, publish
from tests.ports import free_tcp_port
from tests.waiting import wait_until
from visual_agent.agent import VisualAgent
from visual_agent.config import AgentConfig, MqttConfig
from visual_agent.intakes import serve
from visual_agent.mqtt import MqttMessager
from visual_agent.mqtt_intake import MqttQuestions
from visual_agent.topics import Topics

pytestmark = [pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(90)]


@contextlib.asynccontextmanager
async def streaming_publisher(server, source="cam", width=320, height=240):
    async with publish(server.url, CounterVideoTrack(width, height, 30), source=source) as pub:
        await wait_until(lambda: source in server.source_names() and len(server.get_buffer(source)) >= 5, timeout=15,
                         what=f"5 frames of {source} in the buffer (so a question for k frames finds k)")
        yield pub


def answers(peer, n, topic, timeout=10.0):
    out = []
    for _ in range(n):
        out.append(json.loads(peer.get(timeout, topic=topic).payload))
    return out


async def test_agent_mqtt_answer_has_id_frames_and_fresh_ages(running_mosquitto, paho_peer, topic_prefix, webrtc_server, stub_llm):
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    async with streaming_publisher(webrtc_server), running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix):
        peer.publish(t["ask"], json.dumps({"id": "q-1", "question": "what is there?", "frames": 3}))
        (answer,) = await asyncio.to_thread(answers, peer, 1, t["answer"])
    assert answer["id"] == "q-1" and answer["error"] is None and answer["text"] == stub_llm.reply
    assert answer["source"] == "cam" and answer["model"] == "stub-model" and answer["provider"] == "openai"
    assert len(answer["frames"]) == 3 and stub_llm.images_in_last_request() == 3
    assert all(isinstance(f["pts"], int) for f in answer["frames"])
    # frames spread over the window, newest last: the newest was taken fresh (under two 30-fps frame intervals)
    assert answer["frames"][-1]["age_s"] < 2 / 30 + 0.05 and answer["frames"][0]["age_s"] > answer["frames"][-1]["age_s"]
    assert 0 < answer["latency_s"] < 5


async def test_agent_bad_input_gets_error_answers_and_keeps_running(running_mosquitto, paho_peer, topic_prefix, webrtc_server, stub_llm):
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    async with streaming_publisher(webrtc_server), running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix):
        bad = [
            (b"\xff\xfe not utf-8", None, "bad_payload"),
            (b"x" * 5000, None, "bad_payload"),
            (json.dumps({"id": "b3", "question": ["not", "text"]}).encode(), "b3", "bad_payload"),
            (json.dumps({"id": "b4", "question": "hi", "colour": "red"}).encode(), "b4", "bad_payload"),
            (json.dumps({"id": "b5", "question": "hi", "source": "no-such-camera"}).encode(), "b5", "unknown_source"),
            (json.dumps({"id": "b6", "question": "  "}).encode(), "b6", "empty_question"),
            (b'{"id": "b7", "question": ', None, "bad_payload"),
        ]
        for payload, _, _ in bad:
            peer.publish(t["ask"], payload)
        got = await asyncio.to_thread(answers, peer, len(bad), t["answer"])
        peer.publish(t["ask"], b"and now a good question")
        (good,) = await asyncio.to_thread(answers, peer, 1, t["answer"])
    # parse errors are answered at once, the unknown source after a task switch: compare without order
    assert sorted(a["error"]["type"] for a in got) == sorted(kind for _, _, kind in bad)
    by_id = {a["id"]: a for a in got}
    for qid, kind in [(qid, kind) for _, qid, kind in bad if qid is not None]:
        assert by_id[qid]["error"]["type"] == kind and by_id[qid]["text"] == "" and by_id[qid]["error"]["message"]
    assert all(a["error"]["message"] and isinstance(a["id"], str) and a["id"] for a in got)
    assert "no-such-camera" in by_id["b5"]["error"]["message"] and "cam" in by_id["b5"]["error"]["message"]
    assert good["error"] is None and good["question"] == "and now a good question"


async def test_agent_streams_partials_before_the_answer_and_remembers(running_mosquitto, paho_peer, topic_prefix, webrtc_server, stub_llm):
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(f"{topic_prefix}/answer/#")  # answers and partials (and `answer` itself), in arrival order
    stub_llm.reply = "one two three four"
    async with streaming_publisher(webrtc_server), running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix) as agent:
        peer.publish(t["ask"], json.dumps({"id": "s1", "question": "count", "stream": True, "conversation": "c"}))
        seen = []
        while not seen or seen[-1][0] != t["answer"]:
            m = await asyncio.to_thread(peer.get, 10)
            seen.append((m.topic, json.loads(m.payload)))
        peer.publish(t["ask"], json.dumps({"id": "s2", "question": "and then?", "conversation": "c"}))
        assert json.loads((await asyncio.to_thread(peer.get, 10, t["answer"])).payload)["id"] == "s2"
        assert agent.history("cam", "c", "mqtt")[-2:] == [("count", "one two three four"), ("and then?", "one two three four")]
    partials = [p for topic, p in seen if topic == t["partial"]]
    assert [p["seq"] for p in partials] == list(range(1, len(partials) + 1)) and len(partials) == 4
    assert "".join(p["delta"] for p in partials) == seen[-1][1]["text"] == "one two three four"
    assert all(p["id"] == "s1" for p in partials)
    follow_up = stub_llm.requests[-1]["messages"]
    assert [m["role"] for m in follow_up] == ["system", "user", "assistant", "user"] and follow_up[1]["content"] == "count"


async def test_agent_mqtt5_response_topic_and_correlation(running_mosquitto, paho_peer, topic_prefix, webrtc_server, stub_llm):
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    mine = f"{topic_prefix}/reply/me"
    peer.subscribe(mine)
    async with streaming_publisher(webrtc_server), running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix):
        peer.publish(t["ask"], b"what is there?", response_topic=mine, correlation_data=b"corr-42")
        msg = await asyncio.to_thread(peer.get, 10, mine)
    assert msg.properties.CorrelationData == b"corr-42" and json.loads(msg.payload)["error"] is None


async def test_agent_busy_beyond_max_in_flight(running_mosquitto, paho_peer, topic_prefix, webrtc_server, stub_llm):
    """One slot and one waiting place per asker: the second question waits its turn, the third gets `busy`."""
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    stub_llm.delay_s = 1.0
    async with streaming_publisher(webrtc_server), running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix,
                                                                 max_in_flight=1, max_queued_per_asker=1):
        for i in range(3):
            peer.publish(t["ask"], json.dumps({"id": f"c{i}", "question": "slow?"}))
        got = await asyncio.to_thread(answers, peer, 3, t["answer"])
    by_id = {a["id"]: a for a in got}
    assert set(by_id) == {"c0", "c1", "c2"}
    assert by_id["c0"]["error"] is None and by_id["c1"]["error"] is None
    assert by_id["c2"]["error"]["type"] == "busy" and "agent.max_queued_per_asker" in by_id["c2"]["error"]["message"]


async def test_agent_timeout_and_unreachable_llm(running_mosquitto, paho_peer, topic_prefix, webrtc_server, stub_llm):
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    stub_llm.delay_s = 3.0
    async with streaming_publisher(webrtc_server):
        async with running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix, question_timeout_s=0.5):
            peer.publish(t["ask"], json.dumps({"id": "slow", "question": "?"}))
            (slow,) = await asyncio.to_thread(answers, peer, 1, t["answer"])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # bound, not listening: connection refused
            async with running_agent(running_mosquitto, webrtc_server, dead, topic_prefix):
                peer.publish(t["ask"], json.dumps({"id": "down", "question": "?"}))
                (down,) = await asyncio.to_thread(answers, peer, 1, t["answer"])
    # Answered at the deadline, not when the stand-in finally replied.
    assert slow["id"] == "slow" and slow["error"]["type"] == "timeout" and 0.5 <= slow["latency_s"] < stub_llm.delay_s
    assert down["id"] == "down" and down["error"]["type"] == "llm_unreachable" and "127.0.0.1" in down["error"]["message"]


async def test_agent_no_frame_yet(running_mosquitto, paho_peer, topic_prefix, webrtc_server, stub_llm):
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    async with running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix, frame_wait_s=0.2):
        peer.publish(t["ask"], json.dumps({"id": "n1", "question": "anything?"}))
        (a,) = await asyncio.to_thread(answers, peer, 1, t["answer"])
    assert a["id"] == "n1" and a["error"]["type"] == "no_frame"


async def test_agent_close_fails_in_flight_with_shutdown(running_mosquitto, paho_peer, topic_prefix, webrtc_server, stub_llm):
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    stub_llm.delay_s = 5.0
    async with streaming_publisher(webrtc_server):
        async with running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix, shutdown_grace_s=0.2) as agent:
            peer.publish(t["ask"], json.dumps({"id": "late", "question": "?"}))
            await wait_until(lambda: agent.in_flight, what="the question in flight")
            assert agent.in_flight == 1
        (a,) = await asyncio.to_thread(answers, peer, 1, t["answer"])
    assert a["id"] == "late" and a["error"]["type"] == "shutdown"


async def test_agent_data_channel_question_streams_back(running_mosquitto, paho_peer, topic_prefix, webrtc_server, stub_llm):
    peer = paho_peer("5")
    peer.subscribe(Topics(topic_prefix).as_dict()["answer"])
    stub_llm.reply = "red and blue bars"
    async with streaming_publisher(webrtc_server) as pub, running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix):
        await pub.wait_open()
        pub.channel.send(json.dumps({"id": "dc1", "question": "colours?", "stream": True}))
        got = []
        while not got or "text" not in got[-1]:
            got.append(json.loads(await asyncio.wait_for(pub.messages.get(), 10)))
        pub.channel.send("\x00" * 10 + "{")  # not a question: an error answer on the channel, nothing breaks
        bad = json.loads(await asyncio.wait_for(pub.messages.get(), 10))
        mqtt_copy = json.loads((await asyncio.to_thread(peer.get, 10)).payload)
    assert [m["seq"] for m in got[:-1]] == [1, 2, 3, 4]
    assert got[-1]["id"] == "dc1" and got[-1]["text"] == "red and blue bars" and got[-1]["source"] == "cam"
    assert mqtt_copy["id"] == "dc1"
    assert bad["error"]["type"] in ("bad_payload", "empty_question")


async def test_agent_periodic_description(running_mosquitto, paho_peer, topic_prefix, webrtc_server, stub_llm):
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/cam/description")
    async with streaming_publisher(webrtc_server), running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix,
                                                                 periodic_interval_s=0.3, periodic_prompt="Describe."):
        first = json.loads((await asyncio.to_thread(peer.get, 10)).payload)
        second = json.loads((await asyncio.to_thread(peer.get, 10)).payload)
    assert first["question"] == "Describe." and first["source"] == "cam" and first["error"] is None
    assert first["id"] != second["id"]


def test_agent_refuses_embeddings_for_a_provider_that_cannot_take_them():
    llm = create_provider({"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model_name": "m"})

    async def embed(frames):
        return None

    with pytest.raises(ValueError, match="vllm_native"):
        VisualAgent(llm=llm, embedding_function=embed)


async def test_agent_scene_change_description(running_mosquitto, paho_peer, topic_prefix, stub_llm):
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/desk/description")
    driver = Buffers("desk")
    scene = {"enabled": True, "threshold": 0.3, "min_gap_s": 0.0, "check_interval_s": 0.05, "prompt": "What changed?"}
    async with running_agent(running_mosquitto, driver, stub_llm.base_url, topic_prefix, scene_change=scene):
        for _ in range(5):  # a steady dark picture: no description
            driver.get_buffer("desk").put(solid(20))
            await asyncio.sleep(0.1)  # the pace of the feed, checked at every 0.05 s
        driver.get_buffer("desk").put(solid(230))  # the lights go on
        got = json.loads((await asyncio.to_thread(peer.get, 10)).payload)
        for _ in range(5):  # steady again: nothing more
            driver.get_buffer("desk").put(solid(230))
            await asyncio.sleep(0.1)
        driver.get_buffer("desk").put(solid(20))  # the lights go off: a change after the steady pictures
        await wait_until(lambda: len(stub_llm.requests) >= 2 and _grey_level_sent(stub_llm.requests[-1]) < 128,
                         what="the lights-off description asked")
    # The watcher describes one change at a time, in order: a description of either steady picture would have been
    # asked before the lights-off one, so the requests show exactly the two changes.
    assert [_grey_level_sent(r) > 128 for r in stub_llm.requests] == [True, False]
    assert got["question"] == "What changed?" and got["source"] == "desk" and got["error"] is None


def _grey_level_sent(request: dict) -> float:
    """The mean grey level of the first picture in a request the LLM stand-in received."""
    import base64

    import cv2
    import numpy as np

    url = next(part["image_url"]["url"] for part in request["messages"][-1]["content"] if part.get("type") == "image_url")
    jpeg = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return float(cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE).mean())


async def test_agent_shared_group_answers_each_question_once(running_mosquitto, paho_peer, topic_prefix, stub_llm):
    """Two daemons in one shared group split the questions; every question is answered exactly once."""
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    driver = Buffers("cam")
    driver.get_buffer("cam").put(solid(100))
    llm = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model"})
    cfg = MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port, shared_group="g1")
    agents, messagers = [], []
    stack = contextlib.AsyncExitStack()
    for _ in range(2):
        m = MqttMessager(cfg)
        await m.start()
        a = VisualAgent(llm=llm, messager=m, webrtc_driver=driver, prefix=topic_prefix, config=AgentConfig(max_in_flight=20))
        await serve(stack, a)
        agents.append(a)
        messagers.append(m)
    try:
        for i in range(12):
            peer.publish(t["ask"], json.dumps({"id": f"s{i}", "question": "?"}))
        got = await asyncio.to_thread(answers, peer, 12, t["answer"])
        # No duplicates: ask markers one at a time until each agent has answered one. An agent takes its messages
        # in order and publishes on one connection, and the stand-in answers at once, so a
        # duplicate it made would have come before its marker.
        answered = [a.counters["answers"] for a in agents]
        for i in range(20):
            if all(a.counters["answers"] > n for a, n in zip(agents, answered, strict=True)):
                break
            peer.publish(t["ask"], json.dumps({"id": f"marker{i}", "question": "?"}))
            (marker,) = await asyncio.to_thread(answers, peer, 1, t["answer"])
            assert marker["id"] == f"marker{i}", f"answered twice: {marker}"
        else:
            raise AssertionError("the shared group never gave both agents a marker")
    finally:
        await stack.aclose()
        for m in messagers:
            await m.close()
        await llm.aclose()
    assert sorted(a["id"] for a in got) == sorted(f"s{i}" for i in range(12))
    assert all(a["error"] is None for a in got)
    assert all(a.counters["answers"] > 0 for a in agents)  # both took a share


async def test_daemon_sends_jpeg_at_the_configured_encoder_size_and_quality(stub_llm):
    """`encoder.jpeg_max_side` / `encoder.jpeg_quality` shape the JPEG the daemon sends to an HTTP provider."""
    import base64

    import cv2
    import numpy as np

    from visual_agent.config_loading import parse_config
    from visual_agent.daemon import Daemon
    from visual_agent.messages import Question

    config = parse_config({
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model", "max_retries": 0},
        "encoder": {"jpeg_max_side": 96, "jpeg_quality": 30},
        "webrtc": {"host": "127.0.0.1", "port": 0, "host_candidate_addresses": ["127.0.0.1"]},
        "mqtt": {"enabled": False},
    }, environ={})
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert daemon.agent.encoding.jpeg_encoder.config.quality == 30
        async with streaming_publisher(daemon.driver, width=320, height=240):
            answer = await daemon.agent.ask(Question(question="what?", source="cam"))
    finally:
        await daemon.close()
    assert answer.error is None, answer.error
    url = stub_llm.requests[-1]["messages"][-1]["content"][1]["image_url"]["url"]
    jpeg = base64.b64decode(url.split(",", 1)[1])
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (72, 96)


async def test_agent_close_answers_received_questions_not_yet_taken(running_mosquitto, paho_peer, topic_prefix, stub_llm):
    """Questions the messager received (and acknowledged) but the agent had not taken still get a `shutdown` answer."""
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    llm = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model", "max_retries": 0})
    messager = MqttMessager(MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port), status_topic=f"{topic_prefix}/status")
    await messager.start()
    agent = VisualAgent(llm=llm, messager=messager, prefix=topic_prefix, provider_name="openai")
    intake = MqttQuestions(agent, messager)  # not entered: nothing takes the questions
    try:
        await messager.subscribe(t["ask"])  # received, but no consumer takes them
        for i in range(3):
            peer.publish(t["ask"], json.dumps({"id": f"q{i}", "question": "?"}))
        for _ in range(250):
            if messager.stats.received == 3:
                break
            await asyncio.sleep(0.02)
        assert messager.stats.received == 3
        await agent.close(grace_s=0.1)
        await intake.close()  # what the daemon's shutdown does: the questions not taken are answered
        got = await asyncio.to_thread(answers, peer, 3, t["answer"])
    finally:
        await messager.close()
        await llm.aclose()
    assert sorted(a["id"] for a in got) == ["q0", "q1", "q2"]
    assert {a["error"]["type"] for a in got} == {"shutdown"}


async def test_agent_concurrent_questions_on_one_frame_encode_it_once(stub_llm):
    """Two questions on the same newest frame at once: one JPEG encoding serves both."""
    import threading
    import time

    from encoders import JpegEncoder
    from visual_agent.encoding import FrameEncoding
    from visual_agent.messages import Question

    class CountingEncoder(JpegEncoder):
        def __init__(self):
            super().__init__()
            self.calls = 0
            self._lock = threading.Lock()

        def data_url(self, frame):
            with self._lock:
                self.calls += 1
            time.sleep(0.2)  # long enough for the second question to arrive while the first encodes
            return super().data_url(frame)

    camera = Buffers("desk").holding("desk", solid(0, 64, 48))
    llm = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model", "max_retries": 0})
    encoder = CountingEncoder()
    agent = VisualAgent(llm=llm, webrtc_driver=camera, encoding=FrameEncoding(llm, jpeg_encoder=encoder))
    try:
        a, b = await asyncio.gather(agent.ask(Question(question="one?")), agent.ask(Question(question="two?")))
    finally:
        await agent.close()
        await llm.aclose()
    assert a.error is None and b.error is None, (a.error, b.error)
    assert encoder.calls == 1
    sent = [r["messages"][-1]["content"][1]["image_url"]["url"] for r in stub_llm.requests[-2:]]
    assert sent[0] == sent[1] and sent[0].startswith("data:image/jpeg;base64,")


async def test_agent_scene_watch_survives_a_source_that_leaves(stub_llm):
    """A page's source can go between listing the sources and reading one: the scene-change watcher goes on."""
    from visual_agent.config import SceneChangeConfig

    class LeavingCamera(Buffers):
        """Source "b" is listed, then gone when the watcher reads it (its peer left)."""

        def __init__(self):
            super().__init__("a", "b")
            self.reads_of_b = 0
            self.holding("a", solid(0, 32, 18)).holding("b", solid(0, 32, 18))

        def get_buffer(self, name):
            if name == "b":
                self.reads_of_b += 1
                if self.reads_of_b % 2 == 0:  # listed by _live_sources, gone at the watcher's read
                    raise KeyError(f"no source {name!r}")
            return super().get_buffer(name)

    llm = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model", "max_retries": 0})
    camera = LeavingCamera()
    config = AgentConfig(scene_change=SceneChangeConfig(enabled=True, check_interval_s=0.02))
    agent = VisualAgent(llm=llm, webrtc_driver=camera, config=config)
    try:
        async with contextlib.AsyncExitStack() as stack:
            intakes = await serve(stack, agent)
            await wait_until(lambda: camera.reads_of_b >= 4, what="the watcher read source b four times")
            (watcher,) = [t for t in intakes.triggers._tasks if t.get_name() == "agent-scene-change"]
            assert not watcher.done()
    finally:
        await llm.aclose()


async def test_agent_answers_busy_for_questions_a_full_inbox_dropped(running_mosquitto, paho_peer, topic_prefix, stub_llm):
    """The messager's inbox is bounded; a question it has to drop still gets one answer (`busy`), never none."""
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    llm = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model", "max_retries": 0})
    messager = MqttMessager(MqttConfig(host=running_mosquitto.host, port=running_mosquitto.port, inbox_max=1),
                            status_topic=f"{topic_prefix}/status")
    await messager.start()
    agent = VisualAgent(llm=llm, messager=messager, prefix=topic_prefix, provider_name="openai")
    stack = contextlib.AsyncExitStack()
    intakes = await serve(stack, agent)
    try:
        (consumer,) = [task for task in intakes.mqtt._tasks if task.get_name() == "agent-mqtt-questions"]
        consumer.cancel()  # a consumer that has fallen behind: the inbox (1) fills
        await asyncio.wait([consumer])
        for i in range(3):
            peer.publish(t["ask"], json.dumps({"id": f"q{i}", "question": "?"}))
        busy = await asyncio.to_thread(answers, peer, 2, t["answer"])
        await agent.drain(0.1)
        await stack.aclose()
        (last,) = await asyncio.to_thread(answers, peer, 1, t["answer"])
    finally:
        await stack.aclose()
        await messager.close()
        await llm.aclose()
    assert messager.stats.inbox_dropped == 2
    assert sorted(a["id"] for a in busy) == ["q1", "q2"] and {a["error"]["type"] for a in busy} == {"busy"}
    assert last["id"] == "q0" and last["error"]["type"] == "shutdown"


async def test_agent_error_answer_masks_a_password_in_the_llm_url():
    """Error answers go to every MQTT listener: a user:token@ in the LLM's base_url is not in them."""
    from visual_agent.messages import Question

    closed = free_tcp_port()
    camera = Buffers("desk").holding("desk", solid(0, 64, 48))
    llm = create_provider({"provider": "openai", "base_url": f"http://me:tok-secret@127.0.0.1:{closed}/v1",
                           "model_name": "m", "max_retries": 0, "timeout": 5})
    agent = VisualAgent(llm=llm, webrtc_driver=camera)
    try:
        answer = await agent.ask(Question(question="anyone?"))
    finally:
        await agent.close()
        await llm.aclose()
    assert answer.error["type"] == "llm_unreachable", answer.error
    assert "tok-secret" not in answer.payload().decode() and "127.0.0.1" in answer.error["message"]


async def test_agent_page_question_during_shutdown_grace_gets_shutdown_answer(running_mosquitto, paho_peer, topic_prefix,
                                                                              webrtc_server, stub_llm):
    """While in-flight questions get their grace period, a question typed on the page is answered `shutdown`."""
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    stub_llm.delay_s = 3.0
    async with streaming_publisher(webrtc_server) as pub:
        await pub.wait_open()
        async with running_agent(running_mosquitto, webrtc_server, stub_llm.base_url, topic_prefix, shutdown_grace_s=1.5) as agent:
            peer.publish(t["ask"], json.dumps({"id": "slow", "question": "?"}))
            await wait_until(lambda: agent.in_flight, what="the slow question in flight")
            closing = asyncio.ensure_future(agent.drain())
            await wait_until(lambda: agent.admission.closing, what="the agent draining")
            pub.channel.send(json.dumps({"id": "late-page", "question": "still there?"}))
            got = json.loads(await asyncio.wait_for(pub.messages.get(), 5))
            await closing
    assert got["id"] == "late-page" and got["error"]["type"] == "shutdown"


def test_encoding_refuses_jpeg_mode_with_an_embedding_function():
    """`encoder.embeddings: off` forces JPEG: given together with an embedding function, it is an error, not ignored."""
    from visual_agent.encoding import FrameEncoding

    class TakesEmbeddings:
        class capabilities:
            image_embeddings = True
            streaming = False

    async def embed(frames):
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="encoder.embeddings: off"):
        FrameEncoding(TakesEmbeddings(), mode="off", embedding_function=embed)
    assert FrameEncoding(TakesEmbeddings(), mode="off").embedding_function is None


async def test_close_called_twice_at_once_returns_when_the_first_is_done(stub_llm):
    """A second `close()` while the first runs waits for it (the daemon's used to return at once, before the peers,
    the MQTT connection and the LLM were closed)."""
    from visual_agent.config_loading import parse_config
    from visual_agent.daemon import Daemon

    config = parse_config({
        "llm": {"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model", "max_retries": 0},
        "webrtc": {"host": "127.0.0.1", "port": 0, "host_candidate_addresses": ["127.0.0.1"]},
        "mqtt": {"enabled": False},
    }, environ={})
    daemon = Daemon(config)
    await daemon.start()
    agent = daemon.agent
    first = asyncio.ensure_future(daemon.close())
    await asyncio.sleep(0)  # the first call is under way
    await daemon.close()
    assert first.done()
    first = asyncio.ensure_future(agent.close())  # closed already: both return at once
    await agent.close()
    await first
