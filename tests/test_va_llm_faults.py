"""LLM faults: every question gets exactly one answer or error within `agent.question_timeout_s`, the error says
which limit fired, and answers resume when the server recovers, with the same agent (no restart).

The agent runs with a real MQTT messager on mosquitto, questions come from a paho peer and frames from a plain
`FrameBuffer`. The LLM is the STAND-IN of tests/fixtures/faulty_llm.py, a real local HTTP server that misbehaves on
purpose (down, slow, 429, 500, a cut stream, a black hole); the recovery against the real vLLM server is in
`test_va_llm_recovers_with_real_vllm_server`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.agents import agent_over_mqtt
from tests.fixtures.faulty_llm import REPLY, FaultyLLM
from tests.fixtures.frames import Buffers, solid
from tests.ports import free_tcp_port
from visual_agent.agent import VisualAgent
from visual_agent.topics import Topics

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(90)]

SLACK_S = 1.0
"""Room over `question_timeout_s` for publishing the answer and the peer's receipt (not the agent's time)."""


@pytest.fixture
async def faulty_llm():
    llm = await FaultyLLM().start()
    yield llm
    await llm.close()


def agent_on(mosquitto, prefix: str, base_url: str, *, llm: dict[str, Any], **agent_kw: Any):
    camera = Buffers("cam", max_frames=4, max_seconds=600).holding("cam", solid(0, 64, 48))
    return agent_over_mqtt(mosquitto, prefix, camera, {"base_url": base_url, "model_name": "faulty", **llm}, **agent_kw)


class Asker:
    """Asks on `<prefix>/ask` and collects every final answer by id (so a second answer to one id is seen)."""

    def __init__(self, peer, prefix: str) -> None:
        self.peer = peer
        self.t = Topics(prefix).as_dict()
        self.by_id: dict[str, list[dict]] = {}
        peer.subscribe(self.t["answer"])

    async def ask(self, question: dict, timeout: float) -> dict:
        qid = question.setdefault("id", uuid.uuid4().hex[:8])
        self.peer.publish(self.t["ask"], json.dumps({"question": "what is there?", **question}))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while qid not in self.by_id:
            msg = await asyncio.to_thread(self.peer.get, max(0.01, deadline - loop.time()), self.t["answer"])
            answer = json.loads(msg.payload)
            self.by_id.setdefault(answer["id"], []).append(answer)
        return self.by_id[qid][0]

    def assert_each_answered_once(self) -> None:
        twice = {qid: len(a) for qid, a in self.by_id.items() if len(a) != 1}
        assert not twice, f"answered more than once: {twice}"


async def _fault_then_recovery(mosquitto, paho_peer, prefix, faulty: FaultyLLM, *, llm: dict, question_timeout_s: float,
                               stream: bool = False) -> tuple[dict, dict, VisualAgent]:
    asker = Asker(paho_peer("5"), prefix)
    async with agent_on(mosquitto, prefix, faulty.base_url, llm=llm, question_timeout_s=question_timeout_s) as agent:
        failed = await asker.ask({"stream": stream}, question_timeout_s + SLACK_S + 5)
        assert agent.describe_state()["last_error"]["type"] == failed["error"]["type"]  # /healthz shows it
        faulty.fault = None
        if faulty.port and faulty._site is None:
            await faulty.up()
        recovered = await asker.ask({"stream": stream}, question_timeout_s + SLACK_S + 5)
        counters = dict(agent.counters)
        state = agent.describe_state()
    assert state["last_answer_at"] >= state["last_error"]["at"]  # /healthz: answering again since the fault
    asker.assert_each_answered_once()
    assert recovered["error"] is None and recovered["text"] == REPLY, recovered  # same agent, answering again
    assert sum(v for k, v in counters.items() if k == "answers" or k.startswith("errors.")) == 2
    return failed, recovered, agent


async def test_llm_down_is_unreachable_then_recovers(running_mosquitto, paho_peer, topic_prefix, faulty_llm):
    await faulty_llm.down()
    failed, _, _ = await _fault_then_recovery(running_mosquitto, paho_peer, topic_prefix, faulty_llm,
                                              llm={"max_retries": 2, "timeout": 5}, question_timeout_s=4)
    assert failed["error"]["type"] == "llm_unreachable" and "127.0.0.1" in failed["error"]["message"]


async def test_llm_slow_past_the_question_timeout_says_question_timeout(running_mosquitto, paho_peer, topic_prefix,
                                                                       faulty_llm):
    faulty_llm.fault, faulty_llm.delay_s = "slow", 30
    failed, _, _ = await _fault_then_recovery(running_mosquitto, paho_peer, topic_prefix, faulty_llm,
                                              llm={"max_retries": 0, "timeout": 60}, question_timeout_s=1.5)
    assert failed["error"]["type"] == "timeout"
    assert "agent.question_timeout_s = 1.5 s" in failed["error"]["message"], failed["error"]


async def test_llm_slow_past_the_provider_timeout_says_llm_timeout(running_mosquitto, paho_peer, topic_prefix, faulty_llm):
    """`ProviderTimeoutError` is a `TimeoutError`: it must not be taken for the question's own deadline."""
    faulty_llm.fault, faulty_llm.delay_s = "slow", 30
    failed, _, _ = await _fault_then_recovery(running_mosquitto, paho_peer, topic_prefix, faulty_llm,
                                              llm={"max_retries": 0, "timeout": 1}, question_timeout_s=10)
    assert failed["error"]["type"] == "timeout"
    message = failed["error"]["message"]
    assert "llm.timeout = 1 s" in message and "question_timeout_s" not in message, message


