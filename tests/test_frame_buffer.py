"""FrameBuffer: bounds, newest wins, window spread, waiting with timeout, continuous draining of a track."""

from __future__ import annotations

import asyncio
import time

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tests.waiting import wait_until
from webrtc import BufferState, FrameBuffer, FrameTimeoutError


def make_frame(pts: int = 0, width: int = 64, height: int = 48) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), pts % 256, np.uint8), format="rgb24")
    frame.pts = pts
    return frame


class QueueTrack(MediaStreamTrack):
    """A real aiortc track fed from a queue, like aiortc's RemoteStreamTrack; None ends it."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue = asyncio.Queue()

    async def recv(self):
        item = await self.queue.get()
        if item is None:
            self.stop()
            raise MediaStreamError
        if isinstance(item, Exception):
            raise item
        return item


def test_frame_buffer_latest_is_newest_and_keeps_frame_untouched():
    buf = FrameBuffer("cam", max_frames=4)
    assert buf.latest() is None
    frames = [make_frame(i) for i in range(3)]
    for f in frames:
        buf.put(f)
    newest = buf.latest()
    assert newest.frame is frames[-1]  # the very object, not a copy or conversion
    assert newest.pts == 2 and newest.seq == 3
    assert 0 <= newest.age_s < 1.0


def test_frame_buffer_bounded_by_count():
    buf = FrameBuffer("cam", max_frames=5, max_seconds=60)
    for i in range(12):
        buf.put(make_frame(i))
    assert [f.pts for f in buf.frames()] == [7, 8, 9, 10, 11]
    st = buf.stats()
    assert (st.received, st.dropped, st.buffered) == (12, 7, 5)


def test_frame_buffer_bounded_by_seconds_keeps_newest():
    buf = FrameBuffer("cam", max_frames=100, max_seconds=0.05)
    buf.put(make_frame(0))
    time.sleep(0.08)
    buf.put(make_frame(1))
    assert [f.pts for f in buf.frames()] == [1]
    time.sleep(0.08)
    assert buf.latest().pts == 1  # the newest survives however old


def test_frame_buffer_window_spreads_over_seconds():
    buf = FrameBuffer("cam", max_frames=100, max_seconds=60)
    for i in range(21):
        buf.put(make_frame(i))
    picked = buf.window(10.0, 5)
    assert [f.pts for f in picked] == [0, 5, 10, 15, 20]
    assert [f.pts for f in buf.window(10.0, 1)] == [20]
    assert len(buf.window(10.0, 50)) == 21
    # frames older than the window are left out; the newest always counts
    time.sleep(0.06)
    buf.put(make_frame(21))
    assert [f.pts for f in buf.window(0.03, 4)] == [21]
    with pytest.raises(ValueError):
        buf.window(1.0, 0)


def test_frame_buffer_stats_report_resolution_and_rate():
    buf = FrameBuffer("cam")
    assert buf.stats().width is None and buf.stats().state == "waiting"
    puts = []
    for i in range(10):
        puts.append(time.monotonic())
        buf.put(make_frame(i, 320, 240))
        time.sleep(0.01)
    st = buf.stats()
    done = time.monotonic()
    assert (st.width, st.height, st.pixel_format) == (320, 240, "rgb24")
    # nine intervals over the time the puts took: between the first put and the last, or until stats() read it
    assert 9 / (done - puts[0]) <= st.fps <= 9 / (puts[-1] - puts[1]), (st.fps, puts, done)
    assert st.state == "live" and st.as_dict()["source"] == "cam"


def test_frame_buffer_put_rejects_non_frames():
    buf = FrameBuffer("cam")
    with pytest.raises(TypeError, match="av.VideoFrame"):
        buf.put(np.zeros((4, 4, 3), np.uint8))
    assert buf.stats().received == 0


async def test_frame_buffer_wait_for_frame_times_out_clearly():
    buf = FrameBuffer("garage")
    t0 = time.monotonic()
    with pytest.raises(FrameTimeoutError, match="garage.*0.2 s.*state: waiting") as info:
        await buf.wait_for_frame(0.2)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - t0 >= 0.18  # waited the timeout, not failed at once


async def test_frame_buffer_wait_for_frame_wakes_on_new_frame():
    buf = FrameBuffer("cam")
    buf.put(make_frame(0))
    assert (await buf.wait_for_frame(0.1)).pts == 0  # already there
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, buf.put, make_frame(1))
    got = await buf.wait_for_frame(2.0, newer_than=1)
    assert got.pts == 1 and got.seq == 2


async def test_frame_buffer_drains_track_continuously_without_reader():
    """The ancestor bug: a track read only on demand lags. Nobody reads here; aiortc's queue must stay empty."""
    track = QueueTrack()
    buf = FrameBuffer("cam", max_frames=8)
    buf.attach(track)
    for i in range(200):
        track.queue.put_nowait(make_frame(i))
        if i % 10 == 0:
            await asyncio.sleep(0.005)
    await wait_until(lambda: buf.stats().received == 200, what="all 200 frames drained")
    assert track.queue.qsize() == 0
    assert buf.latest().pts == 199 and buf.stats().received == 200 and len(buf) == 8
    track.queue.put_nowait(None)
    await wait_until(lambda: buf.state is BufferState.ENDED, what="the buffer ended")
    assert buf.latest().pts == 199  # last frames stay readable
    assert buf.drain_task.done()


