"""Video decoders for aiortc's receivers: FFmpeg's own VP8 decoder, one FFmpeg thread each, run by a shared pool.

aiortc decodes VP8 through FFmpeg's libvpx wrapper. libvpx keeps four reference frames of its own; FFmpeg then copies
every output picture into a pooled frame; and on a 2-core machine libvpx starts a second thread for each stream. At
640x480 that costs about 1.9 MB and one thread more per stream than FFmpeg's native `vp8` decoder, whose output frames
are its reference frames (measured in BENCHMARKS.md, "Many streams in one daemon"). Both decoders are bit-exact VP8:
tests/test_webrtc_decoders.py compares them frame by frame. H.264 keeps FFmpeg's `h264` decoder, but with one thread:
FFmpeg's default starts a slice thread per core for every stream, and one thread already decodes a 720p frame in
0.5 ms (BENCHMARKS.md, "WebRTC ingest").

aiortc has no hook for choosing a decoder, so `install()` wraps the `get_decoder` that its receiver module imported.
It is idempotent, and leaves aiortc as it is (with a warning) where that name is gone or FFmpeg lacks a decoder.

It also takes aiortc's decoder threads away: its receiver module's `queue.Queue` becomes `PooledDecodeQueue` and
its `decoder_worker` becomes `pooled_worker`, so a few shared threads decode every stream (`decode_pool.py` says why).
Decoded frames reach the track's queue through a small mailbox and one `call_soon_threadsafe` per wake-up instead of
`run_coroutine_threadsafe(queue.put(frame))`, which made the event loop's thread create a Task, run a coroutine and
settle two futures for every frame of every stream (BENCHMARKS.md, "WebRTC ingest": the decode floor). aiortc's
hand-over was unbounded too: a loop running behind its decoders (48 overloaded streams) let decoded frames pile up in
its callbacks and the track's queue, over a gigabyte at the peak; the mailbox and the queue keep at most
`MAX_QUEUED_FRAMES` each per track, dropping the oldest, as the newest-wins buffer behind them would.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from fractions import Fraction
from typing import Any, cast

import av
from av.video.codeccontext import VideoCodecContext

from .decode_pool import PooledDecodeQueue, StreamDecoder

__all__ = ["MAX_QUEUED_FRAMES", "FFmpegVideoDecoder", "decoders_made", "frames_dropped_behind", "hand_over_worker",
           "install", "pooled_worker"]

logger = logging.getLogger(__name__)

_VIDEO_TIME_BASE = Fraction(1, 90_000)  # the RTP video clock, as aiortc's own decoders stamp their packets

_FFMPEG_DECODERS = {"video/vp8": "vp8", "video/h264": "h264"}
"""The MIME types we decode ourselves, and FFmpeg's decoder for each."""

MAX_QUEUED_FRAMES = 2
"""Decoded frames a track's mailbox, and then its queue, hold for the loop at most; older ones are dropped when the loop
is behind (the newest-wins buffer keeps only spaced older frames anyway). Each is 1.4 MB at 720p and keeps its picture
checked out of the decoder's pool, which keeps it after: 4 and 4 made a lagging 720p stream cost 11 MB more."""

frames_dropped_behind = 0
"""Decoded frames dropped because the loop had not taken the older ones yet (the tests and benchmarks read it)."""

decoders_made: collections.Counter[str] = collections.Counter()
"""How many decoders `install()`'s wrapper has made, by FFmpeg decoder name (the tests read it)."""


class FFmpegVideoDecoder:
    """An aiortc `Decoder` over one FFmpeg decoder context with a single thread (runs in aiortc's decoder thread)."""

    def __init__(self, name: str) -> None:
        self.codec = cast(VideoCodecContext, av.CodecContext.create(name, "r"))
        self.codec.thread_count = 1

    def decode(self, encoded_frame: Any) -> list[av.VideoFrame]:
        packet = av.Packet(encoded_frame.data)
        packet.pts = encoded_frame.timestamp
        packet.time_base = _VIDEO_TIME_BASE
        return list(self.codec.decode(packet))


def _deliver(output_q: asyncio.Queue, frame: Any) -> None:
    """On the loop: queue a decoded frame, dropping the oldest ones beyond `MAX_QUEUED_FRAMES` (the end-of-track None
    comes last and is never dropped)."""
    global frames_dropped_behind
    while output_q.qsize() >= MAX_QUEUED_FRAMES:
        output_q.get_nowait()
        frames_dropped_behind += 1
    output_q.put_nowait(frame)


