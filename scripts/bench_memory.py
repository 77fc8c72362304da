#!/usr/bin/env python
"""The event store: insert cost, query latency at 10^4-10^6 events, size per source-day, and the event loop during a
retention sweep.

1. Insert: events with a 1280x720 frame each (thumbnail made in the writer thread) and text-only events, queued from
   the event loop while a probe measures its longest stall. Cost = the writer thread's seconds per event; baseline:
   the same row inserted by a bare `sqlite3` executemany (no FTS, no thumbnail) in this process. With
   `--image-model ViT-B-32` (the vectors and clip extras; random weights cost what trained ones do) also the 720p event
   whose thumbnail the writer embeds and indexes in sqlite-vec (`storage.image_model`), and the nearest-neighbour
   search of a question about the past (`VectorIndex.nearest`, k = 8) over N random 512-float vectors (one every 10 s),
   in a 1-day window and over everything, p50/p99 per size up to 10^5.
2. Query: a store of N events (8 sources, one every 10 s each, texts drawn from a camera-description vocabulary;
   built with executemany, no images) queried through `EventStore` as `GET /events` does: the newest 50, one source in
   a 1-hour window, a common word, a rare word, and the search of a question about the past (`EventStore.search`)
   within a day. p50/p99 over `--queries` runs each.
3. Size: bytes per stored event with its thumbnail, times the default memory trigger's most events per source-day
   (one per `storage.memory.every_s` = 60 s: 1440).
4. Retention: a store of `--sweep-events` events, half past `storage.retention_days`, opened while the loop probe
   runs; the sweep's duration and the loop's longest stall, against the same sweep in a child process (baseline:
   what is left there is the machine's, not the interpreter's).
5. Scene memory's cost: the `memory` trigger on one source fed here (320x240 at 10 fps) through a `VisualAgent` and
   the stand-in model of tests/fixtures/llm_stub.py, for `--trigger-s` seconds of a static scene (sensor noise only)
   and of a scene that changes every 0.5 s, with `every_s` scaled down to 2 s: model calls and rows per `every_s`
   period, then per source-hour at the default `every_s` (60 s).

  unshare -n bash -c 'ip link set lo up && ~/.cache/visual-agent/venv/bin/python scripts/bench_memory.py'
  (--sizes 10000 100000 for a quicker run). The machine is shared: figures are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
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
from tests.fixtures.webrtc import colour_bars_yuv  # noqa: E402
from tests.loop_probe import loop_gaps  # noqa: E402
from visual_agent.agent import VisualAgent  # noqa: E402
from visual_agent.memory import Event, EventQuery, EventStore, StorageConfig  # noqa: E402
from visual_agent.memory.config import MemoryTriggerConfig  # noqa: E402
from visual_agent.memory.recorder import EventRecorder  # noqa: E402
from visual_agent.memory.scene_memory import SceneMemory  # noqa: E402
from visual_agent.memory.schema import connect, create_schema  # noqa: E402
from visual_agent.telemetry import Via  # noqa: E402
from webrtc import FrameBuffer  # noqa: E402

SOURCES = [f"cam{i}" for i in range(8)]
SUBJECTS = ["a person", "a man", "a woman", "a child", "a dog", "a cat", "a courier", "a cyclist", "two people",
            "a delivery van", "a red car", "a blue car", "a white truck", "nobody", "a neighbour", "a gardener"]
ACTIONS = ["walks past", "stands at", "waits by", "leaves", "arrives at", "looks at", "opens", "closes", "parks near",
           "carries a parcel to", "rings the bell at", "sits on", "runs across", "drops a box at"]
PLACES = ["the front door", "the gate", "the driveway", "the garage door", "the garden", "the porch", "the street",
          "the bench", "the letterbox", "the fence", "the back yard", "the pavement"]
EXTRAS = ["", "", "", " in the rain", " at night", " in bright sunlight", " wearing a yellow jacket",
          " with an umbrella", " holding a phone", " with a large parcel"]
RARE = ["zebra", "helicopter", "kangaroo", "firetruck", "balloon", "tractor"]


def sentence(rng: random.Random) -> str:
    text = f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}{rng.choice(EXTRAS)}."
    if rng.random() < 0.0005:
        text = f"a {rng.choice(RARE)} " + text
    return text[0].upper() + text[1:]


def frame_720p(noise: bool, seed: int = 0) -> av.VideoFrame:
    yuv = colour_bars_yuv(1280, 720)
    if noise:
        yuv = np.clip(yuv.astype(np.int16) + np.random.default_rng(seed).integers(-12, 12, yuv.shape), 0, 255)
        yuv = yuv.astype(np.uint8)
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values) or [0.0]
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# --- 1. insert ---------------------------------------------------------------------------------------------------


async def idle_gaps(seconds: float = 2.0) -> tuple[float, float]:
    """The loop's longest and p99 stall with nothing to do: what the machine itself costs (the baseline)."""
    async with loop_gaps(0.002) as probe:
        await asyncio.sleep(seconds)
    return 1000 * max(0.0, probe.max - 0.002), 1000 * max(0.0, pct(probe.gaps, 99) - 0.002)


