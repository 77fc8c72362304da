#!/usr/bin/env python
"""WebRTC ingest benchmark: a 1280x720 30 fps aiortc stream into the WebRTCServer, against PyAV decoding alone.

The sender runs in a child process (so the receiver's CPU is its own): an aiortc peer publishing colour bars
with the frame number drawn in (tests/fixtures/webrtc.py), which also records every encoded frame it sends.
The receiver (this process) runs `webrtc.WebRTCServer` and measures, for `--seconds`:

- frames/s received into the FrameBuffer, and the sender's frames/s;
- receiver CPU: process CPU time / wall time, split into the event-loop thread and the other threads
  (aiortc's decoder thread, executors);
- newest-frame age (seconds since the newest frame was received) at p50/p99, probed every 20 ms;
- end-to-end lag (frame taken by a slow consumer once a second vs when the sender encoded it).

Then, in the same run, it decodes the very frames the sender encoded with PyAV alone (the same FFmpeg vp8/h264
decoder, one thread, that the server's receivers use: webrtc/decoders.py) and prints the receiver's CPU per frame as
a ratio of PyAV's.

`--py-spy` records the receiver with py-spy during the window and prints where its busy samples go: by thread, and the
receive path's stages (UDP read, SRTP, RTP handling, jitter buffer, decoding, the hand-over to the loop, the buffer),
inclusive, so the part that is not decoding shows.

Run it in a loopback-only network namespace, like the tests:
    unshare -n sh -c 'ip link set lo up && ~/.cache/visual-agent/venv/bin/python scripts/bench_ingest.py'
Host candidates are restricted to 127.0.0.1 either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user+system) of each thread of this process, by thread id."""
    out: dict[int, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            continue
    return out


def py_spy() -> str:
    """py-spy beside this interpreter (a venv's bin/ need not be on PATH), else the one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else "py-spy"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# --- sender (child process) ---------------------------------------------------------------------

def record_encoded_frames(codec: str) -> list[bytes]:
    """Wrap aiortc's encoder so each encoded frame's bitstream is also kept (bench only; private hooks)."""
    frames: list[bytes] = []
    if codec == "VP8":
        from aiortc.codecs.vpx import Vp8Encoder

        original = Vp8Encoder._packetize.__func__

        def _packetize(cls, buffer: bytes, picture_id: int):
            frames.append(bytes(buffer))
            return original(cls, buffer, picture_id)

        Vp8Encoder._packetize = classmethod(_packetize)
    else:
        from aiortc.codecs.h264 import H264Encoder

        original_encode = H264Encoder._encode_frame

        def _encode_frame(self, frame, force_keyframe):
            parts = list(original_encode(self, frame, force_keyframe))
            if parts:
                frames.append(b"".join(b"\x00\x00\x00\x01" + p for p in parts))
            yield from parts

        H264Encoder._encode_frame = _encode_frame
    return frames


async def run_sender(args: argparse.Namespace) -> None:
    from tests.fixtures.webrtc import CounterVideoTrack, publish

    recorded = record_encoded_frames(args.codec)
    track = CounterVideoTrack(args.width, args.height, fps=args.fps, moving=args.content == "moving")
    cpu0, t0 = time.process_time(), time.monotonic()
    async with publish(args.url, track, source="bench", codec=args.codec):
        await asyncio.sleep(args.seconds)
        sent = track.frames_sent
        sent_at = dict(track.sent_at)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    with open(args.record, "wb") as f:
        for frame in recorded:
            f.write(struct.pack(">I", len(frame)) + frame)
    # frame number -> monotonic send time, so the receiver can compute end-to-end lag
    Path(args.record + ".json").write_text(json.dumps({
        "frames_sent": sent, "wall_s": wall, "cpu_s": cpu, "encoded_frames": len(recorded),
        "sent_at": {str(k): v for k, v in sent_at.items()},
        "bytes": sum(len(x) for x in recorded),
    }))


# --- receiver (this process) --------------------------------------------------------------------

def decode_alone(path: str, codec: str) -> dict[str, float]:
    """Decode the recorded stream with PyAV alone: frames, wall and CPU time."""
    import av

    data = Path(path).read_bytes()
    packets, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        packets.append(data[pos + 4: pos + 4 + n])
        pos += 4 + n
    from webrtc.decoders import FFmpegVideoDecoder

    ctx = FFmpegVideoDecoder("vp8" if codec == "VP8" else "h264").codec
    frames = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for payload in packets:
        frames += len(ctx.decode(av.Packet(payload)))
    return {"frames": frames, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0,
            "packets": len(packets)}


async def run_receiver(args: argparse.Namespace) -> dict:
    from tests.fixtures.webrtc import read_counter
    from webrtc import WebRTCConfig, WebRTCServer

    interval = 1 / args.fps
    config = WebRTCConfig(port=0, host_candidate_addresses=["127.0.0.1"], buffer_max_seconds=2.0)
    with tempfile.NamedTemporaryFile(prefix="bench-ingest-", suffix=".bin", delete=False) as f:
        record = f.name
    async with WebRTCServer(config) as server:
        warmup = 3.0
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--role", "sender", "--url", server.url, "--seconds", str(args.seconds + warmup + 1),
            "--record", record, "--codec", args.codec, "--width", str(args.width), "--height", str(args.height),
            "--fps", str(args.fps), "--content", args.content, cwd=str(ROOT))
        deadline = time.monotonic() + 20
        while "bench" not in server.source_names():
            if time.monotonic() > deadline:
                raise SystemExit("the sender never connected")
            await asyncio.sleep(0.05)
        buf = server.get_buffer("bench")
        await buf.wait_for_frame(20)
        await asyncio.sleep(warmup)

        ages: list[float] = []
        samples: list[tuple[float, int]] = []  # (taken at, frame number)
        per_second: list[int] = []
        main_tid = os.getpid()  # the event loop runs on the main thread, whose thread id is the pid
        spy = None
        if args.py_spy:
            spy_out = record + ".spy"
            spy = subprocess.Popen([py_spy(), "record", "--pid", str(os.getpid()), "--duration", str(int(args.seconds)),
                                    "--format", "raw", "--threads", "--nonblocking", "--rate", "500", "--output", spy_out],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu_before, proc0 = thread_cpu(), time.process_time()
        received0 = buf.stats().received
        t0 = time.monotonic()
        next_sample, last_count = t0, received0
        while (now := time.monotonic()) - t0 < args.seconds:
            newest = buf.latest()
            ages.append(now - newest.received_at)
            if now >= next_sample:  # the slow consumer: one frame a second
                samples.append((now, await asyncio.to_thread(read_counter, newest.frame)))
                count = buf.stats().received
                per_second.append(count - last_count)
                last_count = count
                next_sample += 1.0
            await asyncio.sleep(0.02)
        wall = time.monotonic() - t0
        received = buf.stats().received - received0
        cpu_after, proc = thread_cpu(), time.process_time() - proc0
        stats = buf.stats()
        await child.wait()
        profile = None
        if spy is not None:
            await asyncio.to_thread(spy.wait, args.seconds + 30)
            profile = receive_path_profile(Path(spy_out))
            os.unlink(spy_out)

    sender = json.loads(Path(record + ".json").read_text())
    lags = [taken - sender["sent_at"][str(n)] for taken, n in samples if str(n) in sender["sent_at"]]
    delta = {tid: cpu_after.get(tid, 0) - cpu_before.get(tid, 0) for tid in cpu_after}
    loop_cpu = delta.get(main_tid, 0.0)
    other_cpu = sum(v for tid, v in delta.items() if tid != main_tid)
    alone = decode_alone(record, args.codec)
    for p in (record, record + ".json"):
        os.unlink(p)
    rx_cpu_per_frame = proc / max(received, 1)
    alone_cpu_per_frame = alone["cpu_s"] / max(alone["frames"], 1)
    return {
        "codec": args.codec, "resolution": f"{stats.width}x{stats.height}", "seconds": round(wall, 1),
        "fps_received": received / wall, "fps_min_1s": min(per_second[1:] or per_second),
        "fps_sent": sender["frames_sent"] / sender["wall_s"],
        "sender_cpu_pct": 100 * sender["cpu_s"] / sender["wall_s"],
        "sender_kbps": 8 * sender["bytes"] / sender["wall_s"] / 1000,
        "receiver_cpu_pct": 100 * proc / wall, "receiver_loop_thread_pct": 100 * loop_cpu / wall,
        "receiver_other_threads_pct": 100 * other_cpu / wall,
        "age_p50_ms": 1000 * percentile(ages, 50), "age_p99_ms": 1000 * percentile(ages, 99),
        "age_max_ms": 1000 * max(ages), "probes": len(ages), "two_intervals_ms": 2000 * interval,
        "lag_first_ms": 1000 * statistics.median(lags[:3]) if lags else None,
        "lag_last_ms": 1000 * statistics.median(lags[-3:]) if lags else None,
        "lags_ms": [round(1000 * x) for x in lags],
        "receiver_cpu_ms_per_frame": 1000 * rx_cpu_per_frame,
        "pyav_alone_frames": alone["frames"], "pyav_alone_decode_fps": alone["frames"] / alone["wall_s"],
        "pyav_alone_cpu_ms_per_frame": 1000 * alone_cpu_per_frame,
        "receiver_vs_pyav_cpu_ratio": rx_cpu_per_frame / alone_cpu_per_frame,
        "load_avg": os.getloadavg(), **({"py_spy": profile} if profile else {}),
    }


def hand_over_cost(frames: int = 20_000) -> dict[str, float]:
    """The event loop thread's CPU per frame handed over from a decoder thread: aiortc's `run_coroutine_threadsafe(
    queue.put(frame))` against `webrtc.decoders.hand_over_worker`'s mailbox (one `call_soon_threadsafe` per wake-up),
    a consumer awaiting each frame as the buffer's drain task does. Bursts of 8, then a pause, like 8 streams; the
    mailbox may drop frames the consumer is too slow for, so the consumer counts until the producer is done."""
    import threading

    async def run(kind: str) -> float:
        from webrtc.decoders import _Mailbox

        loop, q = asyncio.get_running_loop(), asyncio.Queue()
        mailbox = _Mailbox(loop, q)

        def producer() -> None:
            for i in range(frames):
                if kind == "aiortc":
                    asyncio.run_coroutine_threadsafe(q.put(i), loop)
                else:
                    mailbox.post(i)
                if i % 8 == 7:
                    time.sleep(0.0005)

        thread = threading.Thread(target=producer)
        cpu0, got = time.thread_time(), 0
        thread.start()
        while got < frames:
            item = await q.get()
            got += 1
            if item == frames - 1:
                break
        spent = time.thread_time() - cpu0
        thread.join()
        return spent / frames

    out: dict[str, list[float]] = {"aiortc": [], "ours": []}
    for _ in range(3):
        for kind in out:
            out[kind].append(asyncio.run(run(kind)))
    return {f"{kind}_us_per_frame": 1e6 * min(v) for kind, v in out.items()}


STAGES = {
    "UDP read (asyncio _read_ready + recvfrom)": ("_SelectorDatagramTransport._read_ready",),
    "ICE / STUN datagram dispatch": ("StunProtocol.datagram_received", "Connection.data_received"),
    "DTLS transport's receive loop (_recv_next; holds SRTP and RTP handling)": ("RTCDtlsTransport._recv_next",),
    "SRTP unprotect": ("Session.unprotect", "Session.unprotect_rtcp"),
    "RTP parse": ("RtpPacket.parse",),
    "RTP handling (RTCRtpReceiver._handle_rtp_packet)": ("RTCRtpReceiver._handle_rtp_packet",),
    "  VP8/H264 depayload": ("depayload",),
    "  jitter buffer": ("JitterBuffer.add", "RepairingJitterBuffer.add"),
    "  NACK / bitrate estimate / stats": ("NackGenerator.add", "RemoteBitrateEstimator.add", "StreamStatistics.add"),
    "  hand-over to the decoder thread (queue.put)": ("Queue.put",),
    "RTCP send/receive": ("RTCRtpReceiver._send_rtcp", "RTCRtpReceiver._run_rtcp", "RTCRtpReceiver._handle_rtcp_packet"),
    "decoder thread: FFmpeg decode": ("FFmpegVideoDecoder.decode",),
    "decoder thread: hand-over to the loop (run_coroutine_threadsafe)": ("run_coroutine_threadsafe",),
    "loop: the frame's arrival (RemoteStreamTrack.recv)": ("RemoteStreamTrack.recv",),
    "loop: FrameBuffer.put": ("FrameBuffer.put",),
    "loop: the loop's self-pipe wake-ups": ("BaseSelectorEventLoop._read_from_self",),
    "benchmark's own probe (latest every 20 ms)": ("run_receiver",),
}


def receive_path_profile(path: Path) -> dict:
    """Busy samples (not waiting in the selector, a lock or a queue) by thread, and each receive stage's inclusive
    share of them."""
    threads: dict[str, int] = {}
    leaves: dict[str, int] = {}
    stages = dict.fromkeys(STAGES, 0)
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        if any(frames[-1].startswith(idle) for idle in ("EpollSelector.select ", "Condition.wait ", "Queue.get ",
                                                         "Event.wait ", "select ", "_worker ")):
            continue  # waiting: the selector, a lock, a queue, an idle executor thread (SimpleQueue.get is C)
        n = int(count)
        total += n
        thread = frames[0].split("): ", 1)[-1]
        threads[thread] = threads.get(thread, 0) + n
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + n
        names = {f.split(" (", 1)[0] for f in frames[1:]}
        for stage, funcs in STAGES.items():
            if any(name in names for name in funcs):
                stages[stage] += n
    pct = lambda v: round(100 * v / max(total, 1), 1)  # noqa: E731
    return {"busy_samples": total, "threads_pct": {k: pct(v) for k, v in sorted(threads.items(), key=lambda kv: -kv[1])},
            "stages_pct": {k: pct(v) for k, v in stages.items()},
            "self_pct": {k: pct(v) for k, v in sorted(leaves.items(), key=lambda kv: -kv[1])[:15]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured duration (default 30)")
    parser.add_argument("--codec", choices=["VP8", "H264"], default="VP8")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--content", choices=["moving", "bars"], default="moving",
                        help="moving: scrolling texture + moving square (default); bars: static colour bars")
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    parser.add_argument("--py-spy", action="store_true", help="profile the receiver during the window (py-spy)")
    parser.add_argument("--hand-over", action="store_true",
                        help="only time the decoder thread -> event loop frame hand-over, aiortc's against ours")
    parser.add_argument("--role", choices=["receiver", "sender"], default="receiver", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "sender":
        asyncio.run(run_sender(args))
        return
    if args.hand_over:
        cost = hand_over_cost()
        print(f"loop thread CPU per frame handed over: aiortc {cost['aiortc_us_per_frame']:.1f} us, "
              f"hand_over_worker {cost['ours_us_per_frame']:.1f} us "
              f"({cost['aiortc_us_per_frame'] / cost['ours_us_per_frame']:.2f}x); load {os.getloadavg()[0]:.2f}")
        return
    r = asyncio.run(run_receiver(args))
    ok_fps = r["fps_received"] >= 0.95 * args.fps
    ok_age = r["age_p99_ms"] < r["two_intervals_ms"]
    rows = [
        ("codec / resolution", f"{r['codec']} {r['resolution']}", f"{r['seconds']} s measured, {args.content} content"),
        ("frames/s received", f"{r['fps_received']:.1f}", f"worst 1-s window {r['fps_min_1s']}; sender {r['fps_sent']:.1f} fps, {r['sender_kbps']:.0f} kbit/s"),
        ("  target: 30 fps sustained", "PASS" if ok_fps else "FAIL", ""),
        ("newest-frame age p50 / p99", f"{r['age_p50_ms']:.1f} / {r['age_p99_ms']:.1f} ms", f"max {r['age_max_ms']:.1f} ms over {r['probes']} probes"),
        (f"  target: p99 < 2 intervals ({r['two_intervals_ms']:.1f} ms)", "PASS" if ok_age else "FAIL", ""),
        ("end-to-end lag first / last s", f"{r['lag_first_ms']:.0f} / {r['lag_last_ms']:.0f} ms", "encode+send+decode+buffer, slow consumer"),
        ("receiver CPU", f"{r['receiver_cpu_pct']:.1f} %", f"event loop {r['receiver_loop_thread_pct']:.1f} %, other threads {r['receiver_other_threads_pct']:.1f} %"),
        ("sender CPU (child process)", f"{r['sender_cpu_pct']:.1f} %", "aiortc encode on the same 2 cores"),
        ("receiver CPU per frame", f"{r['receiver_cpu_ms_per_frame']:.2f} ms", "ICE/DTLS/SRTP/RTP/jitter buffer/decode/drain"),
        ("PyAV alone: decode same stream", f"{r['pyav_alone_cpu_ms_per_frame']:.2f} ms/frame", f"{r['pyav_alone_decode_fps']:.0f} fps capacity, {r['pyav_alone_frames']} frames"),
        ("  receiver / PyAV-alone CPU", f"{r['receiver_vs_pyav_cpu_ratio']:.2f}x", ""),
    ]
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:<20}  {c}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in r['load_avg'])}")
    if "py_spy" in r:
        spy = r["py_spy"]
        print(f"py-spy: {spy['busy_samples']} busy samples; threads " +
              ", ".join(f"{k} {v} %" for k, v in spy["threads_pct"].items()))
        for stage, share in spy["stages_pct"].items():
            print(f"  {stage:<72} {share:5.1f} %")
        print("  self time:")
        for leaf, share in spy["self_pct"].items():
            print(f"    {share:5.1f} %  {leaf}")
    if args.json:
        print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
