"""`Snapshots`: the newest frame of each source as a small JPEG for the console's tiles (`GET /sources/<name>.jpg`).

The page refreshes every tile about once a second, and several pages may watch the same daemon: each (source,
frame seq) is encoded once, in a worker thread, and every viewer of that frame gets the same bytes (a request that
comes while the encode runs waits for it). One JPEG per source is kept, and none for a source that is gone, so
the cache is bounded by the number of sources.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

__all__ = ["SNAPSHOT_MAX_SIDE", "SNAPSHOT_QUALITY", "Snapshot", "Snapshots"]

SNAPSHOT_MAX_SIDE = 480
"""Longest side of a tile's JPEG, pixels."""
SNAPSHOT_QUALITY = 70
"""JPEG quality of a tile."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One source's newest frame as JPEG."""

    source: str
    seq: int
    """The frame's sequence number in its buffer (the page's ETag)."""
    age_s: float
    jpeg: bytes


class Snapshots:
    """Encodes and caches the newest frame of each buffer of `driver` (a `WebRTCServer`)."""

    def __init__(self, driver: Any, *, max_side: int = SNAPSHOT_MAX_SIDE, quality: int = SNAPSHOT_QUALITY) -> None:
        self.driver = driver
        self.max_side = max_side
        self.quality = quality
        self.encodes = 0
        """JPEGs made so far (a test and the docs check that viewers share them)."""
        self._cache: dict[str, tuple[int, asyncio.Future[bytes]]] = {}
        """source -> (frame seq, its encode): one per source."""
        self._encoder: Any = None

    async def get(self, source: str) -> Snapshot | None:
        """The newest frame of `source` as JPEG; None before its first frame. KeyError for an unknown source."""
        buffer = self.driver.get_buffer(source)
        self._forget_gone()
        newest = buffer.latest()
        if newest is None:
            return None
        cached = self._cache.get(source)
        if cached is None or cached[0] != newest.seq:
            encode = asyncio.ensure_future(asyncio.to_thread(self._encode, newest.frame))
            cached = self._cache[source] = (newest.seq, encode)
        try:
            jpeg = await asyncio.shield(cached[1])  # a viewer that goes away does not cancel the others' encode
        except Exception:
            if self._cache.get(source) is cached:
                del self._cache[source]
            raise
        return Snapshot(source, cached[0], round(newest.age_s, 3), jpeg)

    def _forget_gone(self) -> None:
        for name in [n for n in self._cache if n not in self.driver.buffers]:
            del self._cache[name]

    def _encode(self, frame: Any) -> bytes:
        if self._encoder is None:
            from encoders import JpegEncoder

            self._encoder = JpegEncoder(max_side=self.max_side, quality=self.quality)
        self.encodes += 1
        jpeg: bytes = self._encoder.encode(frame)
        return jpeg
