"""`Lookback`: the last few seconds of one source as small JPEG thumbnails, so an event can show what came before it.

Decoded frames are large (a 720p yuv420p frame is 1.4 MB) and a `FrameBuffer` keeps only a short window of them;
a thumbnail (`THUMB_MAX_SIDE` px, JPEG quality `THUMB_QUALITY`) is a few kB. At most `LOOKBACK_FPS` thumbnails a
second are kept, for the longest `lookback_s` of the source's rules, so memory per source is bounded by
`LOOKBACK_FPS * MAX_LOOKBACK_S` thumbnails (BENCHMARKS.md states the bytes per second measured). Thumbnails are
made in a worker thread, from the same sampled frame the rules look at.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

__all__ = ["LOOKBACK_FPS", "Lookback", "Thumbnail", "contact_sheet", "make_thumbnail"]

LOOKBACK_FPS = 4.0
"""Thumbnails kept per second of look-back."""
THUMB_MAX_SIDE = 160
"""Longest side of a look-back thumbnail, pixels."""
THUMB_QUALITY = 70
"""JPEG quality of a look-back thumbnail."""


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
