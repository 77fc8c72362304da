"""`Telemetry`: what the agent reports about each question, handed to Prometheus metrics, OpenTelemetry traces and
the counts /healthz shows.

The agent calls two methods and knows nothing else: `question(via)` when a question arrives, and
`answered(via, answer, timing)` once its answer is out (sent, or refused at once). The stages are read from the
question's `QuestionTiming` afterwards, so the answer path carries no instrumentation of its own and a stage that
did not run (a refusal, a non-streamed answer's first token) is simply absent.

`via` says who asked (`Via`): `mqtt`, `page`, the agent's own `periodic` and `scene` descriptions, a `rule` check,
a `memory` query. Observers are `Counts` (always: what /healthz shows), `metrics.AgentMetrics` (the daemon's
`/metrics`) and `tracing.QuestionTracing` (with `telemetry.otlp_endpoint`); a failing observer is logged, never
raised into the answer path.
"""

from __future__ import annotations

import collections
import enum
import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .messages import Answer
    from .timings import QuestionTiming

__all__ = ["Counts", "QuestionObserver", "Telemetry", "Via", "outcome_of"]

logger = logging.getLogger(__name__)


class Via(str, enum.Enum):
    """Who asked the model, and why (the `via` label of the metrics, the kind of an answer)."""

    MQTT = "mqtt"
    """A question on `<prefix>/ask` or `<prefix>/<source>/ask`."""
    PAGE = "page"
    """A question typed on the page (its data channel, or `POST /api/ask`)."""
    MCP = "mcp"
    """A question from another agent, through the MCP tool `ask`."""
    PERIODIC = "periodic"
    """The agent's own description, every `agent.periodic_interval_s`."""
    SCENE = "scene"
    """The agent's own description after the picture changed past `agent.scene_change.threshold`."""
    RULE = "rule"
    """A rule's yes/no check (`rules.RuleEngine`)."""
    MEMORY = "memory"
    """A question about the past, answered from stored events."""
    SCENE_MEMORY = "scene_memory"
    """The agent's own description for the event store, after the picture changed (`storage.memory`)."""

    @property
    def asked(self) -> bool:
        """True for a question someone asked (it belongs to a conversation and gets an answer sent back)."""
        return self in (Via.MQTT, Via.PAGE, Via.MCP)

    @property
    def describes(self) -> bool:
        """True for the agent's own descriptions (published on `<prefix>/<source>/description`)."""
        return self in (Via.PERIODIC, Via.SCENE, Via.SCENE_MEMORY)


def outcome_of(answer: Answer) -> str:
    """`ok`, or the answer's error type (a bounded set: `errors.ErrorType`)."""
    return "ok" if answer.error is None else str(answer.error.get("type", "error"))


class QuestionObserver(Protocol):
    """Something that records questions and answers (metrics, traces, counts)."""

    def question(self, via: Via) -> None: ...

    def answered(self, via: Via, answer: Answer, timing: QuestionTiming | None) -> None: ...


class Counts:
    """Questions by `via` and answers by outcome, as plain counters: what /healthz shows, counted where the metrics
    count (so the two never disagree)."""

    def __init__(self) -> None:
        self.questions: collections.Counter[str] = collections.Counter()
        self.answers: collections.Counter[str] = collections.Counter()
        """`answers` (ok) and `errors.<type>` per error type."""

    def question(self, via: Via) -> None:
        self.questions[Via(via).value] += 1

    def answered(self, via: Via, answer: Answer, timing: QuestionTiming | None) -> None:
        outcome = outcome_of(answer)
        self.answers["answers" if outcome == "ok" else f"errors.{outcome}"] += 1


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
