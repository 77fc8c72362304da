"""Measures how long the event loop goes without running: the proof that CPU work ran beside it, not on it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator


class LoopGaps:
    """The intervals between ticks of a task that asks to wake every `tick_s`."""

    def __init__(self) -> None:
        self.gaps: list[float] = []

    @property
    def max(self) -> float:
        return max(self.gaps, default=0.0)


@contextlib.asynccontextmanager
async def loop_gaps(tick_s: float = 0.005) -> AsyncIterator[LoopGaps]:
    """`async with loop_gaps() as probe:` run the work; then `probe.max` is the loop's longest stall."""
    probe = LoopGaps()

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(tick_s)
            now = time.perf_counter()
            probe.gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker(), name="loop-gap-probe")
    try:
        yield probe
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
