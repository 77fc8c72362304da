"""`remember_rule_event`: a rule turning on or off goes into the event store (`visual_agent.memory`) with its
evidence as the thumbnail and the look-back strip beside it, so the page's timeline finds it afterwards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..memory.events import Event, EventKind

if TYPE_CHECKING:
    from ..daemon import Daemon

__all__ = ["remember_rule_event"]


def remember_rule_event(daemon: Daemon, event: dict[str, Any], evidence: bytes | None, sheet: bytes | None) -> bool:
    """The rule engine's `on_event` hook's work for the store; False when there is no store or it dropped the event."""
    store = daemon.memory.store
    if store is None:
        return False
    engine = daemon.rules
    question = next((r.config.question for r in engine.rules() if r.config.name == event["rule"]), None) if engine else None
    reason = f": {event['reason']}" if event.get("reason") else ""
    return store.add(Event(
        source=event["source"], kind=EventKind.RULE, text=f"{event['rule']} turned {event['state']}{reason}",
        question=question, rule=event["rule"], state=event["state"], model=event.get("model"),
        image=evidence, strip=[sheet] if sheet is not None else [],
    ))
