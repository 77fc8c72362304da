#!/usr/bin/env python
"""Many streams into one `visual-agent run`: the daemon's CPU, RSS, and each stream's fps and newest-frame age.

Cheap publishers: a clip of `--clip-frames` frames (colour bars, a scrolling noise band, a moving square, as in
tests/fixtures/webrtc.py) is encoded to VP8 once with PyAV; a child process then replays those packets to the daemon
over N aiortc peer connections (aiortc packetizes `av.Packet`s without encoding), paced at `--fps`, looping on the
clip's keyframe. So the senders cost about 1 % of a core per stream and the daemon's figures are its own.

For each N in `--streams`: start the daemon (MQTT off, no LLM: nothing is asked), note its RSS with no stream, connect
N publishers one after the other (source `s<i>`), wait until every source has frames, warm up, then for `--seconds`:

- daemon CPU: utime + stime of the daemon process (every thread) / wall time, as % of one core, and how it splits
  between the event loop's thread (the main thread) and the others (the shared decode pool, one thread per core);
- daemon RSS at the end, (RSS - RSS before the first stream) / N per stream, and the RSS added per stream since the
  previous N of the run (the slope, without the one-off cost of the first peer: importing aiortc, its first arenas);
- per-stream fps from `visual_agent_frames_received_total` (GET /metrics) at the start and end of the window: min
  and median over the streams;
- newest-frame age: `visual_agent_frame_age_seconds{source}` of every stream, scraped every `--probe-s`, p50/p99
  over all probes (a scrape is itself a little work on the daemon's loop);
- UDP datagrams received in the namespace and those the kernel dropped for a full receive buffer (/proc/net/snmp
  `RcvbufErrors`), and the keyframes the daemon asked for (PLI/FIR; the replay answers one by jumping to the clip's
  keyframe, as a camera's encoder would).

Run it in a loopback-only network namespace, like the tests:
    unshare -n sh -c 'ip link set lo up && ~/.cache/visual-agent/venv/bin/python scripts/bench_scale.py --streams 1,4,8'
Extra daemon config: `--set webrtc.buffer_max_frames=8` (repeatable; values read as YAML). `--py-spy` records the
daemon with py-spy during the window (`pip install py-spy`) and prints each thread's share of the samples and the
functions that take the most (self time), so what is ours at saturation shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
VIDEO_CLOCK = 90_000


def py_spy() -> str:
    """py-spy beside this interpreter (a venv's bin/ need not be on PATH), else the one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else "py-spy"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int, thread: int | None = None) -> float:
    """CPU seconds of the process (every thread), or of one of its threads."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_by_mapping(pid: int) -> dict[str, float]:
    """Resident MB of the process by kind of mapping: [heap], thread arenas and stacks (anonymous), other anonymous
    memory (mmapped buffers: frames, libvpx), and file-backed (code)."""
    out = {"heap": 0.0, "anon <= 1 MB": 0.0, "anon > 1 MB": 0.0, "file": 0.0}
    kind = "file"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header line
            start, end = (int(x, 16) for x in head[0].split("-"))
            name = head[5] if len(head) > 5 else ""
            if name == "[heap]":
                kind = "heap"
            elif name and not name.startswith("["):
                kind = "file"
            else:
                kind = "anon > 1 MB" if end - start > (1 << 20) else "anon <= 1 MB"
        elif head[0] == "Rss:":
            out[kind] += int(head[1]) / 1024
    return {k: round(v, 1) for k, v in out.items()}


def udp_counters() -> dict[str, int]:
    """This network namespace's UDP counters (/proc/net/snmp): datagrams in, and those the kernel dropped for a full
    socket receive buffer (the loop reading its sockets too late)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    values = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=True))
    return {"in_datagrams": values["InDatagrams"], "rcvbuf_errors": values["RcvbufErrors"]}


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the clip, encoded once ---------------------------------------------------------------------

