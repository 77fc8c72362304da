"""`cancel_and_wait`: how a part of the daemon stops the tasks it started."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each task (None is skipped) and wait until all have ended. What a task raises while it ends is its own
    to log: the one closing it goes on, so one failed part never keeps the others from closing."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    for task in live:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
