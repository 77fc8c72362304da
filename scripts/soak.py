#!/usr/bin/env python
"""Soak: the daemon for N minutes with a 720p stream, a question every second and a publisher that reconnects every
minute; prints what would leak (RSS, open fds, asyncio tasks, threads, peers, buffers) at start, after warm-up and
at the end, and the growth after warm-up.

The daemon (`visual_agent.daemon.Daemon`: WebRTC ingest, agent, MQTT) runs in this process, so asyncio tasks can be
counted; what drives it runs apart, so its own objects are not counted: the publisher is a separate process
(tests/fixtures/peer_process.py, an aiortc peer; each minute a new one connects with the old session's secret and
the old one is stopped, alternately with a goodbye, SIGTERM, and without, SIGKILL), the asker is a paho client on its
own thread, the broker is mosquitto (if installed; else the daemon's embedded amqtt broker) and the LLM is the
STAND-IN of tests/fixtures/llm_stub.py (a local OpenAI-compatible HTTP server that answers at once: the soak is about
the daemon, not the model).

Snapshots are taken settled: asking paused, every question answered, one publisher live, the stand-in's record of
requests emptied, `gc.collect()`. Two RSS figures: as the kernel sees it, and after glibc's `malloc_trim(0)` hands
freed heap back (`rss_trimmed_mib`). The first grows with each publisher reconnect (a 720p decoder's buffers are
freed but kept by malloc's arenas for reuse), the second is what is really held; the target is on the second.
Target: trimmed RSS growth after warm-up < 5 %, and fds, tasks, threads, peers and buffers at the end equal to
after warm-up.

Run it in a loopback-only namespace (WebRTC picks loopback there):
  unshare -n bash -c 'ip link set lo up && ~/.cache/visual-agent/venv/bin/python scripts/soak.py --minutes 15'
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tests.fixtures.llm_stub import start_stub_llm  # noqa: E402
from visual_agent.config_loading import parse_config  # noqa: E402
from visual_agent.daemon import Daemon  # noqa: E402

COUNTS = ("fds", "tasks", "threads", "peers", "buffers")
"""What must not grow after warm-up (RSS may, by less than `RSS_GROWTH_MAX`)."""
RSS_GROWTH_MAX = 0.05
SOURCE = "cam"


@dataclass
class Snapshot:
    label: str
    t_s: float
    rss_mib: float
    rss_trimmed_mib: float
    fds: int
    tasks: int
    threads: int
    peers: int
    buffers: int
    answers: int
    errors: dict[str, int]


@dataclass
class SoakReport:
    snapshots: list[Snapshot] = field(default_factory=list)
    questions: int = 0
    reconnects: int = 0
    unanswered: int = 0

    def snapshot(self, label: str) -> Snapshot:
        return next(s for s in self.snapshots if s.label == label)

    @property
    def rss_growth(self) -> float:
        warm, end = self.snapshot("warm"), self.snapshot("end")
        return (end.rss_trimmed_mib - warm.rss_trimmed_mib) / warm.rss_trimmed_mib

    def grown(self) -> dict[str, tuple[int, int]]:
        """The counts higher at the end than after warm-up: name -> (warm, end)."""
        warm, end = self.snapshot("warm"), self.snapshot("end")
        return {k: (getattr(warm, k), getattr(end, k)) for k in COUNTS if getattr(end, k) > getattr(warm, k)}

    def table(self) -> str:
        rows = ["| when | t (s) | RSS (MiB) | RSS trimmed (MiB) | fds | tasks | threads | peers | buffers | answers | errors |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in self.snapshots:
            rows.append(f"| {s.label} | {s.t_s:.0f} | {s.rss_mib:.1f} | {s.rss_trimmed_mib:.1f} | {s.fds} | {s.tasks} "
                        f"| {s.threads} | {s.peers} "
                        f"| {s.buffers} | {s.answers} | {sum(s.errors.values())} |")
        grown = self.grown()
        rows.append("")
        rows.append(f"questions {self.questions}, publisher reconnects {self.reconnects}, unanswered {self.unanswered}; "
                    f"trimmed RSS growth after warm-up {self.rss_growth * 100:+.2f} % (target < {RSS_GROWTH_MAX * 100:g} %); "
                    f"counts grown after warm-up: {grown or 'none'}")
        return "\n".join(rows)


class Asker:
    """A paho client on its own thread: asks on `<prefix>/ask`, collects answers by id."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.prefix = prefix
        self.answers: dict[str, dict] = {}
        self.duplicates = 0
        self.asked: set[str] = set()
        self._subscribed: queue.Queue[bool] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.put(True)
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/answer", qos=1)
        self._subscribed.get(timeout=10)

    def _on_message(self, client, userdata, msg) -> None:
        answer = json.loads(msg.payload)
        if answer.get("id") in self.answers:
            self.duplicates += 1
        self.answers[answer.get("id")] = answer

    def ask(self, text: str) -> None:
        qid = uuid.uuid4().hex[:10]
        self.asked.add(qid)
        self.client.publish(f"{self.prefix}/ask", json.dumps({"id": qid, "question": text, "source": SOURCE}), qos=1)

    @property
    def pending(self) -> int:
        return len(self.asked - set(self.answers))

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.answers.values():
            if a.get("error"):
                out[a["error"]["type"]] = out.get(a["error"]["type"], 0) + 1
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Publisher:
    """The publisher process; `reconnect()` starts a new one that takes over the session, then stops the old."""

    def __init__(self, url: str, width: int, height: int, fps: int) -> None:
        self.url, self.size, self.fps = url, (width, height), fps
        self.proc: asyncio.subprocess.Process | None = None
        self.secret: str | None = None
        self.stops = 0

    async def _start(self, replaces: str | None) -> tuple[asyncio.subprocess.Process, dict]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fixtures.peer_process", self.url, SOURCE, "offer", str(self.size[0]),
            str(self.size[1]), replaces or "-", str(self.fps), stdout=asyncio.subprocess.PIPE, cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the publisher process ended before it connected")
        return proc, json.loads(line)

    async def start(self) -> None:
        self.proc, hello = await self._start(None)
        self.secret = hello["secret"]

    async def reconnect(self) -> None:
        old = self.proc
        self.proc, hello = await self._start(self.secret)
        self.secret = hello["secret"]
        if old is not None:
            await self._stop(old)

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        self.stops += 1
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL if self.stops % 2 else signal.SIGTERM)  # vanish, then goodbye, ...
        await proc.wait()

    async def close(self) -> None:
        if self.proc is not None:
            await self._stop(self.proc)
            self.proc = None