def encode_clip(width: int, height: int, fps: int, frames: int, path: Path) -> None:
    """VP8 packets of `frames` frames, the first a keyframe and no other (the replay loops on it)."""
    from tests.fixtures.webrtc import encode_moving_clip

    packets = encode_moving_clip("libvpx", width, height, fps, frames, gop=frames,
                                 bit_rate=1_500_000 * width * height // (640 * 480))
    path.write_text(json.dumps([bytes(p).hex() for p in packets]))


# --- senders (child process) --------------------------------------------------------------------

async def run_senders(args: argparse.Namespace) -> None:
    import av
    from aiortc import MediaStreamTrack
    from aiortc.rtcrtpsender import RTCRtpSender

    from tests.fixtures.webrtc import publish

    packets = [bytes.fromhex(p) for p in json.loads(Path(args.clip).read_text())]
    keyframes = 0
    send_keyframe = RTCRtpSender._send_keyframe

    def answer_picture_loss(sender: RTCRtpSender) -> None:
        """A PLI/FIR from the daemon: aiortc cannot re-encode a packet track, so the replay jumps to the clip's
        keyframe, as a camera's encoder would make one."""
        nonlocal keyframes
        send_keyframe(sender)
        if isinstance(sender.track, ReplayTrack):
            sender.track.keyframe_requested = True
            keyframes += 1

    RTCRtpSender._send_keyframe = answer_picture_loss  # type: ignore[method-assign]

    class ReplayTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self.n = 0
            self.offset = 0
            self.keyframe_requested = False
            self.start: float | None = None

        async def recv(self) -> av.Packet:
            if self.start is None:
                self.start = time.monotonic()
            delay = self.start + self.n / args.fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.keyframe_requested:
                self.keyframe_requested = False
                self.offset = -self.n % len(packets)
            packet = av.Packet(packets[(self.n + self.offset) % len(packets)])
            packet.pts = self.n * VIDEO_CLOCK // args.fps
            packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
            self.n += 1
            return packet

    async with contextlib.AsyncExitStack() as stack:
        for i in range(args.first, args.first + args.n):
            publisher = await stack.enter_async_context(publish(args.url, ReplayTrack(), source=f"s{i}", codec="VP8"))
            for _ in range(200):  # one at a time: the server limits sessions still connecting per address
                if publisher.pc.connectionState == "connected":
                    break
                await asyncio.sleep(0.05)
        print("connected", flush=True)
        cpu0, t0 = time.process_time(), time.monotonic()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        print(json.dumps({"sender_cpu_pct": 100 * (time.process_time() - cpu0) / (time.monotonic() - t0),
                          "keyframes_requested": keyframes}), flush=True)


# --- one measurement ----------------------------------------------------------------------------

def scrape(url: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("visual_agent_frames_received_total", "visual_agent_frame_age_seconds"):
                out[(s.name, s.labels["source"])] = s.value
    return out


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def measure(n: int, args: argparse.Namespace, clip: Path, workdir: Path) -> dict:
    port = free_port()
    webrtc = {"host": "127.0.0.1", "port": port, "host_candidate_addresses": ["127.0.0.1"], "max_peers": max(8, n + 1),
              "max_sources": max(32, n)}
    config: dict = {"llm": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model_name": "none"},
                    "webrtc": webrtc, "mqtt": {"enabled": False}}
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        config.setdefault(section, {})[name] = yaml.safe_load(value)
    cfg_path = workdir / f"scale-{n}.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / f"daemon-{n}.log", "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "visual_agent.cli", "run", "--config", str(cfg_path)],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    senders: list[subprocess.Popen] = []
    try:
        wait_until(lambda: _up(url), 60, "daemon page")
        time.sleep(1.0)
        rss_idle = proc_rss_mb(daemon.pid)
        procs = max(1, min(args.sender_procs, n))
        for p in range(procs):  # stream i goes to process i * procs // n, names s0..s<n-1> in order
            first, count = p * n // procs, (p + 1) * n // procs - p * n // procs
            senders.append(subprocess.Popen([sys.executable, __file__, "--sender", "--url", url, "--n", str(count),
                                             "--first", str(first), "--clip", str(clip), "--fps", str(args.fps)],
                                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}))
            assert senders[-1].stdout is not None
            line = senders[-1].stdout.readline()
            if line.strip() != "connected":
                raise RuntimeError(f"senders: {line!r}")
        names = [f"s{i}" for i in range(n)]
        wait_until(lambda: all(scrape(url).get(("visual_agent_frames_received_total", s), 0) > 30 for s in names),
                   30, "frames on every stream")
        time.sleep(args.warmup)
        first = scrape(url)
        spy = None
        if args.py_spy:
            spy_out = workdir / f"py-spy-{n}.txt"
            spy = subprocess.Popen([py_spy(), "record", "--pid", str(daemon.pid), "--duration", str(int(args.seconds)),
                                    "--format", "raw", "--threads", "--output", str(spy_out), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        udp0 = udp_counters()
        cpu0, loop0, t0 = proc_cpu_s(daemon.pid), proc_cpu_s(daemon.pid, daemon.pid), time.monotonic()
        ages: list[float] = []
        rss_peak = 0.0
        while time.monotonic() - t0 < args.seconds:
            sample = scrape(url)
            ages += [sample[("visual_agent_frame_age_seconds", s)] for s in names if ("visual_agent_frame_age_seconds", s) in sample]
            rss_peak = max(rss_peak, proc_rss_mb(daemon.pid))
            time.sleep(args.probe_s)
        last = scrape(url)
        wall = time.monotonic() - t0
        udp1 = udp_counters()
        cpu = proc_cpu_s(daemon.pid) - cpu0
        loop_cpu = proc_cpu_s(daemon.pid, daemon.pid) - loop0  # the main thread: the event loop
        rss = proc_rss_mb(daemon.pid)
        mappings = rss_by_mapping(daemon.pid)
        threads = len(list(Path(f"/proc/{daemon.pid}/task").iterdir()))
        fps = [(last[("visual_agent_frames_received_total", s)] - first[("visual_agent_frames_received_total", s)]) / wall
               for s in names]
        profile = None
        if spy is not None:
            spy.wait(timeout=args.seconds + 30)
            profile = summarize_py_spy(spy_out)
        sender_cpu, keyframes = 0.0, 0
        for proc in senders:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"sender_cpu_pct": float("nan")}
            sender_cpu += report["sender_cpu_pct"]
            keyframes += report.get("keyframes_requested", 0)
        return {
            "streams": n, "cpu_pct": round(100 * cpu / wall, 1), "loop_thread_cpu_pct": round(100 * loop_cpu / wall, 1),
            "other_threads_cpu_pct": round(100 * (cpu - loop_cpu) / wall, 1), "rss_mb": round(rss, 1), "rss_peak_mb": round(rss_peak, 1),
            "rss_idle_mb": round(rss_idle, 1), "rss_per_stream_mb": round((rss - rss_idle) / n, 2),
            "fps_min": round(min(fps), 1), "fps_median": round(statistics.median(fps), 1),
            "age_p50_ms": round(1000 * percentile(ages, 50), 1), "age_p99_ms": round(1000 * percentile(ages, 99), 1),
            "age_probes": len(ages), "sender_cpu_pct": round(sender_cpu, 1),
            "sender_procs": len(senders), "keyframes_requested": keyframes,
            "udp_in_datagrams": udp1["in_datagrams"] - udp0["in_datagrams"],
            "udp_rcvbuf_errors": udp1["rcvbuf_errors"] - udp0["rcvbuf_errors"],
            "rss_by_mapping_mb": mappings, **({"py_spy": profile} if profile else {}), "threads": threads,
        }
    finally:
        for proc in [*senders, daemon]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        log.close()


def buffers_only(args: argparse.Namespace, clip: Path, width: int, height: int) -> None:
    """What a stream's decoded frames cost without the network and with no load sensitivity: in this process, N
    streams of the clip, each through its own `FFmpegVideoDecoder` into a `FrameBuffer` as `visual-agent run` makes
    it (newest + 7 older, 2 s), fed on a simulated 30 fps clock for 3 s; RSS per added stream, with the older frames
    kept as decoded and kept at 512 px (`webrtc.buffer_older_max_side`), each in a fresh child process."""
    for older in (None, 512):
        code = (f"import json; from scripts.bench_scale import feed_buffers; "
                f"print(json.dumps(feed_buffers({str(clip)!r}, {args.streams!r}, {older!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{width}x{height}, older frames {'as decoded' if older is None else f'at {older} px'}: " +
              "; ".join(f"{n} streams {rss:.1f} MB" for n, rss in rows) +
              f"; per added stream {(rows[-1][1] - rows[0][1]) / (rows[-1][0] - rows[0][0]):.2f} MB", flush=True)


def feed_buffers(clip: str, streams: str, older: int | None) -> list[tuple[int, float]]:
    """In this process: for each N, N decoders and buffers fed 90 frames of the clip; [(N, RSS MB)]."""
    import av

    from webrtc import FrameBuffer
    from webrtc.decoders import FFmpegVideoDecoder

    packets = [bytes.fromhex(p) for p in json.loads(Path(clip).read_text())]
    now = [0.0]
    held: list = []
    out = []
    for n in (int(x) for x in streams.split(",")):
        while len(held) < n:
            held.append((FFmpegVideoDecoder("vp8"), FrameBuffer(f"s{len(held)}", max_frames=32, max_seconds=2.0,
                                                                spread_frames=7, older_max_side=older,
                                                                clock=lambda: now[0])))
        for i in range(90):
            now[0] += 1 / 30
            for decoder, buffer in held:
                for frame in decoder.codec.decode(av.Packet(packets[i % len(packets)])):
                    buffer.put(frame)
        out.append((n, proc_rss_mb(os.getpid())))
    return out


def summarize_py_spy(path: Path, top: int = 15) -> dict:
    """Thread shares and the top self-time functions of a py-spy raw (collapsed stacks) record, over the samples
    that were not waiting (a thread blocked in a lock, a queue or the selector is idle, not busy)."""
    threads: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        if any(frames[-1].startswith(idle) for idle in _IDLE_FRAMES):
            continue
        total += n
        thread = frames[0].split("): ", 1)[-1]  # "thread (1234): video-decode-0": the pool's threads together
        thread = "video-decode" if thread.startswith("video-decode") else thread
        threads[thread] = threads.get(thread, 0) + n
        leaf = frames[-1]
        leaves[leaf] = leaves.get(leaf, 0) + n
    def share(counts: dict[str, int]) -> dict[str, float]:
        return {k: round(100 * v / max(total, 1), 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:top]}

    return {"busy_samples": total, "threads_pct": share(threads), "self_pct": share(leaves)}


_IDLE_FRAMES = ("Condition.wait ", "EpollSelector.select ", "Event.wait ", "Queue.get ", "select ")


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2):
            return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,4,8,16,24,32", help="comma-separated N")
    parser.add_argument("--res", default="640x480", help="WIDTHxHEIGHT (640x480, 1280x720)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--probe-s", type=float, default=0.25)
    parser.add_argument("--clip-frames", type=int, default=60)
    parser.add_argument("--set", action="append", default=[], help="daemon config SECTION.KEY=VALUE")
    parser.add_argument("--logs", help="keep the daemons' logs and configs in this folder")
    parser.add_argument("--buffers-only", action="store_true",
                        help="no daemon, no network: decoders and buffers in-process, older frames as decoded vs 512 px")
    parser.add_argument("--json", action="store_true", help="print one JSON object per N instead of a table")
    parser.add_argument("--py-spy", action="store_true", help="profile the daemon during the window (py-spy)")
    # child mode
    parser.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--sender-procs", type=int, default=1,
                        help="spread the publishers over this many child processes (their Python RTP path is not free)")
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sender:
        asyncio.run(run_senders(args))
        return
    width, height = (int(x) for x in args.res.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = Path(args.logs) if args.logs else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        clip = workdir / "clip.json"
        encode_clip(width, height, args.fps, args.clip_frames, clip)
        if args.buffers_only:
            buffers_only(args, clip, width, height)
            return
        print(f"{args.res}@{args.fps}, {args.seconds:g} s per N, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
              f"{', ' + ' '.join(args.set) if args.set else ''}", flush=True)
        if not args.json:
            print("| streams | daemon CPU % (loop thread + others) | RSS MB (idle) | RSS/stream MB (per added stream) | "
                  "fps min / median | age p50 / p99 ms | sender CPU % | UDP dropped / received | keyframes asked |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
        previous = None
        for n in (int(x) for x in args.streams.split(",")):
            row = measure(n, args, clip, workdir)
            if previous is not None and n > previous["streams"]:  # the slope: what one more stream costs
                row["rss_per_added_stream_mb"] = round((row["rss_mb"] - previous["rss_mb"]) / (n - previous["streams"]), 2)
            previous = row
            if args.json or args.py_spy:
                print(json.dumps(row), flush=True)
            else:
                added = row.get("rss_per_added_stream_mb", "")
                print(f"| {n} | {row['cpu_pct']} ({row['loop_thread_cpu_pct']} + {row['other_threads_cpu_pct']}) | "
                      f"{row['rss_mb']} ({row['rss_idle_mb']}) | {row['rss_per_stream_mb']}{f' ({added})' if added else ''} | "
                      f"{row['fps_min']} / {row['fps_median']} | {row['age_p50_ms']} / {row['age_p99_ms']} | "
                      f"{row['sender_cpu_pct']} | {row['udp_rcvbuf_errors']} / {row['udp_in_datagrams']} | "
                      f"{row['keyframes_requested']} |", flush=True)


if __name__ == "__main__":
    main()
