"""`DescriptionTriggers`: when the agent looks without being asked, every N seconds and on a scene change.

Both loops describe each live source (one with a frame) through the core's `describe`, which admits them like
questions (asker `descriptions`; skipped when busy) and publishes on `<prefix>/<source>/description`. One source's
failure is logged and the loop goes on. A new trigger is one more loop here, started in `__aenter__` as a named
task, with its own `Via` value. Leaving the context cancels the loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .interfaces import AgentCore, FrameSource
from .sampling import SceneChangeDetector
from .tasks import cancel_and_wait
from .telemetry import Via

if TYPE_CHECKING:
    from .config import AgentConfig

__all__ = ["DescriptionTriggers"]

logger = logging.getLogger(__name__)


class DescriptionTriggers:
    """The periodic and scene-change loops of one agent (configured by `agent.periodic_*` and `agent.scene_change`)."""

    def __init__(self, core: AgentCore, source: FrameSource | None, config: AgentConfig) -> None:
        self.core = core
        self.source = source
        self.config = config
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> DescriptionTriggers:
        """Start the configured loops as named tasks."""
        loop = asyncio.get_running_loop()
        if self.config.periodic_interval_s:
            self._tasks.append(loop.create_task(self._periodic(), name="agent-periodic"))
        if self.config.scene_change.enabled:
            self._tasks.append(loop.create_task(self._scene_watch(), name="agent-scene-change"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)

    async def _periodic(self) -> None:
        config = self.config
        interval = float(config.periodic_interval_s or 0)
        while True:
            await asyncio.sleep(interval)
            for name in self.live_sources():
                with _logged_failure("periodic description", name):
                    await self.core.describe(name, config.periodic_prompt, Via.PERIODIC)

    async def _scene_watch(self) -> None:
        cfg = self.config.scene_change
        detectors: dict[str, SceneChangeDetector] = {}
        seen: dict[str, int] = {}
        while True:
            await asyncio.sleep(cfg.check_interval_s)
            live = self.live_sources()
            for gone in detectors.keys() - set(live):  # a page's source is not reused once its peer left
                del detectors[gone]
                seen.pop(gone, None)
            for name in live:
                with _logged_failure("scene-change check", name):
                    assert self.source is not None  # `live_sources` is empty without one
                    newest = self.source.get_buffer(name).latest()  # KeyError: the source left meanwhile
                    if newest is None or seen.get(name) == newest.seq:
                        continue
                    seen[name] = newest.seq
                    detector = detectors.setdefault(name, SceneChangeDetector(cfg.threshold, cfg.min_gap_s))
                    if await detector.check(newest.frame):
                        logger.info("agent: scene change on %s (distance %.3f)", name, detector.last_distance or 0.0)
                        await self.core.describe(name, cfg.prompt, Via.SCENE)

    def live_sources(self) -> list[str]:
        """Sources that have a frame now."""
        if self.source is None:
            return []
        return [s for s in self.source.source_names() if self.source.get_buffer(s).latest() is not None]


@contextlib.contextmanager
def _logged_failure(what: str, source: str) -> Iterator[None]:
    """Keep a watcher loop alive through one source's failure (a source that left is not worth a traceback)."""
    try:
        yield
    except KeyError:
        logger.info("agent: %s of %s skipped: the source left", what, source)
    except Exception:
        logger.exception("agent: %s of %s failed", what, source)
