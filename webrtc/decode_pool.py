"""Every stream's video decoded by a few shared threads instead of one thread per stream.

aiortc starts a decoder thread per receiver and hands it each encoded frame through a `queue.Queue`. With 48 streams
that is 48 threads on a 2-core machine, each taking the GIL back for every frame it hands over, each with its own
malloc arena, and a `Condition.notify` in Python on the loop's thread for every frame queued. The event loop gives up
the GIL at every syscall and every SRTP call; with dozens of decoder threads waiting, each time it gets in line behind
one of them (BENCHMARKS.md, "Many streams in one daemon": the wall at 48 streams).

`PooledDecodeQueue` stands where aiortc's receiver makes its decoder queue: `put()` appends the frame to the stream's
own pending list and, when the stream is not already waiting for a thread, puts the stream on the pool's run queue.
A pool thread decodes one frame of a stream and sends the stream to the back of the line while it has more, so one
stream's frames stay in order and on one thread at a time, and a busy stream cannot hold a thread from the others.
Decoded frames reach the loop through `decoders._Mailbox`, as before. `DECODE_THREADS` threads (one per core) serve
every stream of the process; FFmpeg drops the GIL while it decodes, so they use the cores beside the loop.

A stream whose frames wait faster than the pool decodes them (a machine past its limit) is bounded: past
`MAX_PENDING_FRAMES` waiting, they are dropped, the sender is asked for a keyframe (the receiver's PLI) and nothing is
queued until one comes, so the stream resumes with a whole picture instead of a backlog of seconds (aiortc's queue was
unbounded: 1.1 GB at the peak with 56 streams of 640x480 on 2 cores).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from typing import Any

import av

__all__ = ["DECODE_THREADS", "MAX_PENDING_FRAMES", "DecodePool", "PooledDecodeQueue", "StreamDecoder",
           "frames_dropped_pending", "is_keyframe"]

logger = logging.getLogger(__name__)

DECODE_THREADS = max(2, os.cpu_count() or 2)
"""Threads decoding every stream of the process: one per core (at least two, so one slow frame never stops all)."""

MAX_PENDING_FRAMES = 30
"""Encoded frames a stream may have waiting for the pool (a second at 30 fps) before they are dropped for a keyframe."""

frames_dropped_pending = 0
"""Encoded frames dropped because their stream's decoding was too far behind (the tests and benchmarks read it)."""


_warned_at = float("-inf")


def _warn_behind() -> None:
    """One warning per 10 s at most: an overloaded machine drops on many streams at once."""
    global _warned_at
    now = time.monotonic()
    if now - _warned_at >= 10:
        _warned_at = now
        logger.warning("video decoding fell %d frames behind on a stream (the machine is past its limit): dropped "
                       "them and asked for a keyframe; %d frames dropped so far", MAX_PENDING_FRAMES,
                       frames_dropped_pending)


def is_keyframe(codec_name: str, data: bytes) -> bool:
    """Whether an encoded frame decodes on its own: a VP8 key frame (RFC 6386: the frame tag's first bit is 0) or
    H.264 with an IDR picture or a sequence parameter set (aiortc hands H.264 over as Annex B). Other codecs: True."""
    name = codec_name.lower()
    if name == "vp8":
        return bool(data) and not data[0] & 0x01
    if name == "h264":
        start = data.find(b"\x00\x00\x01")
        while 0 <= start < len(data) - 3:
            if data[start + 3] & 0x1F in (5, 7):
                return True
            start = data.find(b"\x00\x00\x01", start + 3)
        return False
    return True


class DecodePool:
    """`threads` daemon threads that run streams from one run queue; started on the first stream."""

    def __init__(self, threads: int = DECODE_THREADS) -> None:
        self.size = threads
        self._ready: queue.SimpleQueue[PooledDecodeQueue] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._start_lock = threading.Lock()

    def submit(self, stream: PooledDecodeQueue) -> None:
        """Put a stream with pending work at the back of the line (any thread)."""
        if len(self._threads) < self.size:
            self._start()
        self._ready.put(stream)

    def _start(self) -> None:
        with self._start_lock:
            while len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, name=f"video-decode-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while True:
            stream = self._ready.get()
            try:
                stream.run_once(self)
            except Exception:  # a bug must not take a thread that every stream shares with it
                logger.exception("video decode pool: a stream's step failed")


POOL = DecodePool()
"""The process's pool (every receiver's `PooledDecodeQueue` submits here)."""


