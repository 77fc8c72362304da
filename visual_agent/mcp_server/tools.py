"""`DaemonTools`: what the MCP tools do, without the SDK: each returns the JSON the MQTT interface returns (and JPEG
images to show beside it), or raises `ToolArgumentError` with a message for the caller.

| tool | returns (the same JSON as) |
| --- | --- |
| `list_sources` | `{"sources": [...]}`: each source's buffer state, as `/healthz` lists them |
| `ask` | the answer JSON of `<prefix>/answer`, and the newest frame the answer used as an image |
| `search_events` | `{"id": null, "events": [...], "error"}` of `<prefix>/events/query`, and the first thumbnails |
| `get_rules` | `{"rules": [state JSON of `<prefix>/<source>/rules/<name>`], "set": [the MQTT rule set]}` |
| `set_rules` | the same as `get_rules` once applied; refused: the `{"error", "at"}` of `<prefix>/rules/error` |

A question goes the way of every other question (`questions.McpQuestions`: the agent's `parse`, `take` and `refuse`),
so `agent.max_in_flight` bounds it and the agent's observers (Home Assistant, the event store) hear of it; its
answer is copied to `<prefix>/answer` like the page's. A rule set goes through `RuleControl.set_retained`:
the same validation as `<prefix>/rules/set`, and the set is kept as that topic's retained message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import McpConfig
from .questions import ASKER, McpQuestions

if TYPE_CHECKING:
    from ..host import DaemonHost

__all__ = ["DaemonTools", "ToolArgumentError", "ToolResult"]


class ToolArgumentError(ValueError):
    """A tool was called with arguments it cannot take, or at a moment it cannot serve; the message says which."""


@dataclass
class ToolResult:
    """A tool's JSON payload, JPEG images to show with it, and whether it reports a failure."""

    payload: dict[str, Any]
    images: list[bytes] = field(default_factory=list)
    error: bool = False


class DaemonTools:
    """The tools over a running `DaemonHost` (its agent, frame source, rules and event store are read at each call)."""

    def __init__(self, daemon: DaemonHost, config: McpConfig) -> None:
        self.daemon = daemon
        self.config = config
        self._questions: McpQuestions | None = None

    # --- sources and questions ------------------------------------------------------------------

    async def list_sources(self) -> ToolResult:
        driver = self.daemon.driver
        if driver is None:
            raise ToolArgumentError("the daemon is starting; ask again in a moment")
        sources = []
        for name in driver.source_names():
            try:
                sources.append(driver.get_buffer(name).stats().as_dict())
            except KeyError:  # gone between the two calls
                continue
        return ToolResult({"sources": sources})

    async def ask(self, question: str, source: str | None = None, frames: int | None = None) -> ToolResult:
        agent = self.daemon.agent
        if agent is None:
            raise ToolArgumentError("the daemon is starting; ask again in a moment")
        if self._questions is None or self._questions.agent is not agent:
            self._questions = McpQuestions(agent)
        body = {"question": question, **({"source": source} if source is not None else {}),
                **({"frames": frames} if frames is not None else {})}
        answer, jpeg = await self._questions.ask(json.dumps(body), asker=ASKER, frame=True)
        return ToolResult(answer.as_dict(), [jpeg] if jpeg is not None else [], error=answer.error is not None)

    # --- the event store --------------------------------------------------------------------------

    async def search_events(self, query: str | None = None, since: float | None = None, until: float | None = None,
                            source: str | None = None, kind: str | None = None, limit: int | None = None) -> ToolResult:
        from ..memory import EventQuery, EventQueryError, StoreUnavailableError

        store = self.daemon.memory.store
        if store is None:
            raise ToolArgumentError("this daemon keeps no events (storage.enabled is false)")
        params = {"q": query, "since": since, "until": until, "source": source, "kind": kind, "limit": limit}
        try:
            events = await store.aquery(EventQuery.from_mapping({k: v for k, v in params.items() if v is not None}))
        except EventQueryError as exc:  # the answer `<prefix>/events/query` gives
            return ToolResult({"id": None, "events": [], "error": {"type": "bad_payload", "message": str(exc)}}, error=True)
        except StoreUnavailableError as exc:
            return ToolResult({"id": None, "events": [], "error": {"type": "store_unavailable", "message": str(exc)}},
                              error=True)
        images: list[bytes] = []
        for event in events:
            if len(images) >= self.config.max_images:
                break
            if event.has_thumbnail and (jpeg := await store.athumbnail(event.id)) is not None:
                images.append(jpeg)
        return ToolResult({"id": None, "events": [e.as_dict() for e in events], "error": None}, images)

    # --- rules --------------------------------------------------------------------------------------

    async def get_rules(self) -> ToolResult:
        engine = self.daemon.rules
        if engine is None:
            raise ToolArgumentError("the daemon is starting; ask again in a moment")
        states = [state for source in sorted({r.config.source for r in engine.rules()}) for state in engine.states(source)]
        mqtt_set = [r.config.model_dump(mode="json") for r in engine.rules() if r.origin == "mqtt"]
        return ToolResult({"rules": states, "set": mqtt_set})

    async def set_rules(self, rules: list[dict[str, Any]]) -> ToolResult:
        control = self.daemon.rules_control
        if control is None:
            raise ToolArgumentError("rules cannot be set on this daemon (MQTT is off: rules come from the config only)"
                                    if self.daemon.messager is None else "the daemon is starting; ask again in a moment")
        error = await control.set_retained(json.dumps(rules))
        if error is not None:
            return ToolResult(error, error=True)
        return await self.get_rules()
