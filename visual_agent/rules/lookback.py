"""`Lookback`: the last few seconds of one source as small JPEG thumbnails, so an event's evidence and a question
with `lookback_s` ("what just happened?") can show what came before it; `LookbackStore`: one `Lookback` per source,
shared by the rule engine and the agent, each fed by one task.

Decoded frames are large (a 720p yuv420p frame is 1.4 MB) and a `FrameBuffer` keeps only a short window of them;
a thumbnail (`THUMB_MAX_SIDE` px, JPEG quality `THUMB_QUALITY`) is a few kB. At most `LOOKBACK_FPS` thumbnails a
second are kept, for the longest `lookback_s` of the source's rules, so memory per source is bounded by
`LOOKBACK_FPS * MAX_LOOKBACK_S` thumbnails (BENCHMARKS.md states the bytes per second measured). Thumbnails are
made in a worker thread from the newest frame of the source's `FrameBuffer`.

A source gets a look-back when something needs it: every source when `agent.lookback_s` > 0 (questions), and the
sources whose rules keep one (`need("rules", ...)`); each keeps the longest asked. Nothing is kept (and no task
runs) for a source nobody needs, so with `agent.lookback_s: 0` and no rule look-back memory does not change.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sampling import TakenFrame
from ..tasks import cancel_and_wait
from .follow import NewFrames

__all__ = ["LOOKBACK_FPS", "QUESTION_LOOKBACK_FRAMES", "Lookback", "LookbackStore", "Thumbnail", "contact_sheet",
           "lookback_frames", "make_thumbnail"]

logger = logging.getLogger(__name__)

LOOKBACK_FPS = 4.0
"""Thumbnails kept per second of look-back."""
THUMB_MAX_SIDE = 160
"""Longest side of a look-back thumbnail, pixels."""
THUMB_QUALITY = 70
"""JPEG quality of a look-back thumbnail."""
QUESTION_LOOKBACK_FRAMES = 4
"""Look-back images a question with `lookback_s` gets besides its current frame(s)."""
SOURCE_CHECK_S = 1.0
"""How often the store looks for sources that came or went (`agent.lookback_s` covers every source)."""
_FRAME_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """One look-back thumbnail."""

    seq: int
    pts: int | None
    received_at: float
    """`time.monotonic()` when its frame arrived."""
    jpeg: bytes


def make_thumbnail(frame: object) -> bytes:
    """A small JPEG of `frame` (blocking: call it in a worker thread)."""
    from encoders import JpegEncoder

    return JpegEncoder(max_side=THUMB_MAX_SIDE, quality=THUMB_QUALITY).encode(frame)


class Lookback:
    """The thumbnails of the last `seconds` of one source, oldest first, at most `LOOKBACK_FPS` a second."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._thumbs: collections.deque[Thumbnail] = collections.deque(maxlen=self.capacity(seconds))

    @staticmethod
    def capacity(seconds: float) -> int:
        return int(seconds * LOOKBACK_FPS / 0.8) + 2

    def resize(self, seconds: float) -> None:
        """Keep `seconds` from now on (the longest look-back of the source's rules)."""
        if seconds != self.seconds:
            self.seconds = seconds
            self._thumbs = collections.deque(self._thumbs, maxlen=self.capacity(seconds))

    def wants(self, now: float) -> bool:
        """True when a thumbnail taken now would be kept (one per 1/LOOKBACK_FPS s)."""
        # a little slack: frames arrive with jitter, and the watcher wakes every 1/LOOKBACK_FPS s
        return self.seconds > 0 and (not self._thumbs or now - self._thumbs[-1].received_at >= 0.8 / LOOKBACK_FPS)

    def add(self, thumb: Thumbnail) -> None:
        self._thumbs.append(thumb)
        while self._thumbs and thumb.received_at - self._thumbs[0].received_at > self.seconds:
            self._thumbs.popleft()

    def before(self, at: float, seconds: float) -> list[Thumbnail]:
        """The thumbnails of frames received in [at - seconds, at], oldest first."""
        return [t for t in self._thumbs if at - seconds <= t.received_at <= at]

    def __len__(self) -> int:
        return len(self._thumbs)

    def nbytes(self) -> int:
        """Bytes of JPEG held."""
        return sum(len(t.jpeg) for t in self._thumbs)


