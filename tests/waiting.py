"""Wait on a condition with a deadline, instead of sleeping a fixed time and hoping it happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Return as soon as `predicate()` is true; fail with `what` after `timeout` seconds (a deadline, not a speed)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout:g} s")
        await asyncio.sleep(0.01)
