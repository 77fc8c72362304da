"""`cancel_and_wait`: how a part of the daemon stops the tasks it started."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

__all__ = ["cancel_and_wait"]

logger = logging.getLogger(__name__)

RECANCEL_AFTER_S = 0.5
"""How long a cancelled task may take to end before it is cancelled again."""


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each task (None is skipped) and wait until all have ended. What a task raises while it ends is its own
    to log: the one closing it goes on, so one failed part never keeps the others from closing.

    A task still running `RECANCEL_AFTER_S` after its cancel is cancelled again, until it ends: Python 3.11's
    `asyncio.wait_for` drops a cancel that lands as the future it waits on completes (fixed in 3.12), and a task that
    lived through its one cancel and then waited on something endless (a connection's loss) held the daemon's stop
    forever."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    for task in live:
        while not task.done():
            await asyncio.wait([task], timeout=RECANCEL_AFTER_S)
            if not task.done():
                logger.debug("%s still running after its cancel: cancelling it again", task.get_name())
                task.cancel()
        if not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()  # retrieved, so asyncio does not log it as never retrieved
