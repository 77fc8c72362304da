"""`MemoryService`: the event store as the daemon runs it, in four calls.

    memory = MemoryService(config.storage, prefix=config.mqtt.prefix)
    await memory.open()                        # the store (a bad file is reported, not raised)
    memory.register_routes(driver.add_route)   # GET /events, GET /events/<id>.jpg (before the server starts)
    memory.attach(agent)                       # record the agent's events, answer its questions about the past
    await memory.start_trigger(stack, agent, threshold=config.agent.scene_change.threshold)  # scene memory
    await memory.start_mqtt(messager)          # <prefix>/events/query on a connection of its own
    ...; memory.health(); await memory.close()

With `storage.enabled: false` every call is a no-op and `health()` says `disabled`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .config import StorageConfig
from .http import EventRoutes, Handler
from .mqtt_query import EventQueries
from .past import PastQuestions
from .recorder import EventRecorder
from .scene_memory import SceneMemory
from .store import EventStore

__all__ = ["MemoryService"]

logger = logging.getLogger(__name__)


class MemoryService:
    """The store, its HTTP routes and its MQTT queries, owned together."""

    def __init__(self, config: StorageConfig, *, prefix: str) -> None:
        self.config = config
        self.prefix = prefix
        self.store: EventStore | None = EventStore(config) if config.enabled else None
        self.queries: EventQueries | None = None
        self.recorder: EventRecorder | None = None
        self.past: PastQuestions | None = None
        self.trigger: SceneMemory | None = None
        self._messager: Any = None

    async def open(self) -> bool:
        """Open the store in a worker thread; False when it is disabled or cannot be opened (see `health()`)."""
        return await self.store.start() if self.store is not None else False

    def register_routes(self, add_route: Callable[[str, str, Handler], None]) -> None:
        """`GET /events` and `GET /events/<id>.jpg`, behind the page server's guard (also when the store failed to
        open: they then answer 503 with the reason)."""
        if self.store is not None:
            EventRoutes(self.store).register(add_route)

    def attach(self, agent: Any) -> None:
        """Record `agent`'s events (`agent.observe`) and answer its questions about the past (`agent.recall`)."""
        if self.store is None:
            return
        self.recorder = EventRecorder(self.store)
        agent.observe(self.recorder)
        self.past = PastQuestions(self.store, agent, max_events=self.config.past_events, options=agent.llm_options)
        agent.recall = self.past.answer

    async def start_trigger(self, stack: contextlib.AsyncExitStack, agent: Any, *, threshold: float) -> None:
        """The scene-memory trigger (`storage.memory`) over `agent`'s frames, until `stack` closes."""
        if self.store is not None and self.config.memory.enabled:
            from ..telemetry import Via

            self.trigger = await stack.enter_async_context(
                SceneMemory(agent, agent.driver, self.config.memory, threshold=threshold, via=Via.SCENE_MEMORY))

    async def start_mqtt(self, messager: Any) -> None:
        """Serve `<prefix>/events/query` on a connection of its own, made from the daemon's `messager` (its
        settings and credentials, another client id)."""
        if self.store is None or messager is None:
            return
        from ..mqtt import MqttMessager

        self._messager = MqttMessager(messager.config, host=messager.host, port=messager.port,
                                      persistent_session=False, client_id=f"{messager.client_id}-events",
                                      name="mqtt-events")
        await self._messager.start(wait=False)
        self.queries = EventQueries(self.store, self._messager, self.prefix)
        await self.queries.start()

    def health(self) -> dict[str, Any]:
        """The store's state for /healthz (`storage`)."""
        if self.store is None:
            return {"state": "disabled"}
        doc = self.store.health()
        if self.recorder is not None:
            doc["recorded"] = self.recorder.recorded
        if self.trigger is not None:
            doc["memory_trigger"] = self.trigger.describe()
        if self.queries is not None:
            doc["mqtt_queries"] = {"answered": self.queries.answered, "refused": self.queries.refused}
        return doc

    async def close(self) -> None:
        """Stop the queries, write what is queued, close the store. Safe twice."""
        if self.queries is not None:
            await self.queries.close()
            self.queries = None
        if self._messager is not None:
            with contextlib.suppress(Exception):
                await self._messager.close(publish_offline=False)
            self._messager = None
        if self.store is not None:
            await self.store.aclose()
