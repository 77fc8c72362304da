"""`LlmWatch`: whether the LLM answers now, for the console's state chip. The daemon probes the LLM once at start;
while a page polls `GET /api/state`, this asks the LLM for its models again every `every_s` (one probe at a time,
none when nobody watches), so a model server that went away shows on the page before a question fails."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..tasks import cancel_and_wait

__all__ = ["LLM_PROBE_EVERY_S", "LLM_PROBE_TIMEOUT_S", "LlmWatch"]

LLM_PROBE_EVERY_S = 15.0
"""Seconds between two probes while the page is open."""
LLM_PROBE_TIMEOUT_S = 5.0
"""A probe that takes longer counts as unreachable."""


class LlmWatch:
    """The newest probe of `llm` (a provider with `list_models()`); `poke()` from each state request."""

    def __init__(self, *, every_s: float = LLM_PROBE_EVERY_S, timeout_s: float = LLM_PROBE_TIMEOUT_S) -> None:
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.latest: dict[str, Any] | None = None
        """`{"state": "ok" | "unreachable", "detail"?, "at"}` of the newest finished probe; None before one."""
        self._task: asyncio.Task[None] | None = None
        self._started_at = float("-inf")

    def poke(self, llm: Any) -> None:
        """Start a probe when none runs and the last one is `every_s` old."""
        now = time.monotonic()
        if llm is None or (self._task is not None and not self._task.done()) or now - self._started_at < self.every_s:
            return
        self._started_at = now
        self._task = asyncio.get_running_loop().create_task(self._probe(llm), name="console-llm-probe")

    async def _probe(self, llm: Any) -> None:
        try:
            await asyncio.wait_for(llm.list_models(), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            from webrtc.config import mask_url_secrets

            detail = "no answer in time" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            self.latest = {"state": "unreachable", "detail": mask_url_secrets(detail), "at": time.time()}
            return
        self.latest = {"state": "ok", "at": time.time()}

    async def close(self) -> None:
        """Cancel a probe in flight. Safe twice."""
        task, self._task = self._task, None
        await cancel_and_wait(task)
