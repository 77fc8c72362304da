"""`NewFrames`: each new frame of one source, for a task that watches it (the rule engine, the look-back store).

A source's buffer can be replaced under the same name (a page reconnects) and its frame numbers then restart; a
source can be missing for a while (not connected yet, or gone). Both watchers need the same answer to "what is the
next frame I have not seen", so it is written once here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..interfaces import FrameSource

__all__ = ["NewFrames"]


class NewFrames:
    """The frames of `source` newer than the last one handed out, across a buffer replaced under the same name."""

    def __init__(self, driver: Callable[[], FrameSource | None], source: str, *, wait_s: float, missing_retry_s: float):
        self._driver = driver
        """Read at every call: the agent's driver may be set or replaced after the watcher starts."""
        self.source = source
        self.wait_s = wait_s
        """How long one call waits for a new frame."""
        self.missing_retry_s = missing_retry_s
        """How long one call sleeps when the source is missing."""
        self._buffer: Any = None
        self._seq = 0

    async def next(self) -> Any | None:
        """The next unseen frame entry, or None when none came within `wait_s` or the source is missing (then after
        sleeping `missing_retry_s`); the caller loops."""
        driver = self._driver()
        try:
            if driver is None:
                raise KeyError(self.source)
            buffer = driver.get_buffer(self.source)
        except KeyError:
            await asyncio.sleep(self.missing_retry_s)
            return None
        if buffer is not self._buffer:  # a new buffer under the same name (a page came back): its seq restarts
            self._buffer, self._seq = buffer, 0
        try:
            entry = await buffer.wait_for_frame(self.wait_s, newer_than=self._seq)
        except TimeoutError:
            return None
        self._seq = entry.seq
        return entry