def contact_sheet(thumbs: list[Thumbnail]) -> bytes | None:
    """The thumbnails side by side as one JPEG (blocking: call it in a worker thread); None for none."""
    if not thumbs:
        return None
    import cv2

    decoded = [cv2.imdecode(np.frombuffer(t.jpeg, np.uint8), cv2.IMREAD_COLOR) for t in thumbs]
    images = [i for i in decoded if i is not None]
    if not images:
        return None
    height = min(i.shape[0] for i in images)
    row = np.hstack([i[:height] for i in images])
    ok, data = cv2.imencode(".jpg", row, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
    return bytes(data) if ok else None


class LookbackStore:
    """One `Lookback` per source that needs one, fed by a task per source (`lookback:<source>`).

    `seconds` (`agent.lookback_s`): kept for every source of `driver`; 0: only what `need` asks. Feeding starts on
    the first `need` or `start()` (both in the running loop); `close()` stops it (safe twice).
    """

    def __init__(self, driver: Any, seconds: float = 0.0) -> None:
        self.driver = driver
        self.seconds = seconds
        self._needs: dict[str, dict[str, float]] = {}
        """owner -> {source: seconds}."""
        self._lookbacks: dict[str, Lookback] = {}
        self._feeders: dict[str, asyncio.Task[None]] = {}
        self._follower: asyncio.Task[None] | None = None
        self._closed = False

    def get(self, source: str) -> Lookback | None:
        """The look-back of `source`; None when nobody needs one."""
        return self._lookbacks.get(source)

    def start(self) -> None:
        """Follow the driver's sources when `seconds` > 0 (every source gets a look-back)."""
        if self.seconds > 0 and self._follower is None and not self._closed:
            self._follower = asyncio.get_running_loop().create_task(self._follow(), name="lookback-sources")
        self._sync()

    def need(self, owner: str, seconds_by_source: dict[str, float]) -> None:
        """`owner` (e.g. the rule engine) needs these look-backs from now on; replaces its earlier needs."""
        self._needs[owner] = {s: v for s, v in seconds_by_source.items() if v > 0}
        self._sync()

    def _wanted(self) -> dict[str, float]:
        wanted: dict[str, float] = {}
        if self.seconds > 0 and self._follower is not None and self.driver is not None:
            wanted = dict.fromkeys(self.driver.source_names(), self.seconds)
        for needs in self._needs.values():
            for source, seconds in needs.items():
                wanted[source] = max(wanted.get(source, 0.0), seconds)
        return wanted

    def _sync(self) -> None:
        """A look-back and a feeder for each source wanted; the others lose theirs."""
        if self._closed:
            return
        wanted = self._wanted()
        for source in [s for s in self._lookbacks if s not in wanted]:
            del self._lookbacks[source]
            task = self._feeders.pop(source, None)
            if task is not None:
                task.cancel()
        for source, seconds in wanted.items():
            self._lookbacks.setdefault(source, Lookback(seconds)).resize(seconds)
            task = self._feeders.get(source)
            if task is None or task.done():
                self._feeders[source] = asyncio.get_running_loop().create_task(self._feed(source),
                                                                               name=f"lookback:{source}")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(SOURCE_CHECK_S)
            try:
                self._sync()
            except Exception:
                logger.exception("lookback: could not follow the sources")

    async def _feed(self, source: str) -> None:
        """Keep a thumbnail of the newest frame at most `LOOKBACK_FPS` times a second."""
        frames = NewFrames(lambda: self.driver, source, wait_s=_FRAME_WAIT_S, missing_retry_s=_FRAME_WAIT_S)
        while True:
            lookback = self._lookbacks.get(source)
            if lookback is None:
                await asyncio.sleep(_FRAME_WAIT_S)
                continue
            entry = await frames.next()
            if entry is None:
                continue
            if lookback.wants(entry.received_at):
                try:
                    jpeg = await asyncio.to_thread(make_thumbnail, entry.frame)
                except Exception:
                    logger.exception("lookback: no thumbnail of a frame of %s", source)
                else:
                    lookback.add(Thumbnail(entry.seq, entry.pts, entry.received_at, jpeg))
            await asyncio.sleep(1.0 / LOOKBACK_FPS)

    def describe(self) -> dict[str, Any]:
        """Per source: seconds kept, thumbnails and bytes held (/healthz)."""
        return {s: {"seconds": lb.seconds, "thumbnails": len(lb), "bytes": lb.nbytes()}
                for s, lb in sorted(self._lookbacks.items())}

    async def close(self) -> None:
        """Stop feeding and forget the thumbnails. Safe twice."""
        self._closed = True
        tasks = list(self._feeders.values()) + ([self._follower] if self._follower is not None else [])
        self._feeders.clear()
        self._follower = None
        self._lookbacks.clear()
        await cancel_and_wait(*tasks)


def pick_before(thumbs: list[Thumbnail], count: int) -> list[Thumbnail]:
    """Up to `count` of `thumbs` (oldest first) spread evenly, the oldest and the newest among them."""
    if len(thumbs) <= count:
        return list(thumbs)
    if count == 1:
        return [thumbs[-1]]
    step = (len(thumbs) - 1) / (count - 1)
    return [thumbs[round(i * step)] for i in range(count)]


def decode_thumbnail(jpeg: bytes) -> np.ndarray | None:
    """An RGB array of a thumbnail (blocking: call it in a worker thread); None when it does not decode."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])


async def lookback_frames(lookback: Lookback | None, seconds: float, taken: list[TakenFrame],
                          count: int = QUESTION_LOOKBACK_FRAMES) -> list[TakenFrame]:
    """For a question with `lookback_s`: up to `count` thumbnails of the last `seconds`, older than every frame in
    `taken`, spread evenly and decoded (in a worker thread), oldest first; their `age_s` is measured now."""
    if lookback is None or seconds <= 0:
        return []
    now = time.monotonic()
    oldest = now - max((t.age_s for t in taken), default=0.0)
    picked = pick_before([t for t in lookback.before(now, seconds) if t.received_at < oldest], count)
    if not picked:
        return []
    arrays = await asyncio.to_thread(lambda: [decode_thumbnail(t.jpeg) for t in picked])
    return [TakenFrame(a, t.pts, max(0.0, now - t.received_at), t.seq)
            for t, a in zip(picked, arrays, strict=True) if a is not None]
