#!/usr/bin/env python
"""Rules: change frame → `on` event latency, the model calls the change gate saves, and look-back memory.

Everything runs in this process on one event loop, as in the daemon: a FrameBuffer fed here at 30 fps (640x360),
a RuleEngine on a VisualAgent, mosquitto (tests/fixtures/mqtt.py) and the STAND-IN model of tests/fixtures/llm_stub.py
scripted to answer yes when the picture is bright (tests/rules_scene.py), so the model's own time is ~0 and shown
apart.

1. Latency: the scene flips dark/bright every `--flip-s`; a rule (`on_after: 1`, `check_every_s: 0.5`) turns on at
   each bright phase. Per `on` event (monotonic clock, same process):
     total        first bright frame received → the event received by an MQTT subscriber
     wait         first bright frame → the deciding check took the newest frame (the check interval: policy, not
                  work; it includes the taken frame's age, up to one frame interval)
     model        the model call (the rule engine's own measure, `model_s`)
     agent        the rest: frame taken by the check → event received, less the model (thumbnail, gate, JPEG, request, parse,
                  state, evidence JPEG, look-back strip, MQTT)
     state        the same up to the retained state JSON saying `on` (what Home Assistant's binary_sensor reads;
                  the event follows the evidence JPEG)
2. Change gate: two rules on one mostly static clip (a little sensor noise, a change every `--static-change-s`),
   one with `only_on_change`, one without; model calls of each.
3. Look-back: bytes of one thumbnail of 720p frames of three kinds, times thumbnails a second.

Run it in a loopback-only namespace:
  unshare -n bash -c 'ip link set lo up && ~/.cache/visual-agent/venv/bin/python scripts/bench_rules.py'
The machine is shared while engineers work: figures are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from providers import create_provider  # noqa: E402
from tests.fixtures.llm_stub import start_stub_llm  # noqa: E402
from tests.fixtures.mqtt import Mosquitto  # noqa: E402
from tests.fixtures.webrtc import colour_bars_yuv, draw_counter  # noqa: E402
from tests.rules_scene import BRIGHT, DARK, BrightnessJudge  # noqa: E402
from visual_agent.agent import VisualAgent  # noqa: E402
from visual_agent.config import MqttConfig  # noqa: E402
from visual_agent.mqtt import MqttMessager  # noqa: E402
from visual_agent.rules import RuleConfig, RuleEngine  # noqa: E402
from visual_agent.rules.lookback import LOOKBACK_FPS, make_thumbnail  # noqa: E402
from webrtc import FrameBuffer  # noqa: E402

W, H, FPS = 640, 360, 30


class Feed:
    """One source fed at FPS; `level` is the picture's grey level, `noise` adds sensor-like noise."""

    def __init__(self) -> None:
        self.buffer = FrameBuffer("cam", max_frames=16, max_seconds=2)
        self.level = DARK
        self.noise = 0
        self.n = 0
        self.received: dict[int, float] = {}
        self.changes: list[float] = []
        self._rng = np.random.default_rng(0)

    def source_names(self) -> list[str]:
        return ["cam"]

    def get_buffer(self, name: str) -> FrameBuffer:
        if name != "cam":
            raise KeyError(name)
        return self.buffer

    def set_level(self, level: int) -> None:
        if level != self.level:
            self.level = level
            self.changes.append(-1.0)  # filled with the next frame's arrival

    async def run(self) -> None:
        period = 1.0 / FPS
        next_at = time.monotonic()
        while True:
            yuv = np.full((H * 3 // 2, W), 128, np.uint8)
            yuv[:H] = self.level
            if self.noise:
                yuv[:H] += self._rng.integers(0, self.noise, (H, W), dtype=np.uint8)
            draw_counter(yuv, W, H, self.n)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = self.n
            entry = self.buffer.put(frame)
            self.received[self.n] = entry.received_at
            if self.changes and self.changes[-1] < 0:
                self.changes[-1] = entry.received_at
            self.n += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def line(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"  {name:<7} p50 {pct(ms, 0.5):7.1f} ms   p99 {pct(ms, 0.99):7.1f} ms   (n={len(ms)})"


async def latency(broker: Mosquitto, stub, cycles: int, flip_s: float) -> None:
    feed = Feed()
    feeder = asyncio.create_task(feed.run())
    llm = create_provider({"provider": "vllm", "base_url": stub.base_url, "model_name": stub.model})
    messager = MqttMessager(MqttConfig(host=broker.host, port=broker.port))
    listener = MqttMessager(MqttConfig(host=broker.host, port=broker.port), persistent_session=False, name="listener")
    await messager.start()
    await listener.start()
    await listener.subscribe("bench/cam/rules/lit/event")
    await listener.subscribe("bench/cam/rules/lit")
    agent = VisualAgent(llm=llm, messager=messager, webrtc_driver=feed, prefix="bench")
    rule = RuleConfig(name="lit", source="cam", question="Is the light on?", check_every_s=0.5, on_after=1,
                      off_after=1, cooldown_s=0, lookback_s=3)
    engine = RuleEngine(agent, [rule])
    await engine.start()
    totals, waits, models, agents, to_state = [], [], [], [], []
    try:
        await asyncio.sleep(1.0)
        for _ in range(cycles):
            feed.set_level(BRIGHT)
            state_at = None
            while True:
                msg = await listener.next_message(30)
                event = json.loads(msg.payload)
                if msg.topic.endswith("/lit") and event["state"] == "on" and state_at is None:
                    state_at = msg.received_at
                if msg.topic.endswith("/event") and event["state"] == "on":
                    break
            changed_at = feed.changes[-1]
            # when the deciding check took its frame: the frame's arrival plus its age then
            taken_at = feed.received[event["frames"][0]["pts"]] + event["frames"][0]["age_s"]
            totals.append(msg.received_at - changed_at)
            waits.append(taken_at - changed_at)
            models.append(event["model_s"])
            agents.append(msg.received_at - taken_at - event["model_s"])
            to_state.append((state_at or msg.received_at) - taken_at - event["model_s"])
            await asyncio.sleep(flip_s)
            feed.set_level(DARK)
            await asyncio.sleep(flip_s)
    finally:
        feeder.cancel()
        await engine.close()
        await agent.close(grace_s=0)
        await listener.close(publish_offline=False)
        await messager.close()
        await llm.aclose()
    print(f"1. change frame -> 'on' event, {W}x{H}@{FPS}, check_every_s 0.5, on_after 1, stand-in model:")
    for name, values in (("total", totals), ("wait", waits), ("model", models), ("agent", agents),
                         ("state", to_state)):
        print(line(name, values))


async def change_gate(broker: Mosquitto, stub, seconds: float, change_every_s: float) -> None:
    feed = Feed()
    feed.noise = 3  # sensor noise: frames differ, the picture does not
    feeder = asyncio.create_task(feed.run())
    llm = create_provider({"provider": "vllm", "base_url": stub.base_url, "model_name": stub.model})
    agent = VisualAgent(llm=llm, webrtc_driver=feed, prefix="bench")
    common = dict(source="cam", question="Is the light on?", check_every_s=0.5, cooldown_s=0, lookback_s=0)
    engine = RuleEngine(agent, [RuleConfig(name="gated", only_on_change=True, **common),
                                RuleConfig(name="ungated", only_on_change=False, **common)], calls_per_minute=6000)
    await engine.start()
    started = time.monotonic()
    next_change = started + change_every_s
    try:
        while time.monotonic() - started < seconds:
            await asyncio.sleep(0.1)
            if time.monotonic() >= next_change:
                feed.set_level(BRIGHT if feed.level == DARK else DARK)
                next_change += change_every_s
    finally:
        feeder.cancel()
        rules = {r.config.name: r for r in engine.rules()}
        await engine.close()
        await agent.close(grace_s=0)
        await llm.aclose()
    gated, ungated = rules["gated"], rules["ungated"]
    saved = 1 - gated.checks / max(1, ungated.checks)
    print(f"2. change gate, {seconds:.0f} s mostly static (noise, a change every {change_every_s:.0f} s), check_every_s 0.5:")
    print(f"  only_on_change: {gated.checks} model calls ({gated.skipped_unchanged} skipped); without: "
          f"{ungated.checks} calls -> {saved:.0%} of the calls saved; state agrees: "
          f"{gated.state.state.value == ungated.state.state.value}")


def lookback_memory() -> None:
    rng = np.random.default_rng(1)
    bars = colour_bars_yuv(1280, 720)
    textured = bars.copy()
    textured[:720] = np.clip(textured[:720].astype(int) + rng.integers(-20, 20, (720, 1280)), 0, 255).astype(np.uint8)
    kinds = {"flat grey": np.full((1080, 1280), 100, np.uint8), "colour bars": bars, "bars + noise": textured}
    print(f"3. look-back: {LOOKBACK_FPS:g} thumbnails a second (160 px JPEG) of 1280x720 frames:")
    for name, yuv in kinds.items():
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        size = len(make_thumbnail(frame))
        t0 = time.perf_counter()
        for _ in range(20):
            make_thumbnail(frame)
        per = (time.perf_counter() - t0) / 20
        print(f"  {name:<13} {size:6d} B a thumbnail, {size * LOOKBACK_FPS / 1024:6.1f} kB per second of look-back, "
              f"{per * 1000:.2f} ms to make one")
    decoded = 1280 * 720 * 3 // 2
    print(f"  (decoded yuv420p frames: {decoded * FPS / 1024 / 1024:.1f} MB per second at {FPS} fps)")


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-rules-"))
    workdir.chmod(0o777)
    broker = Mosquitto(workdir)
    broker.start()
    stub = await start_stub_llm()
    stub.reply_fn = BrightnessJudge()
    try:
        await latency(broker, stub, args.cycles, args.flip_s)
        await change_gate(broker, stub, args.static_s, args.static_change_s)
        lookback_memory()
    finally:
        await stub.close()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=20, help="dark/bright flips for the latency")
    p.add_argument("--flip-s", type=float, default=1.2, help="seconds in each phase")
    p.add_argument("--static-s", type=float, default=60, help="length of the mostly static clip")
    p.add_argument("--static-change-s", type=float, default=20, help="a change every this many seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="log the rule engine's decisions")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(relativeCreated)8.0f %(name)s %(message)s")
    print("indicative figures: the machine is shared while engineers work")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
