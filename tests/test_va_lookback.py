"""A question's look-back ("what just happened?"): `lookback_s` sends a few look-back thumbnails from before the
question besides its current frame, from the per-source `LookbackStore` the rule engine shares.

Real parts: a file source whose scene changes at a known frame (tests/rules_scene.py), real mosquitto, and the
STAND-IN OpenAI-compatible server (tests/fixtures/llm_stub.py), which records each request so the test can read the
images that reached the "model" (their frame numbers and brightness)."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

from encoders import to_array
from providers import create_provider
from tests.agents import agent_over_mqtt
from tests.fixtures.frames import Buffers, solid
from tests.rules_scene import BRIGHT, DARK, counter_of_gray, decode_gray, write_scene_clip
from tests.waiting import wait_until
from visual_agent.agent import VisualAgent
from visual_agent.config import AgentConfig
from visual_agent.errors import ErrorType, QuestionError
from visual_agent.messages import Question, parse_question
from visual_agent.rules import RuleConfig, RuleEngine
from visual_agent.topics import Topics
from webrtc import SourceConfig, WebRTCConfig

CHANGE_FRAME = 60
"""The clip is dark for frames 0-59 (2 s at 30 fps), bright after."""


def running_agent(mosquitto, server, llm_url, prefix, **agent_kw):
    llm = {"base_url": llm_url, "model_name": "stub-model", "max_retries": 0, "timeout": 5}
    return agent_over_mqtt(mosquitto, prefix, server, llm, status=False, **agent_kw)


def request_images(body: dict) -> list:
    """The grey images of a recorded request's last user message, in order."""
    parts = body["messages"][-1]["content"]
    return [decode_gray(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))
            for p in parts if isinstance(p, dict) and p.get("type") == "image_url"]


