"""Reading tracks nobody wants (audio), so aiortc's unbounded per-track queues never grow."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["start_discarding"]


async def _discard(track: Any) -> None:
    from aiortc.mediastreams import MediaStreamError

    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


def start_discarding(track: Any, name: str) -> asyncio.Task[None]:
    """Start a named task that reads and drops every frame of `track` until it ends; cancel it to stop."""
    return asyncio.get_running_loop().create_task(_discard(track), name=f"webrtc-discard:{name}:{track.kind}")