def _malloc_trim() -> None:
    """Hand the heap's free memory back to the kernel (glibc); elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"soak: {what} not within {timeout:g} s")
        await asyncio.sleep(0.05)


def _start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        return None
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


async def soak(*, seconds: float, warmup_s: float, reconnect_s: float, ask_every_s: float, width: int, height: int,
               fps: int, broker: tuple[str, int] | None = None, embedded: bool = False, log=print) -> SoakReport:
    """Run the soak; `broker` (host, port) uses that broker, else mosquitto if installed (or `embedded`)."""
    report = SoakReport()
    stub = await start_stub_llm()
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    mosquitto = None
    if broker is None and not embedded:
        started = _start_mosquitto(workdir)
        if started is not None:
            mosquitto, port = started
            broker = ("127.0.0.1", port)
    prefix = f"soak{uuid.uuid4().hex[:6]}"
    mqtt: dict[str, Any] = {"prefix": prefix, "reconnect_min_s": 0.1}
    if broker is not None:
        mqtt.update(host=broker[0], port=broker[1])
    else:
        mqtt.update(embedded_port=_free_port())
    config = parse_config({
        "llm": {"provider": "openai", "base_url": stub.base_url, "model_name": stub.model, "max_retries": 0, "timeout": 10},
        "webrtc": {"host": "127.0.0.1", "port": _free_port(), "host_candidate_addresses": ["127.0.0.1"]},
        "agent": {"question_timeout_s": 10, "frame_wait_s": 5},
        "mqtt": mqtt,
    }, environ={})
    daemon = Daemon(config)
    await daemon.start()
    assert daemon.driver is not None and daemon.messager is not None
    await daemon.messager.wait_connected(10)
    host, port = (daemon.messager.host, daemon.messager.port)
    asker = await asyncio.to_thread(Asker, host, port, prefix)
    publisher = Publisher(daemon.driver.url, width, height, fps)
    proc = psutil.Process()
    t0 = time.monotonic()

    async def settled(label: str) -> None:
        await _until(lambda: asker.pending == 0, 30, "every question answered")
        await _until(lambda: len(daemon.driver.peers()) == 1 and daemon.agent.in_flight == 0, 30, "one live publisher")
        stub.requests.clear()  # the stand-in keeps up to 200 requests (images included): not the daemon's memory
        gc.collect()
        rss = proc.memory_info().rss / 2**20
        _malloc_trim()
        snap = Snapshot(label=label, t_s=time.monotonic() - t0, rss_mib=rss,
                        rss_trimmed_mib=proc.memory_info().rss / 2**20, fds=proc.num_fds(),
                        tasks=len(asyncio.all_tasks()), threads=proc.num_threads(),
                        peers=len(daemon.driver.peers()), buffers=len(daemon.driver.buffers),
                        answers=len(asker.answers), errors=asker.errors())
        report.snapshots.append(snap)
        log(f"soak: {label}: {json.dumps(asdict(snap))}")

    try:
        await publisher.start()
        await daemon.driver.get_buffer(SOURCE).wait_for_frame(30)
        for _ in range(3):
            asker.ask("what is there?")
        await settled("start")
        next_reconnect = time.monotonic() + reconnect_s
        warm_at, end_at = t0 + warmup_s, t0 + seconds
        warm_done = False
        next_ask = time.monotonic()
        while time.monotonic() < end_at:
            now = time.monotonic()
            if now >= next_reconnect:
                await publisher.reconnect()
                report.reconnects += 1
                next_reconnect = time.monotonic() + reconnect_s
                await daemon.driver.get_buffer(SOURCE).wait_for_frame(30)
            if not warm_done and now >= warm_at:
                await settled("warm")
                warm_done = True
            if now >= next_ask:
                asker.ask(f"question {report.questions}: what is there?")
                report.questions += 1
                next_ask += ask_every_s
            await asyncio.sleep(max(0.0, min(next_ask, next_reconnect, end_at) - time.monotonic()))
        if not warm_done:
            await settled("warm")
        await settled("end")
        report.unanswered = asker.pending
        if asker.duplicates:
            log(f"soak: {asker.duplicates} duplicate answers")
    finally:
        await publisher.close()
        await asyncio.to_thread(asker.close)
        await daemon.close()
        await stub.close()
        if mosquitto is not None:
            mosquitto.terminate()
            mosquitto.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--warmup-s", type=float, default=None, help="default: 10 %% of the run, at least one reconnect")
    ap.add_argument("--reconnect-s", type=float, default=60.0)
    ap.add_argument("--ask-every-s", type=float, default=1.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--embedded-broker", action="store_true", help="the daemon's amqtt broker even if mosquitto is installed")
    args = ap.parse_args()
    seconds = args.minutes * 60
    warmup = args.warmup_s if args.warmup_s is not None else max(seconds * 0.1, args.reconnect_s * 1.5)
    width, height = (int(v) for v in args.size.split("x"))
    print(f"soak: {args.minutes:g} min, {width}x{height}@{args.fps}, a question every {args.ask_every_s:g} s, "
          f"reconnect every {args.reconnect_s:g} s, warm-up {warmup:g} s; load {os.getloadavg()}", flush=True)
    report = asyncio.run(soak(seconds=seconds, warmup_s=warmup, reconnect_s=args.reconnect_s,
                              ask_every_s=args.ask_every_s, width=width, height=height, fps=args.fps,
                              embedded=args.embedded_broker, log=lambda m: print(m, flush=True)))
    print(report.table())
    print(f"load after: {os.getloadavg()}")
    ok = report.rss_growth < RSS_GROWTH_MAX and not report.grown() and report.unanswered == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
