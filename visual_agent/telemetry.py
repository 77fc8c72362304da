"""`Telemetry`: what the agent reports about each question, handed to Prometheus metrics and OpenTelemetry traces.

The agent calls two methods and knows nothing else: `question(via)` when a question arrives, and
`answered(via, answer, timing)` once its answer is out (sent, or refused at once). The stages are read from the
question's `QuestionTiming` afterwards, so the answer path carries no instrumentation of its own and a stage that
did not run (a refusal, a non-streamed answer's first token) is simply absent.

`via` says how the question came: `mqtt`, `page`, `periodic` or `scene` (`Via`). Observers are
`metrics.AgentMetrics` (always, in the daemon) and `tracing.QuestionTracing` (with `telemetry.otlp_endpoint`);
a failing observer is logged, never raised into the answer path.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Protocol

from .sampling import Trigger

if TYPE_CHECKING:
    from .messages import Answer
    from .timings import QuestionTiming

__all__ = ["QuestionObserver", "Telemetry", "Via", "via_of"]

logger = logging.getLogger(__name__)


class Via(str, enum.Enum):
    """How a question reached the agent (the `via` label)."""

    MQTT = "mqtt"
    """`<prefix>/ask` or `<prefix>/<source>/ask`."""
    PAGE = "page"
    """Typed on the page (its data channel)."""
    MCP = "mcp"
    """The MCP tool `ask` (another agent)."""
    PERIODIC = "periodic"
    """The agent's own periodic description."""
    SCENE = "scene"
    """The agent's own scene-change description."""


def via_of(trigger: Trigger) -> Via:
    """The `Via` of a description the agent asked itself."""
    return Via.SCENE if trigger is Trigger.SCENE_CHANGE else Via.PERIODIC


def outcome_of(answer: Answer) -> str:
    """`ok`, or the answer's error type (a bounded set: `errors.ErrorType`)."""
    return "ok" if answer.error is None else str(answer.error.get("type", "error"))


class QuestionObserver(Protocol):
    """Something that records questions and answers (metrics, traces)."""

    def question(self, via: Via) -> None: ...

    def answered(self, via: Via, answer: Answer, timing: QuestionTiming | None) -> None: ...


class Telemetry:
    """Hands each event to every observer; with none it does nothing (the agent's default)."""

    def __init__(self, *observers: QuestionObserver) -> None:
        self.observers = list(observers)

    def add(self, observer: QuestionObserver) -> None:
        self.observers.append(observer)

    def question(self, via: Via) -> None:
        """A question arrived (counted before it is parsed or admitted)."""
        for observer in self.observers:
            try:
                observer.question(via)
            except Exception:
                logger.exception("telemetry: %s failed on a question", type(observer).__name__)

    def answered(self, via: Via, answer: Answer, timing: QuestionTiming | None = None) -> None:
        """Its answer is out; `timing` is None for an answer given at once (bad payload, busy, shutdown)."""
        for observer in self.observers:
            try:
                observer.answered(via, answer, timing)
            except Exception:
                logger.exception("telemetry: %s failed on an answer", type(observer).__name__)
