"""The rule engine against a real file source, real mosquitto and the STAND-IN model (tests/fixtures/llm_stub.py,
scripted by tests/rules_scene.py to answer yes when the picture is bright): state changes at the expected
frames, no flapping, the evidence is the frame that turned the rule on; the change gate, the shared encoding and
the call budget."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from encoders import JpegEncoder
from providers import create_provider
from tests.fixtures.frames import Buffers, solid
from tests.rules_scene import BRIGHT, DARK, BrightnessJudge, counter_of_gray, decode_gray, write_scene_clip
from tests.waiting import wait_until
from visual_agent.agent import VisualAgent
from visual_agent.config import MqttConfig
from visual_agent.encoding import FrameEncoding
from visual_agent.mqtt import MqttMessager
from visual_agent.rules import RuleConfig, RuleEngine
from webrtc import SourceConfig, WebRTCConfig

pytestmark = [pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(90)]


class CountingJpeg(JpegEncoder):
    """A real JpegEncoder that counts its encodings."""

    def __init__(self) -> None:
        super().__init__()
        self.encodings = 0

    def data_url(self, frame, **kw):
        self.encodings += 1
        return super().data_url(frame, **kw)


@contextlib.asynccontextmanager
async def engine_for(mosquitto, driver, stub, prefix, rules, *, encoding_jpeg=None, **engine_kw):
    llm = create_provider({"provider": "vllm", "base_url": stub.base_url, "model_name": stub.model, "max_retries": 0})
    messager = MqttMessager(MqttConfig(host=mosquitto.host, port=mosquitto.port, reconnect_min_s=0.1))
    await messager.start()
    encoding = FrameEncoding(llm, jpeg_encoder=encoding_jpeg) if encoding_jpeg is not None else None
    agent = VisualAgent(llm=llm, messager=messager, webrtc_driver=driver, prefix=prefix, encoding=encoding)
    engine = RuleEngine(agent, rules, **engine_kw)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()
        await agent.close(grace_s=0.5)
        await messager.close()
        await llm.aclose()



def expected_transitions(answers: list[bool], on_after: int, off_after: int) -> list[tuple[int, str]]:
    """(request index, new state) of the hysteresis over the model's answers, as the issue defines it."""
    out, state, yes, no = [], "off", 0, 0
    for i, answer in enumerate(answers):
        yes, no = (yes + 1, 0) if answer else (0, no + 1)
        if state == "off" and yes >= on_after:
            state = "on"
            out.append((i, state))
        elif state == "on" and no >= off_after:
            state = "off"
            out.append((i, state))
    return out


