"""`SourceCatalog`: every source's `FrameBuffer` by name, and a version that goes up when the set changes.

Configured sources are made at start and kept; peers make theirs when admitted. Sources made by peers are bounded
(`webrtc.max_sources`): when the bound is reached, the oldest one no peer uses any more is freed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from .config import WebRTCConfig
from .frame_buffer import FrameBuffer

__all__ = ["SourceCatalog"]

logger = logging.getLogger(__name__)


class SourceCatalog:
    """The buffers of configured sources and peers; `version` goes up by one whenever one is added or removed."""

    def __init__(self, config: WebRTCConfig, configured: Iterable[str],
                 spawn: Callable[[Coroutine[Any, Any, Any], str], Any]) -> None:
        self.config = config
        self.configured = list(configured)
        """Names of the configured sources (files, cameras, RTSP): never given to a peer."""
        self.buffers: dict[str, FrameBuffer] = {name: self.new_buffer(name) for name in self.configured}
        """One `FrameBuffer` per source name (configured sources first, then peers in arrival order)."""
        self.version = 0
        """Goes up by one whenever a source is added to or removed from `buffers` (`wait_changed`)."""
        self._changed: asyncio.Event | None = None
        self._spawn = spawn

    def new_buffer(self, name: str) -> FrameBuffer:
        c = self.config
        return FrameBuffer(name, max_frames=c.buffer_max_frames, max_seconds=c.buffer_max_seconds,
                           spread_frames=c.buffer_spread_frames, older_max_side=c.buffer_older_max_side,
                           first_frame_timeout_s=c.first_frame_timeout_s)

    def buffer_for_peer(self, name: str) -> FrameBuffer:
        """The buffer of a peer's source, made (and announced) when it is new."""
        buffer = self.buffers.get(name)
        if buffer is None:
            buffer = self.buffers[name] = self.new_buffer(name)
            self.note_changed()
        return buffer

    def remove(self, name: str) -> None:
        if self.buffers.pop(name, None) is not None:
            self.note_changed()

    async def wait_changed(self, seen: int = 0) -> int:
        """Wait until the set of sources has changed since version `seen` (at once if it has); the version now."""
        while self.version <= seen:
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()
        return self.version

    def note_changed(self) -> None:
        self.version += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def room_for(self, name: str, in_use: set[str]) -> bool:
        """True when `name` has a buffer or one more fits `max_sources` (freeing the oldest source not `in_use`)."""
        if name in self.buffers:
            return True
        made = [n for n in self.buffers if n not in self.configured]
        if len(made) < self.config.max_sources:
            return True
        for old in made:  # creation order: the oldest ended source goes first
            if old not in in_use:
                buffer = self.buffers.pop(old)
                self.note_changed()
                self._spawn(buffer.detach(), f"webrtc-free-source:{old}")
                logger.info("source %r freed (ended; the source limit of %d is reached)", old, self.config.max_sources)
                return True
        return False
