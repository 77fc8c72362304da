"""`FrameBuffer`: the newest few frames of one source, kept fresh by a task that drains its track.

The ancestor of this project read an aiortc track only when it wanted a frame; aiortc's own queue then
grew, and every frame it handed out was older than the last (about 0.93 s lag per second of video).
Here a named task (`attach`) pulls every frame from the track as soon as it is decoded, so aiortc's queue
stays empty, and the buffer keeps only the last `max_frames` frames, none older than `max_seconds`
(the newest is always kept). With `spread_frames` it keeps only what sampling can use: the newest frame and at most
`spread_frames` older ones, spaced evenly over `max_seconds`, so `window(max_seconds, k)` finds k frames spread over
the window for every k up to `spread_frames + 1`. A decoded 640x480 frame is 0.46 MB: 32 consecutive ones were
15 MB per stream and covered only 1.07 s; the daemon's default (the newest and 7 older, for `agent.max_frames` 8)
is 3.7 MB. With `older_max_side` the older frames of a spread buffer are kept as copies no larger than that (the
newest stays as decoded), so each returns its full-size picture to the decoder: at 720p, 1.38 MB against 0.22 MB at
512 px (`webrtc/shrink.py`).
Frames stay `av.VideoFrame`: converting them is the consumer's business, done on the few frames it samples, in a
worker thread.

Everything here runs on the event loop's thread; none of it blocks.

Frames are shared, not copied: every reader of `latest()`/`window()` gets the same `av.VideoFrame`. Do not
convert one frame from two threads at once with ``frame.to_ndarray(...)``/``frame.reformat(...)``: PyAV keeps
one SwsContext per frame (``VideoFrame.reformatter``) and concurrent use crashes the process (seen here with
PyAV 18.1). Give each thread its own ``av.video.reformatter.VideoReformatter()`` (``encoders.to_array`` does).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import av

from .config import DEFAULT_BUFFER_MAX_FRAMES, DEFAULT_BUFFER_MAX_SECONDS, DEFAULT_FIRST_FRAME_TIMEOUT_S, mask_url_secrets
from .errors import FrameTimeoutError, WebRTCConfigError
from .shrink import shrunk

__all__ = ["BufferState", "BufferedFrame", "FrameBuffer", "FrameBufferStats"]

logger = logging.getLogger(__name__)

_FPS_WINDOW_S = 2.0
_ARRIVALS_KEPT = 256


class BufferState(str, enum.Enum):
    """Where a buffer's video stands."""

    WAITING = "waiting"
    """No frame yet (no track attached, or the first frame has not arrived)."""
    LIVE = "live"
    """A track is attached and delivering."""
    ENDED = "ended"
    """The track ended (peer gone, file finished); the last frames stay readable, within `max_seconds` like
    live ones (the newest for good)."""


@dataclass(frozen=True, slots=True)
class BufferedFrame:
    """One frame as received: the untouched `av.VideoFrame` and when it arrived."""

    frame: av.VideoFrame
    """The decoded frame, exactly as aiortc/PyAV produced it (an older frame of a buffer with `older_max_side`: a
    smaller copy of it)."""
    pts: int | None
    """Presentation timestamp in `time_base` units (RTP clock for WebRTC peers)."""
    time_base: Fraction | None
    """Unit of `pts`."""
    received_at: float
    """`time.monotonic()` when the drain task took it from the track."""
    seq: int
    """Arrival number within this buffer (1 = first frame ever)."""

    @property
    def age_s(self) -> float:
        """Seconds since this frame was received."""
        return time.monotonic() - self.received_at

    @property
    def width(self) -> int:
        return self.frame.width

    @property
    def height(self) -> int:
        return self.frame.height


