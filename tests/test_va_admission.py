"""`Admission`: a fair share per asker. Over real mosquitto, with the agent's MQTT intake, a WebRTC publisher and the
STAND-IN LLM of tests/fixtures/llm_stub.py slowed to 1 s an answer, one asker floods while another asks one
question at a time; the second is answered, the flooder gets `busy`, and every question gets exactly one answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time

import pytest

from tests.agents import agent_over_mqtt
from tests.fixtures.webrtc import CounterVideoTrack, publish
from tests.waiting import wait_until
from visual_agent.admission import Admission
from visual_agent.errors import QuestionError
from visual_agent.topics import Topics

pytestmark = [pytest.mark.mqtt, pytest.mark.webrtc, pytest.mark.timeout(120)]

# A floods at 3x what the slots can answer (4 slots x 1 answer/s); B asks 4 questions in turn. The finding (one pool
# for every asker) answered B's first five questions `busy`, so four still fail it; the model's delay only has to
# outlast a flood interval many times over to keep every slot held, which 1 s does as well as 2 s did.
FLOOD_PER_S = 12
MODEL_S = 1.0
B_QUESTIONS = 4


@contextlib.asynccontextmanager
async def _camera(server):
    """A WebRTC publisher streaming to source `cam`, once its first frame is in."""
    async with publish(server.url, CounterVideoTrack(160, 120, 10), source="cam"):
        await wait_until(lambda: "cam" in server.source_names() and len(server.get_buffer("cam")) > 0, 20,
                         "a first frame from the publisher")
        yield


def _llm(stub) -> dict:
    return {"base_url": stub.base_url, "model_name": "stub-model", "max_retries": 0, "timeout": 30}


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
    """Asker A sends 12 questions/s to a 1 s model (4 slots: 4 answers/s) while asker B asks 4 questions one at a
    time. With the single pool of 4 B's questions came back `busy` (the finding, at 6/s to a 2 s model: b0-b4 of 8;
    the first ones are the ones a full pool refuses, so B's 4 still fail it); now all of B's are answered (a slot's
    turn plus the model's 1 s), A gets `busy` for what exceeds its share and queue, and each of A's questions still
    gets exactly one answer."""
    stub_llm.delay_s = MODEL_S
    ask = Topics(topic_prefix).ask
    a_reply, b_reply = f"{topic_prefix}/reply/a", f"{topic_prefix}/reply/b"
    a, b = paho_peer("5"), paho_peer("5")
    a.subscribe(a_reply)
    b.subscribe(b_reply)
    stop, sent = threading.Event(), []
    async with _camera(webrtc_server):
        async with agent_over_mqtt(running_mosquitto, topic_prefix, webrtc_server, _llm(stub_llm), max_in_flight=4,
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
    print(f"during A's flood ({len(sent)} questions at {FLOOD_PER_S}/s) B saw (id, error, seconds): {b_seen}; "
          f"A saw {dict(collections.Counter((x['error'] or {}).get('type') or 'answered' for x in a_answers))}")
    b_errors = [error for _, error, _ in b_seen]
    assert b_errors == [None] * B_QUESTIONS, f"B saw (id, error, seconds): {b_seen}"
    assert sorted(x["id"] for x in a_answers) == sorted(sent), "each of A's questions gets exactly one answer"
    a_outcomes = [(x["error"] or {}).get("type") for x in a_answers]
    assert "busy" in a_outcomes and None in a_outcomes, f"A's outcomes: {a_outcomes}"
    assert set(a_outcomes) <= {None, "busy"}, a_outcomes


def _ask(peer, ask_topic: str, reply_topic: str, ids: list[str]) -> None:
    for qid in ids:
        peer.publish(ask_topic, json.dumps({"id": qid, "question": "anything?"}), response_topic=reply_topic)


async def test_admission_the_wait_for_a_slot_counts_against_the_question_timeout(running_mosquitto, paho_peer,
                                                                                 topic_prefix, webrtc_server, stub_llm):
    """One slot, a 1 s model, `question_timeout_s` 1.5: the second question waits about 1 s for the slot, so the
    0.5 s left cannot hold the model's 1 s and it answers `timeout` (it would be answered if the wait were free)."""
    stub_llm.delay_s = 1.0
    ask, mine = Topics(topic_prefix).ask, f"{topic_prefix}/reply/one"
    peer = paho_peer("5")
    peer.subscribe(mine)
    async with _camera(webrtc_server):
        async with agent_over_mqtt(running_mosquitto, topic_prefix, webrtc_server, _llm(stub_llm), max_in_flight=1,
                                   question_timeout_s=1.5, queue_wait_s=10):
            _ask(peer, ask, mine, ["first", "second"])
            got = await asyncio.to_thread(lambda: [json.loads(peer.get(20, mine).payload) for _ in range(2)])
    by_id = {a["id"]: a for a in got}
    assert by_id["first"]["error"] is None, by_id["first"]
    assert by_id["second"]["error"]["type"] == "timeout" and by_id["second"]["latency_s"] >= 1.5, by_id["second"]


async def test_admission_per_asker_queue_bound_and_shutdown_answer_every_question(running_mosquitto, paho_peer,
                                                                                  topic_prefix, webrtc_server, stub_llm):
    """One slot, two places per asker: of one asker's five questions one runs, two wait, two get `busy` at once;
    closing the agent then answers the waiting ones `shutdown` (and the running one, past its grace): five answers."""
    stub_llm.delay_s = 30.0
    ask, mine = Topics(topic_prefix).ask, f"{topic_prefix}/reply/one"
    peer = paho_peer("5")
    peer.subscribe(mine)
    ids = [f"q{i}" for i in range(5)]
    async with _camera(webrtc_server):
        async with agent_over_mqtt(running_mosquitto, topic_prefix, webrtc_server, _llm(stub_llm), max_in_flight=1,
                                   max_queued_per_asker=2, question_timeout_s=60, queue_wait_s=50) as agent:
            _ask(peer, ask, mine, ids)
            busy = await asyncio.to_thread(lambda: [json.loads(peer.get(20, mine).payload) for _ in range(2)])
            await wait_until(lambda: agent.admission.waiting == 2 and len(stub_llm.requests) == 1, 10,
                             "one question at the model, two waiting")
        rest = await asyncio.to_thread(lambda: [json.loads(peer.get(20, mine).payload) for _ in range(3)])
    assert {a["error"]["type"] for a in busy} == {"busy"} and all("max_queued_per_asker" in a["error"]["message"]
                                                                  for a in busy)
    assert [a["error"]["type"] for a in rest] == ["shutdown"] * 3
    assert sorted(a["id"] for a in busy + rest) == ids


# --- the policy alone (no peers needed: `Admission` is plain bookkeeping on the event loop) ---------------------------


def _admission(**kw) -> Admission:
    return Admission(**{"max_in_flight": 2, "max_queued_per_asker": 3, "max_queued": 8, "queue_wait_s": 5.0, **kw})


async def test_admission_a_freed_slot_goes_to_the_asker_with_fewest_in_flight():
    admission = _admission()
    held = [admission.enter("a"), admission.enter("a")]
    a_waiting = [admission.enter("a") for _ in range(3)]
    b_waiting = admission.enter("b")
    assert all(s.held for s in held) and admission.waiting == 4 and not b_waiting.held
    held[0].release()
    assert b_waiting.held and not any(s.held for s in a_waiting), "b (0 in flight) goes before a's older waiters"
    await b_waiting.wait()
    held[1].release()
    assert a_waiting[0].held, "then a's oldest"
    third, refused = admission.enter("a"), admission.enter("a")  # a: 3 waiting (max_queued_per_asker), then busy
    assert not third.held and third.error is None
    assert refused.error is not None and refused.error.type.value == "busy" and "max_queued_per_asker" in str(refused.error)
    b_waiting.release()
    a_waiting[0].release()
    for slot in [*a_waiting[1:], third]:
        await slot.wait()
        slot.release()
    assert (admission.in_flight, admission.waiting, admission.askers_tracked) == (0, 0, 0)


async def test_admission_many_fresh_askers_keep_its_state_bounded():
    """Ten thousand askers (fresh MQTT response topics): `max_queued` of them wait, the rest get `busy` at once,
    and nothing of them is kept once they are done."""
    admission = _admission(max_queued=32)
    slots = [admission.enter(f"reply/{i}") for i in range(10_000)]
    assert admission.in_flight == 2 and admission.waiting == 32 and admission.askers_tracked == 34
    refused = [s for s in slots if s.error is not None]
    assert len(refused) == 10_000 - 34 and {s.error.type.value for s in refused} == {"busy"}
    with pytest.raises(QuestionError, match="agent.max_queued"):
        await refused[0].wait()
    for slot in slots:
        slot.release()
    assert (admission.in_flight, admission.waiting, admission.askers_tracked) == (0, 0, 0)


async def test_admission_a_waiter_gets_busy_when_its_turn_does_not_come_in_time():
    admission = _admission(max_in_flight=1, queue_wait_s=0.05)
    held = admission.enter("a")
    late = admission.enter("b")
    with pytest.raises(QuestionError, match="agent.queue_wait_s") as exc:
        await late.wait()
    assert exc.value.type.value == "busy" and admission.waiting == 0
    sooner = admission.enter("b")  # a deadline sooner than queue_wait_s wins
    with pytest.raises(QuestionError):
        await sooner.wait(deadline=time.monotonic())
    held.release()
    assert (admission.in_flight, admission.waiting, admission.askers_tracked) == (0, 0, 0)


async def test_admission_close_answers_waiters_shutdown_and_a_cancelled_waiter_leaves_no_trace():
    admission = _admission(max_in_flight=1)
    held = admission.enter("a")
    cancelled = asyncio.create_task(admission.enter("b").wait())
    waiting = [admission.enter("c"), admission.enter("d")]
    await asyncio.sleep(0)  # one loop step: the task is now awaiting its turn
    assert admission.waiting == 3
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert admission.waiting == 2
    admission.close()
    for slot in waiting:
        with pytest.raises(QuestionError) as exc:
            await slot.wait()
        assert exc.value.type.value == "shutdown"
    assert admission.check("e").type.value == "shutdown"
    held.release()
    assert (admission.in_flight, admission.waiting, admission.askers_tracked) == (0, 0, 0)
