"""`PastQuestions`: a question with `since`/`until` (or a `lookback_s` longer than the frame buffer keeps) answered
from the event store instead of the live frames.

1. retrieve the best-matching events of the window (`retrieval.recall`: text rank, then the most recent);
2. give the model their thumbnails and texts, oldest first, each with its time and source (`model_call.Recalled`;
   a text is cut at `MAX_TEXT_CHARS`), through the core's one call to the model (the context budget drops the oldest
   pictures first; their texts stay); when even the texts do not fit the model's context, the lower-ranked half of
   the events is left out and the model asked again (the answer's `trimmed.events` counts them);
3. answer with `events: [{"id", "at", "source"}]`, the events the model was shown, so "when did X happen?" answers
   carry the times. A window with nothing stored gets an answer saying so, without a model call.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ..errors import ErrorType, QuestionError
from ..messages import Answer
from ..model_call import ModelRequest, Recalled
from ..telemetry import Via
from .events import StoredEvent
from .retrieval import recall
from .store import EventStore, StoreUnavailableError

if TYPE_CHECKING:
    from ..messages import Question
    from ..timings import QuestionTiming

__all__ = ["PAST_SYSTEM_PROMPT", "PastQuestions"]

MAX_TEXT_CHARS = 300
"""What the model reads of one stored event's text at most."""
PAST_SYSTEM_PROMPT = (
    "You answer questions about what cameras saw earlier, from stored observations. Each observation gives its "
    "time in square brackets, its source, what was said then, and usually its picture. Answer from them only, "
    "briefly; name the time of each observation you rely on, as written; say so when none of them shows it."
)


class PastQuestions:
    """Answers questions about the past from `store` through `core.call_model` (the question is already admitted)."""

    def __init__(self, store: EventStore, core: Any, *, max_events: int, options: dict[str, Any] | None = None) -> None:
        self.store = store
        self.core = core
        self.max_events = max_events
        self.options = dict(options or {})
        self.answered = 0

    async def answer(self, question: Question, *, on_partial: Any = None, deadline: float | None = None,
                     timing: QuestionTiming | None = None) -> Answer:
        """The answer (raises `QuestionError` when the store cannot be read or the model fails)."""
        until = question.until if question.until is not None else time.time()
        since = question.since
        try:
            events = await recall(self.store, question.question, source=question.source, since=since, until=until,
                                  limit=self.max_events)
            pictures = await asyncio.gather(*(self.store.athumbnail(e.id) for e in events))
        except StoreUnavailableError as exc:
            raise QuestionError(ErrorType.STORE_UNAVAILABLE, f"the event store cannot answer: {exc}",
                                id=question.id) from None
        self.answered += 1
        if not events:
            return Answer(id=question.id, question=question.question, source=question.source, events=[],
                          text=f"Nothing was recorded{_where(question.source)} {_window(since, until)}.")
        shown = len(events)
        while True:
            chosen = sorted(range(shown), key=lambda i: (events[i].at, events[i].id))  # oldest first
            request = ModelRequest(
                prompt=f"{question.question}\n\nStored observations{_where(question.source)} "
                       f"{_window(since, until)}, oldest first:",
                via=Via.MEMORY, asker="memory", source=question.source, system_prompt=PAST_SYSTEM_PROMPT,
                recalled=[Recalled(text=_said(events[i]), image=pictures[i], at=events[i].at, source=events[i].source)
                          for i in chosen],
                options=self.options, on_partial=on_partial, question_id=question.id)
            try:
                response = await self.core.call_model(request, deadline=deadline, timing=timing)
                break
            except QuestionError as exc:
                if exc.type is not ErrorType.CONTEXT_EXCEEDED or shown == 1:
                    raise
                shown //= 2  # even the texts do not fit: keep the better half
        trimmed = dict(response.trimmed or {})
        if shown < len(events):
            trimmed["events"] = len(events) - shown
        return Answer(id=question.id, question=question.question, text=response.text, source=question.source,
                      model=response.model, trimmed=trimmed or None, events=[events[i].ref() for i in chosen])


def _said(event: StoredEvent) -> str:
    """What the model reads of an event beside its time and source."""
    if event.kind == "rule":
        said = event.text
    elif event.kind == "answer" and event.question:
        said = f"asked {event.question[:100]!r}, answered: {event.text}"
    else:
        said = f"{event.kind}: {event.text}"
    return said if len(said) <= MAX_TEXT_CHARS else said[:MAX_TEXT_CHARS - 3] + "..."


def _where(source: str | None) -> str:
    return f" on {source}" if source else ""


def _window(since: float | None, until: float) -> str:
    stamp = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))  # noqa: E731
    return f"from {stamp(since)} to {stamp(until)}" if since is not None else f"up to {stamp(until)}"
