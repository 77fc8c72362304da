"""An LRU cache of encoder outputs keyed by a cheap fingerprint of the frame, so a static scene is encoded once.

The fingerprint is a tiny grey thumbnail (16x16 by default, area-averaged: one libswscale pass for a video
frame). Identical thumbnails hit through a hash; otherwise the closest stored thumbnail hits when no thumbnail cell
differs by more than `tolerance` grey levels. Each cell averages thousands of pixels, so sensor and codec
noise of a static camera moves it by well under a level and still hits, while an object that moves changes
its cells by far more and misses. Bounded by entries and by bytes; usable by both encoders (one cache per use:
values are whatever the caller stores, JPEG bytes or embedding tensors; a `namespace` keeps
different kinds of value for the same frame apart). Thread-safe: encoders fill it from
worker threads.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import EncoderConfigError
from .frames import to_array

__all__ = [
    "DEFAULT_CACHE_MAX_BYTES",
    "DEFAULT_CACHE_MAX_ENTRIES",
    "DEFAULT_CACHE_TOLERANCE",
    "DEFAULT_THUMBNAIL_SIDE",
    "CacheConfig",
    "CacheStats",
    "EmbeddingCache",
    "Fingerprint",
    "fingerprint",
]

DEFAULT_CACHE_MAX_ENTRIES = 256
DEFAULT_CACHE_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_CACHE_TOLERANCE = 4
DEFAULT_THUMBNAIL_SIDE = 16


@dataclass(frozen=True)
class Fingerprint:
    """A frame's grey thumbnail and its hash: equal frames share the hash, similar ones have close thumbnails."""

    key: bytes
    """blake2b digest of the thumbnail bytes and its shape."""
    thumbnail: np.ndarray
    """side x side uint8 grey thumbnail (the aspect ratio is ignored on purpose: it is a fingerprint, not a picture)."""


def fingerprint(frame: Any, *, side: int = DEFAULT_THUMBNAIL_SIDE, channel_order: str = "rgb") -> Fingerprint:
    """The fingerprint of any accepted frame (see `encoders.frames`); costs one tiny resize."""
    thumb = to_array(frame, size=(side, side), out="gray", channel_order=channel_order)
    digest = hashlib.blake2b(thumb.tobytes(), digest_size=16, person=b"va-thumb%d" % side).digest()
    return Fingerprint(key=digest, thumbnail=thumb)


def _key(namespace: str, fp: Fingerprint) -> tuple[str, bytes]:
    return (namespace, fp.key)


def _nbytes(value: Any) -> int:
    """Bytes a cached value holds: tensors and arrays by their data, bytes/str by length, else sys.getsizeof."""
    if hasattr(value, "untyped_storage") and hasattr(value, "element_size"):  # torch.Tensor, without importing torch
        return int(value.element_size() * value.nelement())
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return sys.getsizeof(value)