INSERT_KINDS = ("720p frame (thumbnail)", "text only", "720p + image vector")


async def bench_insert(tmp: Path, events: int, image_model: str | None = None) -> dict:
    out: dict = {}
    for name, image in zip(INSERT_KINDS, (frame_720p(True), None, frame_720p(True))[:3 if image_model else 2],
                           strict=False):
        model = image_model if name == INSERT_KINDS[2] else None
        store = EventStore(StorageConfig(path=str(tmp / f"insert-{len(out)}"), queue_max=4 * events + 10,
                                         image_model=model))
        assert await store.start()
        assert (store.image_search is not None) == bool(model), "image search did not start: see the log"

        await store.write(Event(source="cam0", kind="memory", text="warm-up", image=image))  # first-use imports
        add_s: list[float] = []
        async with loop_gaps(0.002) as probe:
            for i in range(events):
                started = time.perf_counter()
                store.add(Event(source="cam0", kind="memory", text=sentence(random.Random(i)), image=image))
                add_s.append(time.perf_counter() - started)
                if i % 10 == 9:
                    await asyncio.sleep(0)  # the daemon records a few events at a time, not a burst of thousands
            await asyncio.to_thread(store.flush, 120)
        writer = store.writer
        assert writer is not None
        used = writer.retention.last_used_bytes or Path(store.path).stat().st_size
        out[name] = {
            "writer_ms_per_event": 1000 * writer.stats.write_s / writer.stats.written,
            "loop_us_per_add": 1e6 * statistics.mean(add_s),
            "loop_max_stall_ms": 1000 * max(0.0, probe.max - 0.002),
            "loop_p99_stall_ms": 1000 * max(0.0, pct(probe.gaps, 99) - 0.002),
            "bytes_per_event": (_db_bytes(store.path) + _vector_bytes(store)) / writer.stats.written,
            "used": used,
        }
        await store.aclose()
    # baseline: the bare row, no FTS, no thumbnail
    conn = sqlite3.connect(str(tmp / "baseline.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t(at REAL, source TEXT, kind TEXT, text TEXT)")
    started = time.perf_counter()
    for i in range(events):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (time.time(), "cam0", "memory", sentence(random.Random(i))))
        conn.execute("COMMIT")
    out["baseline_ms_per_event"] = 1000 * (time.perf_counter() - started) / events
    conn.close()
    return out


def bench_knn(tmp: Path, n: int, runs: int) -> dict:
    from visual_agent.memory.vectors import VectorIndex

    rng = np.random.default_rng(0)
    index = VectorIndex(tmp / f"knn-{n}.db", dim=512, model="bench")
    index.open((0, n))
    for start in range(0, n, 1000):
        vectors = rng.standard_normal((min(1000, n - start), 512)).astype(np.float32)
        index.add([(start + i, (start + i) * 10.0, SOURCES[(start + i) % 8], v) for i, v in enumerate(vectors)])
    out = {}
    for name, window in (("1-day window", {"since": n * 10.0 - 86400, "until": n * 10.0}), ("everything", {})):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            index.nearest(rng.standard_normal(512), k=8, **window)
            times.append(1000 * (time.perf_counter() - started))
        out[name] = (pct(times, 50), pct(times, 99))
    index.close()
    return out


