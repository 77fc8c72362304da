"""Wait on a condition with a deadline, instead of sleeping a fixed time and hoping it happened."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str | Callable[[], str] = "condition",
                     *, interval: float = 0.01) -> None:
    """Return as soon as `predicate()` is true (awaited when it returns an awaitable: an async probe);
    fail with `what` after `timeout` seconds (a deadline, not a speed; a callable `what` is asked then, so it can
    show the state at the failure). `interval`: the pause between tries."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what}: not met within {timeout:g} s")
        await asyncio.sleep(interval)
