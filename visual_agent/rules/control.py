"""`RuleControl`: rule sets from `<prefix>/rules/set` (a retained JSON list), applied to a `RuleEngine`.

It listens on its own transport (the daemon gives it a second MQTT connection), so a flood of rule sets cannot fill
the questions' inbox, and the retained set arrives again at each start: rules set over MQTT survive a restart. A
refused set (bad JSON, a bad rule, too many rules, too large) changes nothing and is answered on
`<prefix>/rules/error` with `{"error": "...", "at": <unix time>}`; an empty payload or `[]` removes the MQTT rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from ..tasks import cancel_and_wait
from ..topics import Topics
from .config import RuleSetError, parse_rule_set
from .engine import RuleEngine

__all__ = ["RuleControl"]

logger = logging.getLogger(__name__)


class RuleControl:
    """Takes rule sets off `transport` (subscribe, messages) and answers errors through the engine's publisher."""

    def __init__(self, engine: RuleEngine, transport: Any) -> None:
        self.engine = engine
        self.transport = transport
        self.topics = Topics(engine.agent.prefix)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.transport.subscribe(self.topics.rules_set)
        self._task = asyncio.get_running_loop().create_task(self._consume(), name="rules-control")

    async def _consume(self) -> None:
        async for msg in self.transport.messages():
            if msg.topic != self.topics.rules_set:
                continue
            try:
                await self.handle(msg.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("rules: could not apply a rule set")

    async def handle(self, payload: bytes) -> bool:
        """Apply one rule set; False (and an error on `<prefix>/rules/error`) when refused."""
        return await self.apply(payload) is None

    async def apply(self, payload: bytes | str) -> dict[str, Any] | None:
        """Apply one rule set; None when taken, else the error JSON `{"error", "at"}`, also published on
        `<prefix>/rules/error`."""
        engine = self.engine
        try:
            rules = parse_rule_set(payload, max_rules=engine.max_rules)
            await engine.set_rules(rules, origin="mqtt")
        except RuleSetError as exc:
            engine.counters["rule_sets_refused"] += 1
            logger.warning("rules: refused a rule set on %s: %s", self.topics.rules_set, exc)
            error = {"error": str(exc), "at": round(time.time(), 3)}
            publisher = engine.publisher or self.transport
            await publisher.publish(self.topics.rules_error, json.dumps(error))
            return error
        engine.counters["rule_sets"] += 1
        return None

    async def set_retained(self, payload: bytes | str) -> dict[str, Any] | None:
        """A rule set from elsewhere (the MCP tool `set_rules`): applied as one from `<prefix>/rules/set`, then kept as
        that topic's retained message, so the broker's copy stays the one source of truth (a restart brings it back,
        and the copy this connection receives again changes nothing). An empty set clears the retained message."""
        error = await self.apply(payload)
        if error is None:
            empty = not any(r.origin == "mqtt" for r in self.engine.rules())
            publisher = self.engine.publisher or self.transport
            await publisher.publish(self.topics.rules_set, b"" if empty else payload, retain=True)
        return error

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