def _vector_bytes(store: EventStore) -> int:
    """The image index's file (vectors.db and its WAL), when image search is on."""
    search = store.image_search
    if search is None:
        return 0
    return sum(p.stat().st_size for p in search.index.path.parent.glob(search.index.path.name + "*"))


def _db_bytes(path: Path) -> int:
    conn = sqlite3.connect(str(path))
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, size = conn.execute("PRAGMA page_count").fetchone()[0], conn.execute("PRAGMA page_size").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * size
    finally:
        conn.close()


# --- 2. query ----------------------------------------------------------------------------------------------------


def build_db(path: Path, n: int, *, image_bytes: int = 0, old_share: float = 0.0) -> float:
    """N events, newest now, 10 s apart per source (8 sources); returns seconds taken."""
    started = time.perf_counter()
    conn = connect(path)
    create_schema(conn)
    rng = random.Random(n)
    now = time.time()
    step = 10.0 / len(SOURCES)
    blob = bytes(rng.getrandbits(8) for _ in range(image_bytes)) if image_bytes else b""
    batch = 20000
    conn.execute("BEGIN")
    for first in range(0, n, batch):
        rows = []
        for i in range(first, min(n, first + batch)):
            at = now - (n - i) * step
            if old_share and i < n * old_share:
                at -= 400 * 86400  # past any retention
            rows.append((i + 1, at, SOURCES[i % len(SOURCES)], "memory", sentence(rng), None, 1 if blob else 0))
        conn.executemany("INSERT INTO events(id, at, source, kind, text, question, images) VALUES (?,?,?,?,?,?,?)",
                         rows)
        if blob:
            conn.executemany("INSERT INTO images(key, jpeg) VALUES (?, ?)", [(r[0] * 64, blob) for r in rows])
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - started


def bench_queries(tmp: Path, n: int, runs: int) -> dict:
    directory = tmp / f"q{n}"
    directory.mkdir()
    built_s = build_db(directory / "events.db", n)
    store = EventStore(StorageConfig(path=str(directory), retention_days=3650, max_mb=1e6))
    assert store.open()
    now = time.time()
    span = n * 10.0 / len(SOURCES)
    rng = random.Random(7)
    kinds = {
        "newest 50": lambda: EventQuery(limit=50),
        "one source, 1 h window": lambda: EventQuery(source=rng.choice(SOURCES),
                                                     since=(t := now - rng.random() * span), until=t + 3600),
        "q=common word (parcel)": lambda: EventQuery(q="parcel", limit=50),
        "q=two words, one source": lambda: EventQuery(q="courier porch", source=rng.choice(SOURCES), limit=50),
        "q=rare word": lambda: EventQuery(q=rng.choice(RARE), limit=50),
    }
    out: dict = {"build_s": built_s, "db_mb": _db_bytes(store.path) / 1048576}
    for name, make in kinds.items():
        times = []
        for _ in range(runs):
            query = make()
            started = time.perf_counter()
            store.query(query)
            times.append(time.perf_counter() - started)
        out[name] = (1000 * pct(times, 50), 1000 * pct(times, 99))
    times = []
    for _ in range(runs):
        since = now - rng.random() * span
        started = time.perf_counter()
        store.search("when did the courier leave a parcel at the porch?", since=since, until=since + 86400, limit=20)
        times.append(time.perf_counter() - started)
    out["retrieval search, 1 day window"] = (1000 * pct(times, 50), 1000 * pct(times, 99))
    store.close()
    return out


# --- 4. retention ------------------------------------------------------------------------------------------------


