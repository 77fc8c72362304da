"""`SceneMemory`: the optional `memory` trigger (`storage.memory`): each source is described when its picture has
changed since its last description, at most every `every_s`, so there is something to search even when nobody
asked, and a static scene costs nothing.

The change gate is the rules' (`sampling.thumbnail` / `thumbnail_distance`: a 32x18 grey thumbnail, made off the
loop, compared with the one of the last description against `agent.scene_change.threshold` or
`storage.memory.threshold`). A source's first frame is described at once. The description goes through the core's
`describe` (admitted as `descriptions`, skipped when busy; published on `<prefix>/<source>/description`), and the
event store's recorder keeps it as a `memory` event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sampling import thumbnail, thumbnail_distance
from ..tasks import cancel_and_wait
from .config import MemoryTriggerConfig

__all__ = ["ChangeGate", "SceneMemory"]

logger = logging.getLogger(__name__)


@dataclass
class ChangeGate:
    """Whether a source is due for a description: changed past `threshold` since the last one, and `every_s` after it."""

    threshold: float
    every_s: float
    reference: np.ndarray | None = None
    last_at: float = float("-inf")

    def due(self, thumb: np.ndarray, now: float) -> bool:
        if self.reference is None:
            return True
        if now - self.last_at < self.every_s:
            return False
        return thumbnail_distance(self.reference, thumb) >= self.threshold

    def described(self, thumb: np.ndarray, now: float) -> None:
        """The description of `thumb`'s frame was made: it is the new reference."""
        self.reference, self.last_at = thumb, now


class SceneMemory:
    """`async with SceneMemory(core, frames, config, threshold, via):` one named task describing live sources."""

    def __init__(self, core: Any, source: Any, config: MemoryTriggerConfig, *, threshold: float, via: Any) -> None:
        self.core = core
        self.source = source
        self.config = config
        self.threshold = config.threshold if config.threshold is not None else threshold
        self.via = via
        self.counters: Counter[str] = Counter()
        """checks, described, unchanged (the gate saved a call), too_soon, busy, failed."""
        self._gates: dict[str, ChangeGate] = {}
        self._seen: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SceneMemory:
        if self.config.enabled and self.source is not None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="memory-trigger")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_interval_s)
            live = self._live()
            for gone in self._gates.keys() - set(live):
                del self._gates[gone]
                self._seen.pop(gone, None)
            for name in live:
                try:
                    await self.check(name)
                except KeyError:  # the source left meanwhile
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.counters["failed"] += 1
                    logger.exception("memory: the check of %s failed", name)

    async def check(self, name: str) -> bool:
        """Describe `name` when its gate says so; True when a description was made."""
        newest = self.source.get_buffer(name).latest()
        if newest is None or self._seen.get(name) == newest.seq:
            return False
        self._seen[name] = newest.seq
        gate = self._gates.setdefault(name, ChangeGate(self.threshold, self.config.every_s))
        now = time.monotonic()
        if now - gate.last_at < gate.every_s:  # before the thumbnail: a source described just now costs nothing
            self.counters["too_soon"] += 1
            return False
        self.counters["checks"] += 1
        thumb = await asyncio.to_thread(thumbnail, newest.frame)
        if not gate.due(thumb, now):
            self.counters["unchanged"] += 1
            return False
        answer = await self.core.describe(name, self.config.prompt, self.via)
        if answer is None:  # busy: try again at the next check
            self.counters["busy"] += 1
            return False
        if answer.error is not None:  # the model failed: not again before `every_s`
            self.counters["failed"] += 1
            gate.last_at = now
            return False
        gate.described(thumb, now)
        self.counters["described"] += 1
        return True

    def _live(self) -> list[str]:
        return [s for s in self.source.source_names() if self.source.get_buffer(s).latest() is not None]

    def describe(self) -> dict[str, Any]:
        """Counters for /healthz."""
        return {"enabled": self.config.enabled, "every_s": self.config.every_s, "threshold": self.threshold,
                **self.counters}