class StreamDecoder:
    """One stream's decoder, made by aiortc's `get_decoder` and made again when the codec changes. A frame FFmpeg
    refuses flags `decode_error` (aiortc's receiver turns it into a PLI) and keeps the decoder's state, as aiortc
    does: the next keyframe repairs it. Used by the pool and by `decoders.hand_over_worker`."""

    def __init__(self) -> None:
        self._decoder: Any = None
        self._codec_name: str | None = None

    def decode(self, codec: Any, encoded_frame: Any, decode_error: threading.Event) -> list[Any]:
        from aiortc import rtcrtpreceiver  # imported by now: a receiver handed over the frame

        if codec.name != self._codec_name:
            self._decoder = rtcrtpreceiver.get_decoder(codec)
            self._codec_name = codec.name
        try:
            return list(self._decoder.decode(encoded_frame))
        except av.FFmpegError as exc:
            logger.warning("failed to decode a %s frame: %s", codec.name, exc)
            decode_error.set()
            return []

    def close(self) -> None:
        self._decoder = None


class PooledDecodeQueue:
    """aiortc's decoder queue for one receiver, served by the pool: `put((codec, encoded_frame))`, then `put(None)` to
    end the track. Frames put before `attach()` (the receiver's thread start) wait for it."""

    def __init__(self, maxsize: int = 0) -> None:  # queue.Queue's signature; aiortc calls it with none
        self._lock = threading.Lock()
        self._pending: collections.deque[Any] = collections.deque()
        self._scheduled = False
        self._ended = False
        self._awaiting_keyframe = False
        self._keyframe_asked_early = False
        self._target: tuple[Any, threading.Event] | None = None
        self._decoder = StreamDecoder()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """From the loop: queue an encoded frame (or None: the track ended)."""
        with self._lock:
            if self._ended:
                return
            if item is None:
                self._ended = True  # nothing after the end; the end itself is never dropped
            elif not self._admit(item):
                return
            self._pending.append(item)
            if self._scheduled or self._target is None:
                return
            self._scheduled = True
        POOL.submit(self)

    def _admit(self, item: tuple[Any, Any]) -> bool:
        """Under the lock: False for a frame dropped because decoding is too far behind (and for every frame after
        it until a keyframe)."""
        global frames_dropped_pending
        codec, encoded_frame = item
        if len(self._pending) >= MAX_PENDING_FRAMES and not self._awaiting_keyframe:
            frames_dropped_pending += len(self._pending)
            self._pending.clear()
            self._awaiting_keyframe = True
            self._ask_keyframe()
            _warn_behind()
        if self._awaiting_keyframe:
            if not is_keyframe(codec.name, encoded_frame.data):
                frames_dropped_pending += 1
                return False
            self._awaiting_keyframe = False
        return True

    def attach(self, mailbox: Any, decode_error: threading.Event) -> None:
        """Where decoded frames go and where decode errors are flagged; frames waiting are submitted now."""
        with self._lock:
            self._target = (mailbox, decode_error)
            if self._keyframe_asked_early:
                decode_error.set()
            submit = bool(self._pending) and not self._scheduled
            self._scheduled = self._scheduled or submit
        if submit:
            POOL.submit(self)

    def _ask_keyframe(self) -> None:
        """Under the lock: have the receiver send a PLI (it turns the decode-error flag into one with its next
        packet), now or when the stream is attached."""
        if self._target is not None:
            self._target[1].set()
        else:
            self._keyframe_asked_early = True

    def run_once(self, pool: DecodePool) -> None:
        """In a pool thread: decode the oldest pending frame, then go to the back of the line if more wait."""
        with self._lock:
            if not self._pending:  # dropped for a keyframe while this stream waited in line
                self._scheduled = False
                return
            item = self._pending.popleft()
        assert self._target is not None
        mailbox, decode_error = self._target
        if item is None:
            self._decoder.close()
            mailbox.end()
            return
        codec, encoded_frame = item
        try:
            frames = self._decoder.decode(codec, encoded_frame, decode_error)
        except Exception:  # a bug here must not leave the stream scheduled and never served again
            logger.exception("video decode pool: decoding a %s frame failed", codec.name)
            decode_error.set()
            frames = []
        for frame in frames:
            mailbox.post(frame)
        with self._lock:
            more = bool(self._pending)
            self._scheduled = more
        if more:
            pool.submit(self)
