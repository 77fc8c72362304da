#!/usr/bin/env python
"""Agent overhead: question arrival → LLM request, and LLM answer → MQTT publish, with a 720p stream running.

Everything runs in this process on one event loop, as in the daemon: a WebRTCServer receiving a 1280x720@30
aiortc stream (moving picture, so the codec works), an MqttMessager-driven VisualAgent, a broker (mosquitto if
installed and not --embedded-broker, else the embedded amqtt; its QoS-1 round trip is ~44 ms without the
messager's TCP_NODELAY, well under 1 ms with it), and a local OpenAI-compatible HTTP server written here that answers at once
(so the LLM's own time is ~0 and what is left is the agent's work: frame pick, JPEG of the 720p frame, request
building, HTTP, answer JSON, MQTT publish).

Measured per question (monotonic clock, same process):
  to_request   MQTT message handed over by paho → the HTTP server has the request
  to_publish   the HTTP server returned its answer → the answer is handed to MQTT (agent's timing)
  to_asker     the HTTP server returned its answer → the asker received the answer over the broker
Baselines in the same run: a bare QoS-1 MQTT round trip through the same broker, and a bare HTTP POST of the same
request (image included) to the same server with the same client library; the ratio says how much the agent adds
on top of the two hops it cannot avoid.

Run it in a loopback-only namespace (WebRTC picks loopback there):
  unshare -n bash -c 'ip link set lo up && ~/.cache/visual-agent/venv/bin/python scripts/bench_agent.py'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from providers import create_provider  # noqa: E402
from tests.fixtures.webrtc import CounterVideoTrack, publish  # noqa: E402
from visual_agent.agent import VisualAgent  # noqa: E402
from visual_agent.broker import EmbeddedBroker  # noqa: E402
from visual_agent.config import AgentConfig, MqttConfig  # noqa: E402
from visual_agent.intakes import serve  # noqa: E402
from visual_agent.mqtt import MqttMessager  # noqa: E402
from visual_agent.topics import Topics  # noqa: E402
from webrtc import WebRTCConfig, WebRTCServer  # noqa: E402

MODEL = "instant"


class InstantLLM:
    """An OpenAI-compatible chat server that answers at once and notes when each request came and went."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.returned: dict[str, float] = {}
        self.base_url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        body = await request.json()
        content = body["messages"][-1]["content"]
        text = content[0]["text"] if isinstance(content, list) else str(content)
        qid = text.rsplit(" ", 1)[-1]
        self.arrived[qid] = now
        payload = {"id": "x", "object": "chat.completion", "created": int(time.time()), "model": MODEL,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        self.returned[qid] = time.monotonic()
        return web.json_response(payload)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto() -> tuple[subprocess.Popen | None, int, str]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        return None, 0, ""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-mosquitto-")
    conf = Path(workdir) / "m.conf"
    # set_tcp_nodelay: without it mosquitto's Nagle waits for the asker's delayed ACK (~30 ms per answer)
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port, f"mosquitto {port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None, 0, ""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"| {name} | {pct(ms, 50):.2f} | {pct(ms, 99):.2f} | {statistics.fmean(ms):.2f} | {len(ms)} |"


async def bench(n: int, interval_s: float, width: int, height: int, frames: int, embedded_broker: bool = False) -> dict:
    llm_server = InstantLLM()
    await llm_server.start()
    mosq, port, broker_name = (None, 0, "") if embedded_broker else start_mosquitto()
    embedded = None
    if mosq is None:
        embedded = await EmbeddedBroker(0).start()
        port, broker_name = embedded.port, f"embedded amqtt {embedded.port}"
    mqtt_cfg = MqttConfig(host="127.0.0.1", port=port)
    prefix = "bench"
    t = Topics(prefix).as_dict()
    server = WebRTCServer(WebRTCConfig(host="127.0.0.1", port=0, host_candidate_addresses=["127.0.0.1"]))
    await server.start()
    llm = create_provider({"provider": "openai", "base_url": llm_server.base_url, "model_name": MODEL, "max_retries": 0})
    agent_mqtt = MqttMessager(mqtt_cfg, status_topic=t["status"], name="agent-mqtt")
    asker = MqttMessager(mqtt_cfg, persistent_session=False, name="asker")
    await agent_mqtt.start()
    await asker.start()
    await asker.subscribe(t["answer"])
    await asker.subscribe("bench/echo")
    agent = VisualAgent(llm=llm, messager=agent_mqtt, webrtc_driver=server,
                        config=AgentConfig(frames=frames, max_in_flight=8), prefix=prefix, provider_name="openai")
    stack = contextlib.AsyncExitStack()
    await serve(stack, agent)
    results: dict = {"broker": broker_name}
    try:
        track = CounterVideoTrack(width, height, 30, moving=True)
        async with publish(server.url, track, source="cam"):
            while "cam" not in server.source_names():
                await asyncio.sleep(0.05)
            await server.get_buffer("cam").wait_for_frame(20)
            await asyncio.sleep(2.0)  # let the stream settle at full resolution
            stats_before = server.get_buffer("cam").stats()

            # baseline 1: bare QoS-1 MQTT round trip through the same broker
            mqtt_rtt = []
            for i in range(n):
                t0 = time.monotonic()
                await asker.publish("bench/echo", f"echo {i}")
                await asker.next_message(5)
                mqtt_rtt.append(time.monotonic() - t0)
                await asyncio.sleep(interval_s / 4)

            # baseline 2: bare HTTP chat request with one JPEG of a 720p frame, same client library
            newest = server.get_buffer("cam").latest().frame
            url = await asyncio.to_thread(agent.encoding.jpeg_encoder.data_url, newest)
            http_rtt = []
            for i in range(n):
                msgs = [{"role": "system", "content": "x"}, {"role": "user", "content": [
                    {"type": "text", "text": f"baseline b{i}"}, {"type": "image_url", "image_url": {"url": url}}]}]
                t0 = time.monotonic()
                await llm.achat(msgs)
                http_rtt.append(time.monotonic() - t0)
                await asyncio.sleep(interval_s / 4)

            # the agent
            to_request, to_publish, to_asker, agent_to_llm, total = [], [], [], [], []
            to_task, encode = [], []
            for i in range(n):
                qid = f"q{i}"
                t0 = time.monotonic()
                await asker.publish(t["ask"], json.dumps({"id": qid, "question": f"bench {qid}"}))
                while True:
                    msg = await asker.next_message(10)
                    if msg.topic == t["answer"] and json.loads(msg.payload)["id"] == qid:
                        break
                got = time.monotonic()
                answer = json.loads(msg.payload)
                assert answer["error"] is None, answer
                timing = agent.timings[-1]
                assert timing.id == qid
                to_request.append(llm_server.arrived[qid] - timing.received_at)
                to_publish.append(timing.published_at - llm_server.returned[qid])
                to_asker.append(got - llm_server.returned[qid])
                agent_to_llm.append(timing.to_llm_s)
                to_task.append(timing.started_at - timing.received_at)
                encode.append(timing.encoded_at - timing.started_at)
                total.append(got - t0)
                await asyncio.sleep(interval_s)
            stats_after = server.get_buffer("cam").stats()
    finally:
        await stack.aclose()
        await asker.close()
        await agent_mqtt.close()
        await llm.aclose()
        await server.close()
        await llm_server.close()
        if embedded is not None:
            await embedded.close()
        if mosq is not None:
            mosq.terminate()
            mosq.wait(5)
    results.update(mqtt_rtt=mqtt_rtt, http_rtt=http_rtt, to_request=to_request, to_publish=to_publish,
                   to_asker=to_asker, agent_to_llm=agent_to_llm, total=total, to_task=to_task, encode=encode,
                   stream=f"{stats_after.width}x{stats_after.height} @ {stats_after.fps:.1f} fps "
                          f"(received {stats_after.received - stats_before.received} frames during the run)")
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=200, help="questions (and baseline round trips)")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between questions")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--frames", type=int, default=1, help="frames per question")
    p.add_argument("--embedded-broker", action="store_true", help="use the embedded amqtt broker even if mosquitto is here")
    args = p.parse_args()
    r = asyncio.run(bench(args.n, args.interval, args.width, args.height, args.frames, args.embedded_broker))
    print(f"stream: {r['stream']}; broker: {r['broker']}; frames per question: {args.frames}; questions: {args.n}")
    print("| path | p50 ms | p99 ms | mean ms | n |")
    print("| --- | --- | --- | --- | --- |")
    print(row("arrival → LLM request received by the server", r["to_request"]))
    print(row("  of which inside the agent (arrival → request sent)", r["agent_to_llm"]))
    print(row("    arrival → question task running", r["to_task"]))
    print(row("    frame taken + JPEG (worker thread)", r["encode"]))
    print(row("LLM answer returned → answer handed to MQTT", r["to_publish"]))
    print(row("LLM answer returned → asker has the answer", r["to_asker"]))
    print(row("question published → answer received (whole loop)", r["total"]))
    print(row("baseline: bare MQTT QoS-1 round trip", r["mqtt_rtt"]))
    print(row("baseline: bare HTTP chat request with the JPEG", r["http_rtt"]))
    overhead = pct(r["to_request"], 50) + pct(r["to_publish"], 50)
    base = pct(r["mqtt_rtt"], 50) + pct(r["http_rtt"], 50)
    print(f"ratio: whole loop p50 / (bare MQTT + bare HTTP) p50 = {pct(r['total'], 50) / base:.2f}x")
    print(f"agent overhead p50 (to_request + to_publish) = {overhead * 1000:.2f} ms (target < 15 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