@dataclass(frozen=True, kw_only=True)
class CacheConfig:
    """Bounds and matching rule of an EmbeddingCache."""

    max_entries: int = DEFAULT_CACHE_MAX_ENTRIES
    """Most entries kept; the least recently used goes first."""
    max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    """Most bytes of values kept; a single value larger than this is not stored."""
    tolerance: float = DEFAULT_CACHE_TOLERANCE
    """Largest difference of any thumbnail cell (grey levels, 0-255) that still counts as the same scene;
    0: identical only."""
    thumbnail_side: int = DEFAULT_THUMBNAIL_SIDE
    """Side of the grey thumbnail the fingerprint is made from."""

    def __post_init__(self) -> None:
        for name in ("max_entries", "max_bytes", "thumbnail_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EncoderConfigError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.tolerance, (int, float)) or not 0 <= self.tolerance <= 255:
            raise EncoderConfigError(f"tolerance must be a number of grey levels in 0..255, got {self.tolerance!r}")


@dataclass(frozen=True)
class CacheStats:
    """Counters of an EmbeddingCache; `hit_rate` is hits / lookups (0 before any lookup)."""

    hits: int
    misses: int
    near_hits: int
    """Hits found by tolerance rather than an identical thumbnail (counted in `hits` too)."""
    entries: int
    bytes: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass
class _Entry:
    thumbnail: np.ndarray
    value: Any
    nbytes: int
    namespace: str


class EmbeddingCache:
    """LRU of frame fingerprint -> encoder output, bounded by entries and bytes, with hit/miss counts."""

    def __init__(
        self,
        max_entries: int = DEFAULT_CACHE_MAX_ENTRIES,
        max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
        *,
        tolerance: float = DEFAULT_CACHE_TOLERANCE,
        thumbnail_side: int = DEFAULT_THUMBNAIL_SIDE,
    ) -> None:
        self.config = CacheConfig(
            max_entries=max_entries, max_bytes=max_bytes, tolerance=tolerance, thumbnail_side=thumbnail_side
        )
        self._entries: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self._hits = self._misses = self._near_hits = self._evictions = 0

    def __repr__(self) -> str:
        s = self.stats()
        return f"EmbeddingCache(entries={s.entries}/{self.config.max_entries}, hits={s.hits}, misses={s.misses})"

    def __len__(self) -> int:
        return len(self._entries)

    def fingerprint(self, frame: Any, *, channel_order: str = "rgb") -> Fingerprint:
        """The fingerprint this cache keys `frame` by."""
        return fingerprint(frame, side=self.config.thumbnail_side, channel_order=channel_order)

    def _fingerprint_of(self, frame_or_fp: Any, channel_order: str) -> Fingerprint:
        if isinstance(frame_or_fp, Fingerprint):
            return frame_or_fp
        return self.fingerprint(frame_or_fp, channel_order=channel_order)

    def get(self, frame_or_fp: Any, *, namespace: str = "", channel_order: str = "rgb") -> Any | None:
        """The stored value for this frame (or fingerprint) in `namespace`, or None; counts a hit or a miss."""
        fp = self._fingerprint_of(frame_or_fp, channel_order)
        key = _key(namespace, fp)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None and self.config.tolerance > 0 and self._entries:
                near = self._nearest(fp.thumbnail, namespace)
                entry = self._entries.get(near) if near is not None else None
                if near is not None and entry is not None:
                    key = near
                    self._near_hits += 1
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            self._entries.move_to_end(key)
            return entry.value

    def put(self, frame_or_fp: Any, value: Any, *, namespace: str = "", channel_order: str = "rgb") -> Fingerprint:
        """Store `value` for this frame (or fingerprint) in `namespace`, evicting least recently used entries to fit."""
        fp = self._fingerprint_of(frame_or_fp, channel_order)
        size = _nbytes(value)
        key = _key(namespace, fp)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if size > self.config.max_bytes:
                return fp  # would evict everything and still not fit
            self._entries[key] = _Entry(fp.thumbnail, value, size, namespace)
            self._bytes += size
            while len(self._entries) > self.config.max_entries or self._bytes > self.config.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self._evictions += 1
        return fp

    def get_or_compute(self, frame: Any, compute: Any, *, namespace: str = "", channel_order: str = "rgb") -> Any:
        """The cached value for `frame`, else `compute(frame)` stored and returned (the fingerprint is taken once)."""
        fp = self.fingerprint(frame, channel_order=channel_order)
        value = self.get(fp, namespace=namespace)
        if value is None:
            value = compute(frame)
            self.put(fp, value, namespace=namespace)
        return value

    def clear(self) -> None:
        """Drop every entry; the counters stay."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                near_hits=self._near_hits,
                entries=len(self._entries),
                bytes=self._bytes,
                evictions=self._evictions,
            )

    def _nearest(self, thumb: np.ndarray, namespace: str) -> tuple[str, bytes] | None:
        """Key of the stored thumbnail in `namespace` closest to `thumb`, if within tolerance.

        The caller holds the lock."""
        keys = [k for k, e in self._entries.items() if e.namespace == namespace and e.thumbnail.shape == thumb.shape]
        if not keys:
            return None
        stack = np.stack([self._entries[k].thumbnail for k in keys]).astype(np.int16)
        diffs = np.abs(stack - thumb.astype(np.int16)).reshape(len(keys), -1).max(axis=1)
        best = int(np.argmin(diffs))
        return keys[best] if diffs[best] <= self.config.tolerance else None