@dataclass(frozen=True, slots=True)
class FrameBufferStats:
    """A snapshot of one buffer, as /healthz shows it."""

    source: str
    """The source's name."""
    state: str
    """waiting, live or ended (`BufferState`)."""
    received: int
    """Frames received since the buffer was created."""
    fps: float
    """Frames received per second over the last two seconds."""
    dropped: int
    """Frames pushed out by the buffer's bounds (count / seconds) before newer ones; normal for newest-wins."""
    buffered: int
    """Frames held now."""
    newest_age_s: float | None
    """Seconds since the newest frame arrived (None before the first)."""
    width: int | None
    """Width of the newest frame."""
    height: int | None
    """Height of the newest frame."""
    pixel_format: str | None
    """Pixel format of the newest frame (yuv420p from WebRTC decoders)."""
    tracks: int
    """Tracks attached over the buffer's life (a reconnecting browser adds one each time)."""
    last_error: str | None
    """The last error from the track, if it ended with one."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FrameBuffer:
    """The newest frames of one source, bounded by count and age; newest wins.

    Feed it with `attach(track)` (a drain task reads every frame) or `put(frame)`. Read it with
    `latest()`, `window(seconds, k)`, `await wait_for_frame(timeout)`, and `stats()`.
    """

    def __init__(
        self,
        name: str,
        *,
        max_frames: int = DEFAULT_BUFFER_MAX_FRAMES,
        max_seconds: float = DEFAULT_BUFFER_MAX_SECONDS,
        first_frame_timeout_s: float = DEFAULT_FIRST_FRAME_TIMEOUT_S,
        spread_frames: int | None = None,
        older_max_side: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`spread_frames`: keep the newest frame plus at most this many older ones, spaced evenly over `max_seconds`;
        None keeps every frame within the bounds. `older_max_side` (with `spread_frames`): keep those older frames as
        copies whose longer side is at most this. `clock` stamps arrivals and reads ages (a test's simulated time)."""
        if max_frames < 1 or max_seconds <= 0 or (spread_frames is not None and spread_frames < 1):
            raise WebRTCConfigError(f"FrameBuffer {name!r}: max_frames and spread_frames must be >= 1 and max_seconds > 0")
        if older_max_side is not None and older_max_side < 1:
            raise WebRTCConfigError(f"FrameBuffer {name!r}: older_max_side must be >= 1 or None, got {older_max_side!r}")
        self.name = name
        self._clock = clock
        self.max_frames = int(max_frames)
        self.max_seconds = float(max_seconds)
        self.first_frame_timeout_s = float(first_frame_timeout_s)
        self.spread_frames = spread_frames
        """With a number: the most frames kept besides the newest, spaced evenly over `max_seconds`."""
        self.older_max_side = older_max_side
        """With a number (and `spread_frames`): the older frames are kept as copies no larger than this."""
        self._frames: collections.deque[BufferedFrame] = collections.deque()
        self._arrivals: collections.deque[float] = collections.deque(maxlen=_ARRIVALS_KEPT)
        self._received = 0
        self._dropped = 0
        self._tracks = 0
        self._state = BufferState.WAITING
        self._last_error: str | None = None
        self._new_frame: asyncio.Event | None = None
        self._drain: asyncio.Task[None] | None = None
        self._track: Any = None
        self._expiry: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return (
            f"FrameBuffer({self.name!r}, state={self._state.value}, buffered={len(self._frames)}, "
            f"received={self._received})"
        )

    # --- feeding -------------------------------------------------------------------------------

    def put(self, frame: av.VideoFrame) -> BufferedFrame:
        """Add a frame as the newest; older frames beyond the bounds are dropped. Returns its record."""
        if not isinstance(frame, av.VideoFrame):
            raise TypeError(f"FrameBuffer {self.name!r} holds av.VideoFrame, got {type(frame).__name__}")
        now = self._clock()
        self._received += 1
        item = BufferedFrame(frame=frame, pts=frame.pts, time_base=frame.time_base, received_at=now, seq=self._received)
        self._frames.append(item)
        self._arrivals.append(now)
        if self.spread_frames is not None:
            self._spread()
        self._trim(now)
        self._state = BufferState.LIVE
        self._wake()
        return item

    def _spread(self) -> None:
        """After a put: the newest until now stays only if it comes a gap after the frame kept before it, and the
        oldest go while more are kept than `spread_frames`."""
        frames = self._frames
        assert self.spread_frames is not None
        if len(frames) >= 3 and frames[-2].received_at - frames[-3].received_at < self._spread_gap_s():
            del frames[-2]
            self._dropped += 1
        elif len(frames) >= 2 and self.older_max_side is not None:
            self._shrink_older(-2)
        while len(frames) > self.spread_frames + 1:
            frames.popleft()
            self._dropped += 1

    def _shrink_older(self, index: int) -> None:
        """Replace a frame that stays as an older one by its smaller copy (once: the copy is no larger)."""
        assert self.older_max_side is not None
        item = self._frames[index]
        small = shrunk(item.frame, self.older_max_side)
        if small is not None:
            self._frames[index] = BufferedFrame(small, item.pts, item.time_base, item.received_at, item.seq)

    def _trim(self, now: float) -> None:
        frames = self._frames
        while len(frames) > self.max_frames:
            frames.popleft()
            self._dropped += 1
        horizon = now - self.max_seconds
        while len(frames) > 1 and frames[0].received_at < horizon:
            frames.popleft()
            self._dropped += 1

    def _spread_gap_s(self) -> float:
        """The least time between two kept frames: `max_seconds / spread_frames`, less a little over one frame interval.

        A kept frame can be up to a gap plus an interval older than the next, the newest frame an interval newer than
        the youngest kept one, and a read an interval after the newest: with gaps `(spread_frames + 1) / spread_frames`
        intervals shorter, all `spread_frames` older frames stay within `max_seconds`. The interval is the longest of
        the last few, so jittery arrivals do not break this.
        """
        assert self.spread_frames is not None
        arrivals = list(itertools.islice(reversed(self._arrivals), 8))
        interval = max((a - b for a, b in itertools.pairwise(arrivals)), default=0.0)
        slack = interval * (self.spread_frames + 1) / self.spread_frames
        return max(0.0, self.max_seconds / self.spread_frames - slack)

    def attach(self, track: Any, *, clear: bool = True) -> None:
        """Drain `track` (an aiortc video `MediaStreamTrack`) from now on, replacing any earlier track.

        With `clear` (the default) the frames of the earlier track are dropped, so `latest()` never returns
        a frame of a previous connection; a looping file passes ``clear=False``. Call it on the event loop.
        """
        self._stop_drain()
        if clear:
            self._frames.clear()
        self._track = track
        self._tracks += 1
        if clear or not self._frames:
            self._state = BufferState.WAITING
        self._last_error = None
        self._drain = asyncio.get_running_loop().create_task(
            self._drain_track(track), name=f"webrtc-frame-buffer-drain:{self.name}"
        )

    async def _drain_track(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, av.VideoFrame):
                    self.put(frame)
        except MediaStreamError:
            logger.info("source %s: track ended", self.name)
        except Exception as exc:  # a decoder or player failure ends this track, not the process
            self._last_error = mask_url_secrets(f"{type(exc).__name__}: {exc}")  # av's errors name the player's URL
            logger.warning("source %s: track failed: %s", self.name, self._last_error)
        finally:
            if self._track is track:
                self._track = None
                self._end()

    def _stop_drain(self) -> asyncio.Task[None] | None:
        task, self._drain = self._drain, None
        if task is not None and not task.done():
            task.cancel()
        return task

    async def detach(self) -> None:
        """Stop draining (the frames stay readable; state becomes ended). Safe to call twice."""
        task = self._stop_drain()
        self._track = None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if task is not None or self._state is BufferState.LIVE:  # a track was attached, or put() fed it
            self._end()
        else:
            self._wake()

    close = detach

    def mark_ended(self, error: str | None = None) -> None:
        """Record that the source ended (used by sources that feed with `put`)."""
        self._last_error = error
        self._end()

    def _end(self) -> None:
        self._state = BufferState.ENDED
        self._wake()
        # no new frame will push the old ones out: trim by age once they are all over max_seconds old
        if self._expiry is not None:
            self._expiry.cancel()
        try:
            self._expiry = asyncio.get_running_loop().call_later(self.max_seconds, self._expire)
        except RuntimeError:  # fed with put() outside a loop: nothing to schedule on
            self._expiry = None

    def _expire(self) -> None:
        self._expiry = None
        if self._state is BufferState.ENDED:
            self._trim(self._clock())

    def _wake(self) -> None:
        if self._new_frame is not None:
            self._new_frame.set()
            self._new_frame = None

    # --- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> BufferState:
        return self._state

    @property
    def track(self) -> Any:
        """The attached track, or None."""
        return self._track

    @property
    def drain_task(self) -> asyncio.Task[None] | None:
        """The running drain task, if a track is attached."""
        return self._drain

    def __len__(self) -> int:
        return len(self._frames)

    def latest(self) -> BufferedFrame | None:
        """The newest frame, or None before the first."""
        return self._frames[-1] if self._frames else None

    def frames(self) -> list[BufferedFrame]:
        """Every frame held, oldest first."""
        return list(self._frames)

    def window(self, seconds: float, k: int) -> list[BufferedFrame]:
        """Up to `k` frames spread evenly over the last `seconds` (by arrival order), oldest first.

        The newest frame is always included; fewer than `k` come back when fewer are held.
        """
        if k < 1 or seconds < 0:
            raise ValueError(f"window needs k >= 1 and seconds >= 0, got k={k}, seconds={seconds}")
        if not self._frames:
            return []
        horizon = self._clock() - seconds
        recent = [f for f in self._frames if f.received_at >= horizon] or [self._frames[-1]]
        n = len(recent)
        if n <= k:
            return recent
        if k == 1:
            return [recent[-1]]
        picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
        return [recent[i] for i in picks]

    async def wait_for_frame(self, timeout: float | None = None, *, newer_than: int = 0) -> BufferedFrame:
        """The newest frame once one with `seq > newer_than` exists; `FrameTimeoutError` after `timeout` s.

        With the default ``newer_than=0`` it returns at once if any frame is held.
        """
        timeout = self.first_frame_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            newest = self.latest()
            if newest is not None and newest.seq > newer_than:
                return newest
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FrameTimeoutError(self.name, timeout, self._state.value, self._last_error)
            if self._new_frame is None:
                self._new_frame = asyncio.Event()
            event = self._new_frame
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                raise FrameTimeoutError(self.name, timeout, self._state.value, self._last_error) from None

    def fps(self) -> float:
        """Frames received per second over the last two seconds."""
        if not self._arrivals:
            return 0.0
        now = self._clock()
        recent = [t for t in self._arrivals if t >= now - _FPS_WINDOW_S]
        if len(recent) < 2:
            return float(len(recent)) / _FPS_WINDOW_S
        span = max(now - recent[0], recent[-1] - recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0

    def stats(self) -> FrameBufferStats:
        """Counts, rate, newest age and resolution, as a frozen snapshot."""
        newest = self.latest()
        return FrameBufferStats(
            source=self.name,
            state=self._state.value,
            received=self._received,
            fps=round(self.fps(), 2),
            dropped=self._dropped,
            buffered=len(self._frames),
            newest_age_s=None if newest is None else round(newest.age_s, 4),
            width=None if newest is None else newest.frame.width,
            height=None if newest is None else newest.frame.height,
            pixel_format=None if newest is None else newest.frame.format.name,
            tracks=self._tracks,
            last_error=self._last_error,
        )