async def test_llm_429_retry_after_is_honoured_within_the_deadline(running_mosquitto, paho_peer, topic_prefix, faulty_llm):
    """One 429 with Retry-After: 1 and room left: the retry waits the server's second, then answers."""
    faulty_llm.fault, faulty_llm.fault_count, faulty_llm.retry_after = "429", 1, 1
    asker = Asker(paho_peer("5"), topic_prefix)
    async with agent_on(running_mosquitto, topic_prefix, faulty_llm.base_url, llm={"max_retries": 2, "timeout": 5},
                        question_timeout_s=5):
        answer = await asker.ask({}, 10)
    asker.assert_each_answered_once()
    assert answer["error"] is None and answer["text"] == REPLY
    assert faulty_llm.requests == 2 and faulty_llm.times[1] - faulty_llm.times[0] >= 0.95  # waited Retry-After


async def test_llm_429_retry_after_past_the_deadline_fails_at_once(running_mosquitto, paho_peer, topic_prefix, faulty_llm):
    """A Retry-After longer than the question has left is not slept into a timeout: the rate limit is the answer."""
    faulty_llm.fault, faulty_llm.retry_after = "429", 30
    failed, _, _ = await _fault_then_recovery(running_mosquitto, paho_peer, topic_prefix, faulty_llm,
                                              llm={"max_retries": 2, "timeout": 5}, question_timeout_s=3)
    assert failed["error"]["type"] == "llm_error" and "RateLimitedError" in failed["error"]["message"]
    assert "retry after 30 s" in failed["error"]["message"] and "deadline" in failed["error"]["message"]
    # Not slept into the question's deadline (that would answer `timeout`): the 429, then the recovery's request.
    assert faulty_llm.requests == 2


async def test_llm_500s_are_retried_then_an_llm_error(running_mosquitto, paho_peer, topic_prefix, faulty_llm):
    faulty_llm.fault = "500"
    failed, _, _ = await _fault_then_recovery(running_mosquitto, paho_peer, topic_prefix, faulty_llm,
                                              llm={"max_retries": 1, "timeout": 5}, question_timeout_s=5)
    assert failed["error"]["type"] == "llm_error" and "ServerError" in failed["error"]["message"]
    assert faulty_llm.requests == 3  # the first try and one retry, then the recovery


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "body"])
async def test_llm_response_cut_in_the_middle_is_one_error(running_mosquitto, paho_peer, topic_prefix, faulty_llm, stream):
    faulty_llm.fault = "cut"
    failed, _, _ = await _fault_then_recovery(running_mosquitto, paho_peer, topic_prefix, faulty_llm,
                                              llm={"max_retries": 0, "timeout": 5}, question_timeout_s=5, stream=stream)
    assert failed["error"]["type"] == "llm_unreachable", failed["error"]


async def test_llm_that_accepts_and_never_answers_times_out_then_recovers(running_mosquitto, paho_peer, topic_prefix,
                                                                          faulty_llm):
    """A black hole (the TCP handshake completes, nothing is ever read) fails on `llm.timeout`, retried within the
    deadline; then the server is back on the same port and the same agent answers."""
    await faulty_llm.black_hole()
    failed, _, _ = await _fault_then_recovery(running_mosquitto, paho_peer, topic_prefix, faulty_llm,
                                              llm={"max_retries": 1, "timeout": 1}, question_timeout_s=5)
    assert failed["error"]["type"] == "timeout" and "llm.timeout = 1 s" in failed["error"]["message"], failed["error"]


async def test_llm_that_hangs_past_the_question_timeout(running_mosquitto, paho_peer, topic_prefix, faulty_llm):
    faulty_llm.fault = "hang"
    failed, _, _ = await _fault_then_recovery(running_mosquitto, paho_peer, topic_prefix, faulty_llm,
                                              llm={"max_retries": 2, "timeout": 60}, question_timeout_s=1.5, stream=True)
    assert failed["error"]["type"] == "timeout" and "question_timeout_s" in failed["error"]["message"]


@pytest.mark.vllm
@pytest.mark.timeout(300)
async def test_llm_recovers_with_real_vllm_server(running_mosquitto, paho_peer, topic_prefix, tiny_llava_path, tmp_path):
    """The real vLLM server, absent when the agent starts, then started on the agent's configured port, then
    stopped: unreachable, answered, unreachable; the same agent throughout."""
    from tests.fixtures.vllm import SERVED_MODEL_NAME, start_vllm_server, stop_vllm_server

    port = free_tcp_port()
    asker = Asker(paho_peer("5"), topic_prefix)
    async with agent_on(running_mosquitto, topic_prefix, f"http://127.0.0.1:{port}/v1",
                        llm={"model_name": SERVED_MODEL_NAME, "max_retries": 1, "timeout": 30, "temperature": 0,
                             "max_tokens": 8}, question_timeout_s=60):
        before = await asker.ask({}, 70)
        server = await asyncio.to_thread(start_vllm_server, tiny_llava_path, tmp_path / "vllm.log", port=port)
        try:
            during = await asker.ask({}, 70)
        finally:
            await asyncio.to_thread(stop_vllm_server, server.process)
        after = await asker.ask({}, 70)
    asker.assert_each_answered_once()
    assert before["error"]["type"] == "llm_unreachable", before
    assert during["error"] is None and during["model"] == SERVED_MODEL_NAME, during
    assert after["error"]["type"] == "llm_unreachable", after
