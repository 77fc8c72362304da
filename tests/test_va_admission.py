"""`Admission`: a fair share per asker. Over real mosquitto, with the agent's MQTT intake, a WebRTC publisher and the
STAND-IN LLM of tests/fixtures/llm_stub.py slowed to 2 s an answer, one asker floods while another asks one
question at a time; the second is answered, the flooder gets `busy`, and every question gets exactly one answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from tests.agents import agent_over_mqtt
from tests.fixtures.webrtc import CounterVideoTrack, publish
from tests.waiting import wait_until
from visual_agent.topics import Topics

pytestmark = [pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(120)]

FLOOD_PER_S = 6
MODEL_S = 2.0
B_QUESTIONS = 8


def _flood(peer, ask_topic: str, reply_topic: str, stop: threading.Event, sent: list[str]) -> None:
    """Asker A: a question every 1/FLOOD_PER_S s until `stop`, each with A's response topic."""
    while not stop.wait(1 / FLOOD_PER_S):
        qid = f"a{len(sent)}"
        peer.publish(ask_topic, json.dumps({"id": qid, "question": "anything now?"}), response_topic=reply_topic)
        sent.append(qid)


def _ask_one_at_a_time(peer, ask_topic: str, reply_topic: str) -> list[tuple[str, str | None, float]]:
    """Asker B: B_QUESTIONS questions, each once the previous one's answer came: (id, error type, seconds)."""
    seen = []
    for i in range(B_QUESTIONS):
        began = time.monotonic()
        peer.publish(ask_topic, json.dumps({"id": f"b{i}", "question": "is the door open?"}), response_topic=reply_topic)
        answer = json.loads(peer.get(60, reply_topic).payload)
        seen.append((answer["id"], (answer["error"] or {}).get("type"), round(time.monotonic() - began, 2)))
    return seen


async def test_admission_a_flooding_asker_does_not_starve_another(running_mosquitto, paho_peer, topic_prefix,
                                                                   webrtc_server, stub_llm):
    """Asker A sends 6 questions/s to a 2 s model (4 slots: 2 answers/s) while asker B asks 8 questions one at a
    time. Before the fair share, every one of B's 8 questions came back `busy`; now all 8 are answered (each within
    a slot's turn plus the model's 2 s), A gets `busy` for what exceeds its share and queue, and each of A's
    questions still gets exactly one answer."""
    stub_llm.delay_s = MODEL_S
    ask = Topics(topic_prefix).ask
    a_reply, b_reply = f"{topic_prefix}/reply/a", f"{topic_prefix}/reply/b"
    a, b = paho_peer("5"), paho_peer("5")
    a.subscribe(a_reply)
    b.subscribe(b_reply)
    llm = {"base_url": stub_llm.base_url, "model_name": "stub-model", "max_retries": 0, "timeout": 30}
    stop, sent = threading.Event(), []
    async with publish(webrtc_server.url, CounterVideoTrack(160, 120, 10), source="cam"):
        await wait_until(lambda: "cam" in webrtc_server.source_names() and len(webrtc_server.get_buffer("cam")) > 0,
                         20, "a first frame from the publisher")
        async with agent_over_mqtt(running_mosquitto, topic_prefix, webrtc_server, llm, max_in_flight=4,
                                   question_timeout_s=30) as agent:
            flooder = asyncio.create_task(asyncio.to_thread(_flood, a, ask, a_reply, stop, sent))
            try:
                await wait_until(lambda: agent.in_flight == 4 and len(sent) >= 2 * FLOOD_PER_S, 20,
                                 "A's flood holding every slot")
                b_seen = await asyncio.to_thread(_ask_one_at_a_time, b, ask, b_reply)
            finally:
                stop.set()
                await flooder
            a_answers = await asyncio.to_thread(lambda: [json.loads(a.get(60, a_reply).payload) for _ in sent])
    b_errors = [error for _, error, _ in b_seen]
    assert b_errors == [None] * B_QUESTIONS, f"B saw (id, error, seconds): {b_seen}"
    assert sorted(x["id"] for x in a_answers) == sorted(sent), "each of A's questions gets exactly one answer"
    a_outcomes = [(x["error"] or {}).get("type") for x in a_answers]
    assert "busy" in a_outcomes and None in a_outcomes, f"A's outcomes: {a_outcomes}"
    assert set(a_outcomes) <= {None, "busy"}, a_outcomes