async def test_rules_engine_turns_on_and_off_at_the_expected_frames_with_the_right_evidence(
        tmp_path, running_mosquitto, paho_peer, topic_prefix, stub_llm, webrtc_server_factory):
    # dark 2 s (frames 0-59), bright 3 s (60-149), dark 3 s (150-239)
    clip = write_scene_clip(tmp_path / "door.mp4", [(2.0, DARK), (3.0, BRIGHT), (3.0, DARK)])
    judge = BrightnessJudge()
    stub_llm.reply_fn = judge
    peer = paho_peer("5")
    base = f"{topic_prefix}/door/rules/lamp"
    peer.subscribe(f"{base}/#")
    rule = RuleConfig(name="lamp", source="door", question="Is the light on?", check_every_s=0.5, only_on_change=True,
                      on_after=2, off_after=2, cooldown_s=0, lookback_s=1.0)
    server = await webrtc_server_factory(WebRTCConfig(port=0, host_candidate_addresses=["127.0.0.1"]),
                                         [SourceConfig(name="door", kind="file", url=str(clip))])
    async with engine_for(running_mosquitto, server, stub_llm, topic_prefix, [rule]) as engine:
        messages = await asyncio.to_thread(peer.until, f"{base}/event", 30)  # the on event
        messages += await asyncio.to_thread(peer.until, f"{base}/event", 30)  # the off event
        await wait_until(lambda: server.get_buffer("door").stats().state == "ended", 30, "the clip's end")
        stats = engine.stats()
    events = [json.loads(m.payload) for m in messages if m.topic == f"{base}/event"]
    evidence = [m.payload for m in messages if m.topic == f"{base}/evidence"]
    lookback = [m.payload for m in messages if m.topic == f"{base}/evidence/lookback"]
    answers = [a for _, a in judge.seen]
    expected = expected_transitions(answers, 2, 2)
    print(f"\nrequests (frame, yes): {judge.seen}\nevents: {events}\nstats: {stats}")
    assert [(e["checks"] - 1, e["state"]) for e in events] == expected == expected[:2]
    assert [e["state"] for e in events] == ["on", "off"]  # exactly one each: no flapping
    on_frame = judge.seen[expected[0][0]][0]
    off_frame = judge.seen[expected[1][0]][0]
    assert 60 <= on_frame < 150 and 150 <= off_frame
    assert len(evidence) == 1
    gray = decode_gray(evidence[0])
    assert counter_of_gray(gray) == on_frame and gray[gray.shape[0] // 4:].mean() > 128
    assert len(lookback) == 1 and decode_gray(lookback[0]) is not None and len(events[0]["lookback"]) >= 1
    assert events[0]["answer"] is True and events[0]["reason"].startswith("mean brightness")
    assert stats["unparsable"] == 0 and stats["skipped_unchanged"] > 0 and stats["events"] == 2
    state = json.loads(next(m.payload for m in reversed(messages) if m.topic == base))
    assert state["state"] == "off" and state["model"] == stub_llm.model and state["frames"][0]["age_s"] >= 0
    on_states = [s for s in (json.loads(m.payload) for m in messages if m.topic == base) if s["state"] == "on"]
    assert on_states and all(s["since_reason"] == events[0]["reason"] for s in on_states)  # why it turned on
    held = [s for s in on_states if s["answer"] is False]  # the first "no" while off_after=2 holds it on
    assert held and all(s["reason"] != s["since_reason"] for s in held)
    request = stub_llm.requests[-1]
    assert request["structured_outputs"]["regex"].startswith('\\{"answer"')  # vLLM's structured output


async def test_rules_engine_change_gate_skips_the_model_until_the_picture_changes(
        running_mosquitto, paho_peer, topic_prefix, stub_llm):
    judge = BrightnessJudge()
    stub_llm.reply_fn = judge
    driver = Buffers("desk")
    rule = RuleConfig(name="lamp", source="desk", question="Is the light on?", check_every_s=0.5, on_after=1,
                      off_after=1, cooldown_s=0, lookback_s=0)
    feeding = True
    level = DARK

    async def feed() -> None:
        while feeding:
            driver.buffers["desk"].put(solid(level))
            await asyncio.sleep(0.05)

    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/desk/rules/lamp")
    feeder = asyncio.create_task(feed())
    try:
        async with engine_for(running_mosquitto, driver, stub_llm, topic_prefix, [rule], state_refresh_s=1.0) as engine:
            runtime = engine.rules()[0]
            await wait_until(lambda: runtime.skipped_unchanged >= 3, 20, "skipped checks on a static picture")
            assert len(stub_llm.requests) == 1 and runtime.checks == 1  # one question, then the gate held

            def refreshed() -> dict:
                while True:  # skipped checks still publish the state now and then (its counters, the page's list)
                    state = json.loads(peer.get(10, topic=f"{topic_prefix}/desk/rules/lamp").payload)
                    if state["skipped_unchanged"] >= 1:
                        return state

            assert (await asyncio.to_thread(refreshed))["checks"] == 1
            level = BRIGHT
            await wait_until(lambda: runtime.state.state.value == "on", 20, "the rule to turn on after the change")
            assert runtime.checks == 2 and engine.stats()["skipped_unchanged"] >= 3
    finally:
        feeding = False
        await feeder


async def test_rules_engine_rules_on_one_frame_share_one_encoding_and_the_budget_slows_checks(
        running_mosquitto, paho_peer, topic_prefix, stub_llm):
    judge = BrightnessJudge()
    stub_llm.reply_fn = judge
    driver = Buffers("desk")
    rules = [RuleConfig(name=f"r{i}", source="desk", question=f"Question {i}?", check_every_s=0.5,
                        only_on_change=False, lookback_s=0) for i in range(3)]
    jpeg = CountingJpeg()
    peer = paho_peer("5")
    peer.subscribe(f"{topic_prefix}/desk/rules/r0")
    feeding = True
    n = 0

    async def feed() -> None:
        nonlocal n
        while feeding:
            n += 1
            driver.buffers["desk"].put(solid(DARK + n % 50))  # every frame differs
            await asyncio.sleep(0.03)

    feeder = asyncio.create_task(feed())
    try:
        async with engine_for(running_mosquitto, driver, stub_llm, topic_prefix, rules, encoding_jpeg=jpeg,
                              calls_per_minute=6) as engine:
            await wait_until(lambda: engine.stats()["budget_degraded"] >= 3, 30, "checks slowed by the budget")
            requests = list(stub_llm.requests)
            assert len(requests) == 6  # the budget: no more calls this minute
            urls = [r["messages"][-1]["content"][1]["image_url"]["url"] for r in requests]
            # rounds of three rules on one frame: three requests, one encoding
            assert len(set(urls)) == 2 and jpeg.encodings == 2
            assert all(urls.count(u) == 3 for u in set(urls))

            def degraded_state():
                while True:
                    state = json.loads(peer.get(10, topic=f"{topic_prefix}/desk/rules/r0").payload)
                    if state["degraded"]:
                        return state

            state = await asyncio.to_thread(degraded_state)
            assert state["calls_per_minute"] == 6 and state["calls_last_minute"] == 6
            assert engine.describe()["sources"]["desk"]["degraded"] is True
    finally:
        feeding = False
        await feeder


async def test_rules_engine_checks_go_through_the_agent_as_via_rule(stub_llm):
    """A rule check is one more call through `VisualAgent.complete`: it shows in `visual_agent_questions_total
    {via="rule"}`, the answers and stage histograms, one trace per check, and its state change reaches the agent's
    event observers with the evidence frame."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from visual_agent.interfaces import EventKind
    from visual_agent.metrics import AgentMetrics
    from visual_agent.telemetry import Telemetry
    from visual_agent.tracing import ROOT_SPAN, QuestionTracing

    stub_llm.reply_fn = BrightnessJudge()
    driver = Buffers("desk")
    driver.buffers["desk"].put(solid(230))  # bright: the judge says yes
    metrics, exporter = AgentMetrics(driver), InMemorySpanExporter()
    tracing = QuestionTracing(exporter)
    llm = create_provider({"provider": "vllm", "base_url": stub_llm.base_url, "model_name": stub_llm.model,
                           "max_retries": 0})
    agent = VisualAgent(llm=llm, webrtc_driver=driver, telemetry=Telemetry(metrics, tracing))
    events = []
    agent.observe(events.append)
    engine = RuleEngine(agent, [RuleConfig(name="lamp", source="desk", question="Is the light on?", check_every_s=0.5,
                                           only_on_change=False, on_after=1, off_after=1, cooldown_s=0)])

    async def feed():  # the engine checks new frames only
        while True:
            driver.buffers["desk"].put(solid(230))
            await asyncio.sleep(0.1)

    feeder = asyncio.ensure_future(feed())
    await engine.start()
    try:
        await wait_until(lambda: engine.stats()["checks"] >= 2 and events, 20, "two rule checks and the on event")
    finally:
        feeder.cancel()
        await engine.close()
        await agent.close()
        await llm.aclose()
        tracing.shutdown()
    sample = metrics.registry.get_sample_value
    checks = engine.stats()["checks"]
    asked = sample("visual_agent_questions_total", {"via": "rule"})
    ok, cut = sample("visual_agent_answers_total", {"outcome": "ok"}), sample("visual_agent_answers_total", {"outcome": "shutdown"})
    assert ok == checks and asked == ok + cut and cut <= 1  # a check cut short by close() is one `shutdown` outcome
    assert sample("visual_agent_stage_seconds_count", {"stage": "llm"}) == checks
    assert sample("visual_agent_stage_seconds_count", {"stage": "encode"}) >= checks
    assert agent.describe_state()["questions"] == {"rule": asked}  # /healthz counts the same
    assert agent.describe_state()["counters"]["answers"] == checks
    roots = [s for s in exporter.get_finished_spans() if s.name == ROOT_SPAN]
    assert len(roots) == asked and {s.attributes["visual_agent.via"] for s in roots} == {"rule"}
    (event,) = [e for e in events if e.kind is EventKind.RULE]
    assert event.rule.rule == "lamp" and (event.rule.previous, event.rule.state) == ("off", "on")
    assert event.rule.answer is True and event.rule.evidence.frame is not None and event.source == "desk"
