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
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from typing import Any

import av

__all__ = ["DECODE_THREADS", "DecodePool", "PooledDecodeQueue"]

logger = logging.getLogger(__name__)

DECODE_THREADS = max(2, os.cpu_count() or 2)
"""Threads decoding every stream of the process: one per core (at least two, so one slow frame never stops all)."""


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


class PooledDecodeQueue:
    """aiortc's decoder queue for one receiver, served by the pool: `put((codec, encoded_frame))`, then `put(None)` to
    end the track. Frames put before `attach()` (the receiver's thread start) wait for it."""

    def __init__(self, maxsize: int = 0) -> None:  # queue.Queue's signature; aiortc calls it with none
        self._lock = threading.Lock()
        self._pending: collections.deque[Any] = collections.deque()
        self._scheduled = False
        self._ended = False
        self._target: tuple[Any, threading.Event] | None = None
        self._decoder: Any = None
        self._codec_name: str | None = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """From the loop: queue an encoded frame (or None: the track ended)."""
        with self._lock:
            if self._ended:
                return
            self._pending.append(item)
            if self._scheduled or self._target is None:
                return
            self._scheduled = True
        POOL.submit(self)

    def attach(self, mailbox: Any, decode_error: threading.Event) -> None:
        """Where decoded frames go and where decode errors are flagged; frames waiting are submitted now."""
        with self._lock:
            self._target = (mailbox, decode_error)
            submit = bool(self._pending) and not self._scheduled
            self._scheduled = self._scheduled or submit
        if submit:
            POOL.submit(self)

    def run_once(self, pool: DecodePool) -> None:
        """In a pool thread: decode the oldest pending frame, then go to the back of the line if more wait."""
        from aiortc import rtcrtpreceiver  # imported by now: a receiver made this queue

        with self._lock:
            item = self._pending.popleft()
        assert self._target is not None
        mailbox, decode_error = self._target
        if item is None:
            with self._lock:
                self._ended = True
                self._pending.clear()
            self._decoder = None
            mailbox.end()
            return
        codec, encoded_frame = item
        if codec.name != self._codec_name:
            self._decoder = rtcrtpreceiver.get_decoder(codec)
            self._codec_name = codec.name
        try:
            frames = self._decoder.decode(encoded_frame)
        except av.FFmpegError as exc:  # keep the decoder's state, as aiortc does: the next keyframe repairs it
            logger.warning("failed to decode a %s frame: %s", codec.name, exc)
            decode_error.set()
            frames = []
        for frame in frames:
            mailbox.post(frame)
        with self._lock:
            more = bool(self._pending)
            self._scheduled = more
        if more:
            pool.submit(self)