async def test_frame_buffer_attach_replaces_track_and_clears_old_frames():
    old, new = QueueTrack(), QueueTrack()
    buf = FrameBuffer("cam")
    buf.attach(old)
    old.queue.put_nowait(make_frame(1))
    await buf.wait_for_frame(1.0)
    first_task = buf.drain_task
    buf.attach(new)
    assert buf.latest() is None and buf.state is BufferState.WAITING
    await asyncio.sleep(0)
    assert first_task.done()
    new.queue.put_nowait(make_frame(2))
    assert (await buf.wait_for_frame(1.0)).pts == 2
    assert buf.stats().tracks == 2
    await buf.detach()
    await buf.detach()  # idempotent
    assert buf.drain_task is None and buf.state is BufferState.ENDED


async def test_frame_buffer_ended_buffer_lets_frames_older_than_max_seconds_go():
    """No new frame pushes old ones out once the track ended: the age bound still holds (and their memory goes)."""
    track = QueueTrack()
    buf = FrameBuffer("cam", max_frames=10, max_seconds=0.5)
    buf.attach(track)
    for i in range(5):
        track.queue.put_nowait(make_frame(i))
    track.queue.put_nowait(None)
    await wait_until(lambda: buf.state is BufferState.ENDED, what="the buffer ended")
    assert len(buf) == 5  # fresh: all readable
    await wait_until(lambda: len(buf.frames()) == 1, what="frames older than max_seconds went")
    assert [f.pts for f in buf.frames()] == [4] and buf.stats().buffered == 1  # the newest stays


async def test_frame_buffer_detach_before_any_frame_ends_the_buffer():
    """A peer that connected and left without a frame: its buffer says ended, not still waiting for a first frame."""
    buf = FrameBuffer("cam")
    buf.attach(QueueTrack())
    await asyncio.sleep(0)
    await buf.detach()
    assert buf.state is BufferState.ENDED and buf.latest() is None
    with pytest.raises(FrameTimeoutError, match="state: ended"):
        await buf.wait_for_frame(0.05)


async def test_frame_buffer_track_error_is_recorded_not_raised():
    track = QueueTrack()
    buf = FrameBuffer("cam")
    buf.attach(track)
    track.queue.put_nowait(make_frame(1))
    track.queue.put_nowait(RuntimeError("decoder exploded"))
    await wait_until(lambda: buf.state is BufferState.ENDED, what="the buffer ended")
    st = buf.stats()
    assert st.state == "ended" and "decoder exploded" in st.last_error and st.received == 1