def brightness(gray) -> float:
    return float(gray[gray.shape[0] // 4:].mean())  # below the frame counter


def newest_frame_number(server, source: str) -> int:
    entry = server.get_buffer(source).latest() if source in server.source_names() else None
    return -1 if entry is None else counter_of_gray(to_array(entry.frame, out="gray"))


def ask(peer, topic_ask: str, topic_answer: str, payload: dict) -> dict:
    peer.publish(topic_ask, json.dumps(payload))
    while True:
        answer = json.loads(peer.get(15, topic=topic_answer).payload)
        if answer["id"] == payload["id"]:
            return answer


@pytest.mark.mqtt
@pytest.mark.webrtc
@pytest.mark.timeout(90)
async def test_a_question_with_lookback_sees_frames_from_before_the_scene_change(
        tmp_path, running_mosquitto, paho_peer, topic_prefix, stub_llm, webrtc_server_factory):
    clip = write_scene_clip(tmp_path / "door.mp4", [(CHANGE_FRAME / 30, DARK), (8.0, BRIGHT)])
    server = await webrtc_server_factory(WebRTCConfig(port=0, host_candidate_addresses=["127.0.0.1"]),
                                         [SourceConfig(name="door", kind="file", url=str(clip))])
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    async with running_agent(running_mosquitto, server, stub_llm.base_url, topic_prefix, lookback_s=5.0) as agent:
        def dark_thumbnail_kept() -> bool:
            lookback = agent.lookbacks.get("door")
            return lookback is not None and any(counter_of_gray(decode_gray(t.jpeg)) < CHANGE_FRAME
                                                for t in lookback.before(time.monotonic(), 60))

        await wait_until(dark_thumbnail_kept, 30, "a look-back thumbnail of the dark scene")
        await wait_until(lambda: newest_frame_number(server, "door") >= CHANGE_FRAME + 15, 30, "the bright scene")
        looked = await asyncio.to_thread(ask, peer, t["ask"], t["answer"], {
            "id": "what", "question": "What just happened?", "source": "door", "lookback_s": 4.5})
        looked_request = stub_llm.requests[-1]
        plain = await asyncio.to_thread(ask, peer, t["ask"], t["answer"], {
            "id": "now", "question": "What is there?", "source": "door"})
        plain_request = stub_llm.requests[-1]
        held = agent.lookbacks.describe()["door"]
    images = request_images(looked_request)
    numbers = [counter_of_gray(g) for g in images]
    ages = [f["age_s"] for f in looked["frames"]]
    print(f"\nlook-back question: frames {looked['frames']}, image numbers {numbers}, "
          f"brightness {[round(brightness(g)) for g in images]}; held {held}")
    assert looked["error"] is None and 2 <= len(images) <= 5  # up to 4 look-back images and the current frame
    assert len(looked["frames"]) == len(images)  # the answer lists exactly what was sent, oldest first
    step = looked["frames"][-1]["pts"] // numbers[-1]  # the file's pts: frame number x ticks per frame
    assert [f["pts"] for f in looked["frames"]] == [n * step for n in numbers]  # each listed frame is the image sent
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert numbers[0] < CHANGE_FRAME and brightness(images[0]) < 128  # it saw the dark scene before the change
    assert numbers[-1] >= CHANGE_FRAME + 15 and brightness(images[-1]) > 128  # and the current, bright one
    assert ages == sorted(ages, reverse=True) and ages[-1] < ages[-2]  # older first
    assert all(age <= 4.5 for age in ages[:-1])  # within the look-back asked for
    # without lookback_s: what was sent before, the current frame only
    assert plain["error"] is None and len(plain["frames"]) == 1 and len(request_images(plain_request)) == 1
    assert brightness(request_images(plain_request)[0]) > 128
    assert held["seconds"] == 5.0 and held["thumbnails"] >= 2 and held["bytes"] > 0


@pytest.mark.mqtt
@pytest.mark.webrtc
@pytest.mark.timeout(60)
async def test_bad_lookback_values_get_bad_payload_answers(
        tmp_path, running_mosquitto, paho_peer, topic_prefix, stub_llm, webrtc_server_factory):
    clip = write_scene_clip(tmp_path / "door.mp4", [(4.0, DARK)])
    server = await webrtc_server_factory(WebRTCConfig(port=0, host_candidate_addresses=["127.0.0.1"]),
                                         [SourceConfig(name="door", kind="file", url=str(clip))])
    peer = paho_peer("5")
    t = Topics(topic_prefix).as_dict()
    peer.subscribe(t["answer"])
    bad = {"b1": '"three"', "b2": "0", "b3": "-1", "b4": "NaN", "b5": "Infinity", "b6": "1e999", "b7": "true",
           "b8": "10.5", "b9": "[1]"}
    async with running_agent(running_mosquitto, server, stub_llm.base_url, topic_prefix, lookback_s=2.0,
                             lookback_max_s=10.0):
        for qid, value in bad.items():
            peer.publish(t["ask"], f'{{"id": "{qid}", "question": "hi", "source": "door", "lookback_s": {value}}}')
        got = {}
        while len(got) < len(bad):
            answer = json.loads((await asyncio.to_thread(peer.get, 15, t["answer"])).payload)
            got[answer["id"]] = answer
    assert {qid: a["error"]["type"] for qid, a in got.items()} == dict.fromkeys(bad, "bad_payload")
    assert all("lookback_s" in a["error"]["message"] for a in got.values())
    assert "agent.lookback_max_s" in got["b8"]["error"]["message"]
    assert not stub_llm.requests  # none reached the model


def test_parse_question_reads_lookback_s_and_refuses_it_while_look_back_is_off():
    limits = {"max_bytes": 4096, "max_chars": 500, "max_frames": 4}
    assert parse_question('{"question": "what happened?", "lookback_s": 3}', **limits,
                          max_lookback_s=10).lookback_s == 3.0
    assert parse_question('{"question": "what is there?"}', **limits, max_lookback_s=10).lookback_s is None
    with pytest.raises(QuestionError) as off:
        parse_question('{"id": "q", "question": "what happened?", "lookback_s": 3}', **limits)
    assert off.value.type is ErrorType.BAD_PAYLOAD and off.value.id == "q" and "agent.lookback_s" in off.value.message
    assert AgentConfig().question_lookback_max_s() == 0  # off by default
    assert AgentConfig(lookback_s=2).question_lookback_max_s() == 10


async def test_look_back_is_off_by_default_and_shared_with_the_rule_engine(stub_llm):
    llm = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model",
                           "max_retries": 0})
    driver = Buffers("desk", "hall")
    off = VisualAgent(llm=llm, webrtc_driver=driver)
    await off.start()
    assert off.lookbacks.describe() == {}  # agent.lookback_s: 0 keeps nothing
    await off.close()
    agent = VisualAgent(llm=llm, webrtc_driver=driver, config=AgentConfig(lookback_s=2.0))
    await agent.start()
    engine = RuleEngine(agent, [RuleConfig(name="lamp", source="desk", question="Is the light on?", lookback_s=4.0)])
    try:
        await wait_until(lambda: set(agent.lookbacks.describe()) == {"desk", "hall"}, 10, "a look-back per source")
        await engine.start()
        assert engine.lookbacks is agent.lookbacks  # one store: the rule engine and questions share it
        assert agent.lookbacks.describe()["desk"]["seconds"] == 4.0  # the longest of the source's needs
        assert agent.lookbacks.describe()["hall"]["seconds"] == 2.0
        await engine.close()
        assert agent.lookbacks.describe()["desk"]["seconds"] == 2.0
    finally:
        await engine.close()
        await agent.close()
        await llm.aclose()


async def test_look_back_images_that_do_not_fit_the_context_are_dropped_oldest_first(stub_llm):
    # a frame costs about 11,000 tokens (llm.image_tokens 10,000 plus the budget's margin): a context of 25,000 holds
    # the question and two frames, so of the look-back images only the newest goes, beside the current frame
    llm = create_provider({"provider": "openai", "base_url": stub_llm.base_url, "model_name": "stub-model",
                           "max_retries": 0, "max_tokens": 64, "context_tokens": 25_000, "image_tokens": 10_000})
    driver = Buffers("desk")
    feeding = True
    level = DARK

    async def feed() -> None:
        while feeding:
            driver.buffers["desk"].put(solid(level))
            await asyncio.sleep(0.03)

    agent = VisualAgent(llm=llm, webrtc_driver=driver, config=AgentConfig(lookback_s=5.0))
    feeder = asyncio.create_task(feed())
    try:
        await agent.start()
        await wait_until(lambda: len(agent.lookbacks.get("desk") or []) >= 3, 20, "three look-back thumbnails")
        answer = await agent.ask(Question(question="What just happened?", source="desk", lookback_s=5.0))
    finally:
        feeding = False
        await feeder
        await agent.close()
        await llm.aclose()
    assert answer.error is None and len(answer.frames) == 2 and stub_llm.images_in_last_request() == 2
    assert answer.trimmed is not None and answer.trimmed["frames"] >= 2  # at least two older look-back images left out
    assert answer.frames[0].age_s > answer.frames[1].age_s  # the newest look-back image, then the current frame