class _Mailbox:
    """The frames one decoder thread has handed over and the loop has not taken yet: at most `MAX_QUEUED_FRAMES`
    (the oldest go), and at most one wake-up of the loop pending. A callback per frame would hold every frame decoded
    while the loop is behind in the loop's own queue, unbounded, and wake it once per frame."""

    def __init__(self, loop: asyncio.AbstractEventLoop, output_q: asyncio.Queue) -> None:
        self.loop, self.output_q = loop, output_q
        self.frames: collections.deque[Any] = collections.deque(maxlen=MAX_QUEUED_FRAMES)
        self.lock = threading.Lock()
        self.scheduled = False

    def post(self, frame: Any) -> None:
        """From the decoder thread."""
        global frames_dropped_behind
        with self.lock:
            if len(self.frames) == self.frames.maxlen:
                frames_dropped_behind += 1
            self.frames.append(frame)
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self.drain)

    def drain(self) -> None:
        """On the loop: move the waiting frames to the track's queue."""
        with self.lock:
            frames = list(self.frames)
            self.frames.clear()
            self.scheduled = False
        for frame in frames:
            _deliver(self.output_q, frame)

    def end(self) -> None:
        """From the decoder thread: the track has ended (after any frames still waiting)."""
        self.loop.call_soon_threadsafe(self._end)

    def _end(self) -> None:
        self.drain()
        self.output_q.put_nowait(None)


def hand_over_worker(loop: asyncio.AbstractEventLoop, input_q: queue.Queue, output_q: asyncio.Queue,
                     decode_error: threading.Event) -> None:
    """aiortc's `decoder_worker` (same arguments, same behaviour), handing frames to the loop through a `_Mailbox`:
    at most one callback pending and `MAX_QUEUED_FRAMES` frames held per track, in order."""
    mailbox = _Mailbox(loop, output_q)
    decoder = StreamDecoder()
    while True:
        task = input_q.get()
        if task is None:
            mailbox.end()
            break
        codec, encoded_frame = task
        for frame in decoder.decode(codec, encoded_frame, decode_error):
            mailbox.post(frame)
    decoder.close()


def pooled_worker(loop: asyncio.AbstractEventLoop, input_q: Any, output_q: asyncio.Queue,
                  decode_error: threading.Event) -> None:
    """What aiortc's receiver thread runs: hands its `PooledDecodeQueue` the mailbox and returns, so the shared pool
    decodes the stream and the thread ends at once. A queue of another kind (aiortc's own) gets `hand_over_worker`."""
    if isinstance(input_q, PooledDecodeQueue):
        input_q.attach(_Mailbox(loop, output_q), decode_error)
        return
    hand_over_worker(loop, input_q, output_q, decode_error)


class _QueueModule:
    """`queue` as aiortc's receiver module sees it once installed: the standard module with `Queue` pooled."""

    def __init__(self) -> None:
        self.__dict__.update({k: v for k, v in vars(queue).items() if not k.startswith("__")})
        self.Queue = PooledDecodeQueue


def _available(name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
    except Exception:  # an FFmpeg build without it
        return False
    return True


def install() -> bool:
    """Make aiortc's receivers decode with `FFmpegVideoDecoder`; True when they do (now or already)."""
    try:
        from aiortc import rtcrtpreceiver
    except ImportError:
        return False
    original = getattr(rtcrtpreceiver, "get_decoder", None)
    if original is None:
        logger.warning("aiortc.rtcrtpreceiver has no get_decoder: keeping aiortc's own video decoders")
        return False
    if getattr(original, "_visual_agent_wrapper", False):
        return True
    names = {mime: name for mime, name in _FFMPEG_DECODERS.items() if _available(name)}

    def get_decoder(codec: Any) -> Any:
        name = names.get(codec.mimeType.lower())
        if name is None:
            return original(codec)
        decoders_made[name] += 1
        return FFmpegVideoDecoder(name)

    get_decoder._visual_agent_wrapper = True  # type: ignore[attr-defined]
    rtcrtpreceiver.get_decoder = get_decoder
    if callable(getattr(rtcrtpreceiver, "decoder_worker", None)) and getattr(rtcrtpreceiver, "queue", None) is queue:
        rtcrtpreceiver.decoder_worker = pooled_worker
        rtcrtpreceiver.queue = _QueueModule()  # type: ignore[assignment]
    else:
        logger.warning("aiortc.rtcrtpreceiver has no decoder_worker or queue: keeping its own decoder threads")
    return True