async def bench_retention(tmp: Path, n: int) -> dict:
    """The sweep in this process (the writer thread) and, as the baseline, the same sweep in a child process (no
    interpreter shared: what is left of the loop's stall there is the machine's)."""
    out: dict = {}
    for where in ("child process (baseline)", "writer thread"):
        directory = tmp / f"sweep-{len(out)}"
        directory.mkdir()
        build_db(directory / "events.db", n, image_bytes=4000, old_share=0.5)
        async with loop_gaps(0.002) as probe:
            started = time.perf_counter()
            if where == "writer thread":
                store = EventStore(StorageConfig(path=str(directory), retention_days=30))
                assert await store.start()
                writer = store.writer
                assert writer is not None
                while writer.retention.deleted_by_age < n // 2:
                    await asyncio.sleep(0.01)
                await store.aclose()
            else:
                child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--sweep-child", str(directory),
                                                             str(n // 2))
                await child.wait()
            swept_s = time.perf_counter() - started
        out[where] = {"events_deleted": n // 2, "sweep_s": swept_s,
                      "loop_max_stall_ms": 1000 * max(0.0, probe.max - 0.002),
                      "loop_p99_stall_ms": 1000 * max(0.0, pct(probe.gaps, 99) - 0.002)}
    return out


def sweep_child(directory: str, expected: int) -> None:
    store = EventStore(StorageConfig(path=directory, retention_days=30))
    assert store.open()
    writer = store.writer
    assert writer is not None
    while writer.retention.deleted_by_age < expected:
        time.sleep(0.01)
    store.close()


# --- 5. scene memory's cost --------------------------------------------------------------------------------------


class Feed:
    """One source at 10 fps, 320x240: a grey level plus sensor noise; `changing` flips the level every 0.5 s."""

    def __init__(self, changing: bool) -> None:
        self.buffer = FrameBuffer("cam", max_frames=8, max_seconds=2)
        self.changing = changing
        self._rng = np.random.default_rng(0)

    def source_names(self) -> list[str]:
        return ["cam"]

    def get_buffer(self, name: str) -> FrameBuffer:
        if name != "cam":
            raise KeyError(name)
        return self.buffer

    async def run(self) -> None:
        n = 0
        while True:
            level = (60 if (n // 5) % 2 else 190) if self.changing else 120
            yuv = np.full((360, 320), 128, np.uint8)
            yuv[:240] = np.clip(level + self._rng.integers(-6, 6, (240, 320)), 0, 255)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = n
            self.buffer.put(frame)
            n += 1
            await asyncio.sleep(0.1)


async def bench_trigger(tmp: Path, seconds: float, every_s: float = 2.0) -> dict:
    stub = await start_stub_llm()
    stub.reply = "a person walks past the front door carrying a parcel"
    out: dict = {}
    try:
        for scene in ("static", "changing every 0.5 s"):
            feed = Feed(changing=scene != "static")
            feeder = asyncio.create_task(feed.run())
            store = EventStore(StorageConfig(path=str(tmp / f"trigger-{len(out)}")))
            assert await store.start()
            llm = create_provider({"provider": "openai", "base_url": stub.base_url, "api_key": "x",
                                   "model_name": stub.model})
            agent = VisualAgent(llm=llm, webrtc_driver=feed)
            agent.observe(EventRecorder(store))
            calls_before = len(stub.request_times)
            config = MemoryTriggerConfig(enabled=True, every_s=every_s, check_interval_s=0.5)
            async with agent, SceneMemory(agent, feed, config, threshold=0.12, via=Via.SCENE_MEMORY) as trigger:
                await asyncio.sleep(seconds)
            feeder.cancel()
            await asyncio.to_thread(store.flush, 30)
            rows = store.count()
            out[scene] = {"calls": len(stub.request_times) - calls_before, "rows": rows, "periods": seconds / every_s,
                          "bytes": _db_bytes(store.path), "counters": dict(trigger.counters)}
            await store.aclose()
            await llm.aclose()
    finally:
        await stub.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--insert-events", type=int, default=300)
    parser.add_argument("--sweep-events", type=int, default=100_000)
    parser.add_argument("--trigger-s", type=float, default=20.0)
    parser.add_argument("--image-model", help="also insert with image search on (e.g. ViT-B-32: random weights)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sweep-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sweep_child:
        sweep_child(args.sweep_child[0], int(args.sweep_child[1]))
        return
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        idle = await idle_gaps()
        results["idle_loop"] = idle
        print(f"0. baseline: the idle loop's own longest stall {idle[0]:.2f} ms, p99 {idle[1]:.2f} ms (the machine's load)")
        ins = await bench_insert(tmp, args.insert_events, args.image_model)
        results["insert"] = ins
        print("1. insert (writer thread, per event; the loop only queues)")
        base = ins["baseline_ms_per_event"]
        for name in [k for k in INSERT_KINDS if k in ins]:
            r = ins[name]
            print(f"   {name:24s} writer {r['writer_ms_per_event']:.2f} ms ({r['writer_ms_per_event'] / base:.1f}x the bare "
                  f"row's {base:.2f} ms), loop {r['loop_us_per_add']:.1f} us per add, loop stall max "
                  f"{r['loop_max_stall_ms']:.2f} / p99 {r['loop_p99_stall_ms']:.2f} ms, "
                  f"{r['bytes_per_event'] / 1024:.1f} KiB per event")
        print("2. query through EventStore (ms, p50 / p99)")
        for n in args.sizes:
            r = bench_queries(tmp, n, args.queries)
            results[f"query_{n}"] = r
            print(f"   {n:>9,} events (built in {r['build_s']:.1f} s, {r['db_mb']:.0f} MiB)")
            for name, value in r.items():
                if isinstance(value, tuple):
                    print(f"      {name:32s} {value[0]:7.2f} / {value[1]:7.2f}")
        if args.image_model:
            print("2b. image search: nearest 8 of N 512-float vectors (ms, p50 / p99)")
            for n in [n for n in args.sizes if n <= 100_000]:  # a full scan of 10^6 takes about a second a run
                r = bench_knn(tmp, n, min(args.queries, 50))
                results[f"knn_{n}"] = r
                print("   " + f"{n:>9,} vectors: " + ", ".join(f"{k} {v[0]:.1f} / {v[1]:.1f}" for k, v in r.items()))
        per_event = ins["720p frame (thumbnail)"]["bytes_per_event"]
        day = 86400 / 60
        print(f"3. size: {per_event / 1024:.1f} KiB per event with its thumbnail; default memory trigger "
              f"(every_s 60): at most {day:.0f} events, {day * per_event / 1048576:.1f} MiB per source-day, "
              f"{60 * per_event / 1048576:.2f} MiB per source-hour")
        sweeps = await bench_retention(tmp, args.sweep_events)
        results["retention"] = sweeps
        print(f"4. retention: {args.sweep_events // 2:,} of {args.sweep_events:,} events past retention_days deleted")
        for where, r in sweeps.items():
            print(f"   {where:26s} in {r['sweep_s']:.1f} s; loop stall max {r['loop_max_stall_ms']:.2f} / "
                  f"p99 {r['loop_p99_stall_ms']:.2f} ms")
        trig = await bench_trigger(tmp, args.trigger_s)
        results["trigger"] = trig
        print(f"5. scene memory ({args.trigger_s:g} s per scene, every_s 2 s; per source-hour at every_s 60 s)")
        for scene, r in trig.items():
            per_period = max(0, r["calls"] - 1) / max(1.0, r["periods"] - 1)  # after the first frame's description
            print(f"   {scene:22s} {r['calls']} model calls, {r['rows']} rows ({r['counters']}); "
                  f"{per_period:.2f} per every_s; per source-hour at every_s 60: {60 * per_period:.0f} calls and rows, "
                  f"{60 * per_period * per_event / 1048576:.2f} MiB (+ the first frame's once)")
    if args.json:
        print(json.dumps(results, default=str))


if __name__ == "__main__":
    asyncio.run(main())
