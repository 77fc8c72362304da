"""`EventRecorder`: the agent's event observer that keeps each final answer, description and rule change in the
store, with a thumbnail of the frame the model saw (a rule: its evidence, and its look-back strip).

Registered with `VisualAgent.observe`. The thumbnail is made in a worker thread before the event is queued, so the
writer's queue holds small JPEGs, never decoded frames. Failed answers are not kept (nothing was seen), nor are
answers to questions about the past (they would come back as evidence of what they only retold).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .events import Event, EventKind
from .store import EventStore

if TYPE_CHECKING:
    from ..interfaces import AgentEvent

__all__ = ["EventRecorder"]

logger = logging.getLogger(__name__)


class EventRecorder:
    """`await recorder(event)` for each `AgentEvent`; `recorded` and `skipped` count them."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.recorded = 0
        self.skipped = 0

    async def __call__(self, event: AgentEvent) -> None:
        record = self.event_of(event)
        if record is None:
            self.skipped += 1
            return
        if record.image is not None:
            try:
                record.image = await asyncio.to_thread(self.store.make_thumbnail, record.image)
            except Exception as exc:  # the picture is lost, never the event
                logger.warning("event store: no thumbnail for an event of %s: %s", record.source, exc)
                record.image = None
        if self.store.add(record):
            self.recorded += 1

    @staticmethod
    def event_of(event: AgentEvent) -> Event | None:
        """The store's `Event` for an `AgentEvent`; None for what is not kept."""
        kind = getattr(event.kind, "value", event.kind)
        via = getattr(event.via, "value", event.via)
        frames = list(event.frames)
        if kind == "rule":
            change = event.rule
            if change is None or event.source is None:
                return None
            verdict = "unclear" if change.answer is None else ("yes" if change.answer else "no")
            return Event(source=event.source, kind=EventKind.RULE, at=event.at, question=change.question,
                         text=f"rule {change.rule} turned {change.state} ({verdict}): {change.reason}".strip(),
                         rule=change.rule, state=change.state, frame_times=_frame_times(event.at, frames),
                         image=change.evidence.frame, strip=[change.lookback_jpeg] if change.lookback_jpeg else [])
        answer = event.answer
        if answer is None or answer.error is not None or not answer.text or answer.events is not None:
            return None
        source = answer.source or event.source
        if source is None:
            return None
        stored_kind = (EventKind.MEMORY if via == "scene_memory" else
                       EventKind.DESCRIPTION if kind == "description" else EventKind.ANSWER)
        latency = float(getattr(answer, "latency_s", 0.0) or 0.0)
        return Event(source=source, kind=stored_kind, at=event.at, question=answer.question, text=answer.text,
                     model=answer.model, frame_times=_frame_times(event.at - latency, frames),
                     image=frames[-1].frame if frames else None)


def _frame_times(taken_at: float, frames: list[Any]) -> list[float]:
    """Unix seconds of the frames, from their age when taken (`TakenFrame.age_s`) and about when that was."""
    return [round(taken_at - float(getattr(f, "age_s", 0.0)), 3) for f in frames]
