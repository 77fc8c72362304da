#!/usr/bin/env python
"""Fair share under a flood: asker B's answer latency while asker A floods the agent, against B asking alone.

Everything real but the model: mosquitto, the agent with its MQTT intake (as `tests/agents.py` builds it), a
WebRTC publisher streaming a small picture, and the STAND-IN LLM of `tests/fixtures/llm_stub.py` slowed to
`--model-s` per answer. With `--in-flight` slots the agent answers at most in_flight / model_s questions per second;
A sends `--flood-factor` times that, each question with A's response topic, while B (its own response topic) asks
`--questions` questions one at a time, each once the previous answer came. Three phases, one agent each:

  alone        B asks, nobody floods (the baseline)
  fair share   A floods; the default admission (a bounded wait, a turn per asker)
  no waiting   A floods; agent.max_queued_per_asker 0: the single pool of max_in_flight, busy at once when full

Printed: B's p50/p95 latency (publish to answer, B's clock) and its `busy` answers in each phase, A's answers by
outcome, and the ratio of B's p95 under the flood to B's p95 alone (1.0: the flood costs B nothing; B can at
worst wait for one model call to end before its turn). Every question of A and B must get exactly one answer.

  unshare -n bash -c 'ip link set lo up && ~/.cache/visual-agent/venv/bin/python scripts/bench_fairness.py'
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.agents import agent_over_mqtt  # noqa: E402
from tests.fixtures.llm_stub import start_stub_llm  # noqa: E402
from tests.fixtures.mqtt import Mosquitto, PahoPeer  # noqa: E402
from tests.fixtures.webrtc import CounterVideoTrack, publish  # noqa: E402
from webrtc import WebRTCConfig, WebRTCServer  # noqa: E402


def flood(peer: PahoPeer, ask: str, reply: str, per_s: float, stop: threading.Event, sent: list[str]) -> None:
    """Asker A: one question every 1/per_s seconds until `stop`."""
    next_at = time.monotonic()
    while not stop.is_set():
        qid = f"a{len(sent)}"
        peer.publish(ask, json.dumps({"id": qid, "question": "anything now?"}), response_topic=reply)
        sent.append(qid)
        next_at += 1 / per_s
        stop.wait(max(0.0, next_at - time.monotonic()))


def ask_in_turn(peer: PahoPeer, ask: str, reply: str, n: int) -> list[tuple[str | None, float]]:
    """Asker B: n questions one at a time; (error type or None, seconds from publish to answer)."""
    out = []
    for i in range(n):
        began = time.monotonic()
        peer.publish(ask, json.dumps({"id": f"b{i}", "question": "is the door open?"}), response_topic=reply)
        answer = json.loads(peer.get(120, reply).payload)
        assert answer["id"] == f"b{i}", answer
        out.append(((answer["error"] or {}).get("type"), time.monotonic() - began))
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


async def phase(name: str, broker: Mosquitto, server: WebRTCServer, llm: dict[str, Any], args: argparse.Namespace,
                flood_per_s: float, **agent_kw: Any) -> dict[str, Any]:
    prefix = f"bench/fair_{uuid.uuid4().hex[:6]}"
    ask, a_reply, b_reply = f"{prefix}/ask", f"{prefix}/reply/a", f"{prefix}/reply/b"
    a, b = PahoPeer(broker.host, broker.port), PahoPeer(broker.host, broker.port)
    a.subscribe(a_reply)
    b.subscribe(b_reply)
    stop, sent = threading.Event(), []
    try:
        async with agent_over_mqtt(broker, prefix, server, llm, max_in_flight=args.in_flight,
                                   question_timeout_s=60, **agent_kw) as agent:
            flooder = asyncio.create_task(asyncio.to_thread(flood, a, ask, a_reply, flood_per_s, stop, sent)) \
                if flood_per_s else None
            if flooder is not None:
                while agent.in_flight < args.in_flight:  # the flood holds every slot before B begins
                    await asyncio.sleep(0.01)
            seen = await asyncio.to_thread(ask_in_turn, b, ask, b_reply, args.questions)
            stop.set()
            if flooder is not None:
                await flooder
            a_answers = await asyncio.to_thread(lambda: [json.loads(a.get(120, a_reply).payload) for _ in sent])
    finally:
        a.close()
        b.close()
    assert sorted(x["id"] for x in a_answers) == sorted(sent), "each of A's questions gets exactly one answer"
    answered = [s for error, s in seen if error is None]
    return {"phase": name, "b_answered": len(answered), "b_busy": sum(error == "busy" for error, _ in seen),
            "b_p50": statistics.median(answered) if answered else None, "b_p95": p95(answered) if answered else None,
            "a": dict(collections.Counter((x["error"] or {}).get("type") or "answered" for x in a_answers))}


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-fair-"))
    workdir.chmod(0o777)  # mosquitto started as root drops to its own user and writes here
    broker = Mosquitto(workdir)
    broker.start()
    stub = await start_stub_llm()
    stub.delay_s = args.model_s
    llm = {"base_url": stub.base_url, "model_name": stub.model, "max_retries": 0, "timeout": 60}
    server = WebRTCServer(WebRTCConfig(host="127.0.0.1", port=0, host_candidate_addresses=["127.0.0.1"]))
    await server.start()
    capacity = args.in_flight / args.model_s
    rate = args.flood_factor * capacity
    try:
        async with publish(server.url, CounterVideoTrack(160, 120, 10), source="cam"):
            while "cam" not in server.source_names() or not len(server.get_buffer("cam")):
                await asyncio.sleep(0.05)
            rows = [await phase("alone", broker, server, llm, args, 0),
                    await phase("fair share", broker, server, llm, args, rate),
                    await phase("no waiting", broker, server, llm, args, rate, max_queued_per_asker=0)]
    finally:
        await server.close()
        await stub.close()
        broker.stop()
    print(f"model {args.model_s:g} s, {args.in_flight} slots ({capacity:g} answers/s); A floods {rate:g} questions/s; "
          f"B asks {args.questions} one at a time")
    print(f"{'phase':<12} {'B answered':>10} {'B busy':>7} {'B p50 s':>8} {'B p95 s':>8}  A's answers")
    for r in rows:
        fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"  # noqa: E731
        print(f"{r['phase']:<12} {r['b_answered']:>10} {r['b_busy']:>7} {fmt(r['b_p50'])} {fmt(r['b_p95'])}  {r['a']}")
    alone, fair = rows[0]["b_p95"], rows[1]["b_p95"]
    if alone and fair:
        print(f"B's p95 under the flood / alone: {fair / alone:.2f} (fair share)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-s", type=float, default=0.5, help="the stand-in model's time per answer")
    p.add_argument("--in-flight", type=int, default=4, help="agent.max_in_flight")
    p.add_argument("--flood-factor", type=float, default=3.0, help="A's rate as a multiple of the agent's capacity")
    p.add_argument("--questions", type=int, default=20, help="B's questions per phase")
    asyncio.run(main(p.parse_args()))
