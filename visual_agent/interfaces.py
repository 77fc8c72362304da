"""The seams of the agent, as `typing.Protocol`s (any object with these members serves) and the event it hands on.

The core and who uses it:
- `AgentCore` (`VisualAgent`): what an intake, a trigger, the rule engine or a memory query may call: `parse`,
  `admit`, `take` (answer an admitted question in a task of its own, through a `Reply`), `refuse`, `ask`,
  `complete` (the one call to the model), `describe`, `notify`. The intakes (`mqtt_intake`, `page_intake`,
  `triggers`) take this protocol, never the concrete class; the `Daemon` composes them (`intakes.open_intakes`).
- `Reply`: where one question's partials and answer go (an MQTT topic, a page peer).
- `AgentEvent` and `EventObserver`: every final answer, description and rule state change, with the frames it
  used, handed to each observer registered with `VisualAgent.observe` (Home Assistant's state sensor; the event
  store). Observers run after the answer is out, in order; a failing one is logged, never raised.

What the agent needs from its collaborators:
- `FrameSource` (the driver: `webrtc.WebRTCServer`, or a test's dict of `FrameBuffer`s): source names and their
  buffers. `PageChannel` is what a source that also carries the page's data channel adds (questions typed on
  the page, answers sent back to that peer); the agent takes page questions only from a source that has it.
- `MessageTransport` (`MqttMessager`): subscribe, a stream of received messages, publish, and the two hooks the
  agent uses so that no question is lost (`on_inbox_full`, `take_pending`).

`webrtc` and the MQTT client are not imported here: the protocols are structural, so the arrows stay one way.

Adding a consumer of answers (an event store, a notifier): write an `EventObserver` (one async callable taking an
`AgentEvent`) and register it with `agent.observe(observer)` where the daemon builds the agent. It sees:
- `kind` `answer` (a question, `via` mqtt/page/memory) and `description` (`via` periodic/scene): `answer` is the
  final `Answer` (also a failed one: check `answer.error`), `frames` the `TakenFrame`s the model saw (each holds
  the decoded `av.VideoFrame`, so a thumbnail can be made from it; off the event loop);
- `kind` `rule`: a rule turned on or off: `rule` is the `RuleChange` (name, state, previous, answer, reason, the
  evidence frame, the look-back strip JPEG when there is one), `frames` the one frame the check used.
An observer must not keep the loop busy: CPU and disk work go to a worker thread.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .errors import QuestionError
    from .messages import Answer, Question
    from .model_call import ModelRequest, ModelResponse
    from .sampling import TakenFrame
    from .telemetry import Via
    from .timings import QuestionTiming
    from .topics import Topics

__all__ = [
    "AgentCore",
    "AgentEvent",
    "DataMessageHandler",
    "EventKind",
    "EventObserver",
    "FrameSource",
    "FrameStore",
    "IncomingQuestion",
    "MessageTransport",
    "PageChannel",
    "Reply",
    "RuleChange",
]


class EventKind(str, enum.Enum):
    """What an `AgentEvent` reports."""

    ANSWER = "answer"
    """A question's final answer."""
    DESCRIPTION = "description"
    """A periodic or scene-change description."""
    RULE = "rule"
    """A rule turned on or off."""


@dataclass(frozen=True, slots=True)
class RuleChange:
    """A rule's state change: what the rule engine publishes on `<prefix>/<source>/rules/<name>/event`."""

    rule: str
    question: str
    state: str
    """`on` or `off`, now."""
    previous: str
    answer: bool | None
    """The check's yes/no that made the change."""
    reason: str
    evidence: TakenFrame
    """The frame of that check (decoded: an observer may thumbnail it)."""
    lookback_jpeg: bytes | None = None
    """The look-back strip (JPEG contact sheet of the seconds before), when the rule keeps one and turned on."""


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One final answer, description or rule change, as every `EventObserver` sees it."""

    kind: EventKind
    via: Via
    """Who asked: mqtt, page, periodic, scene, rule, memory."""
    source: str | None
    answer: Answer | None = None
    """The final answer or description (None for a rule change: see `rule`)."""
    frames: Sequence[TakenFrame] = ()
    """The frames the model saw, oldest first."""
    rule: RuleChange | None = None
    at: float = field(default_factory=time.time)
    """Unix seconds."""


EventObserver = Callable[[AgentEvent], Awaitable[None] | None]
"""``(event) -> None`` or an awaitable: told of each `AgentEvent` (register with `VisualAgent.observe`)."""


class Reply(Protocol):
    """Where one question's partials and final answer go (the intake that took it knows)."""

    async def partial(self, payload: bytes) -> None:
        """A streamed piece (`messages.partial_payload`)."""
        ...

    async def answer(self, answer: Answer) -> None:
        """The final answer (or the error answer); called exactly once."""
        ...


class AgentCore(Protocol):
    """What intakes, triggers, the rule engine and memory queries use of the agent (`VisualAgent`)."""

    @property
    def topics(self) -> Topics:
        """The MQTT topics of this agent's prefix."""
        ...

    def parse(self, payload: bytes | str, via: Via) -> Question:
        """Count an arrival and parse its payload with the agent's limits; `QuestionError` (bad_payload) when bad."""
        ...

    def admit(self, asker: str, question_id: Any = None) -> QuestionError | None:
        """None when `asker` (an MQTT client or response topic, a page peer, "rules", "descriptions") may ask now
        or wait its turn; else the `busy` or `shutdown` error to answer with."""
        ...

    def take(self, question: Question, reply: Reply, *, via: Via, asker: str, owner: str | None = None,
             timing: QuestionTiming | None = None) -> QuestionError | None:
        """Admit `question` and answer it in a task of its own (which waits for its turn) through `reply`; the
        refusal when not admitted (the caller answers with it: `refuse`). Its conversation id names a conversation
        of `owner` (default: `asker`): another asker's id is another conversation."""
        ...

    def refuse(self, via: Via, question: Question | None, error: QuestionError) -> Answer:
        """The error answer to send at once (bad payload, busy, shutdown), counted as answered."""
        ...

    async def ask(self, question: Question, *, via: Via = ..., on_partial: Any = None,
                  timing: QuestionTiming | None = None, owner: str | None = None) -> Answer:
        """The answer to an admitted `question` (never raises: failures are answers with `error`)."""
        ...

    async def complete(self, request: ModelRequest, *, timing: QuestionTiming | None = None) -> ModelResponse:
        """The one call to the model: admission, deadline, context budget, telemetry. `QuestionError` on failure."""
        ...

    async def describe(self, source: str, prompt: str, via: Via) -> Answer | None:
        """A description of `source` once its turn comes, published; None when busy."""
        ...

    async def notify(self, event: AgentEvent) -> None:
        """Hand `event` to every observer."""
        ...

    async def drain(self, grace_s: float | None = None) -> None:
        """Admit nothing more; give the questions in flight `grace_s` to finish, then cancel them."""
        ...

DataMessageHandler = Callable[[str, str, str], Awaitable[None]]
"""``async (source, peer_id, text)``: a text message from the page's data channel."""


class FrameStore(Protocol):
    """One source's frames (`webrtc.FrameBuffer`): bounded, newest wins."""

    def latest(self) -> Any:
        """The newest frame entry (`.frame`, `.seq`, `.pts`, `.received_at`), or None before the first."""
        ...

    def window(self, seconds: float, k: int) -> list[Any]:
        """Up to `k` entries spread over the last `seconds`, oldest first."""
        ...

    async def wait_for_frame(self, timeout: float | None = None) -> Any:
        """The newest entry once there is one; TimeoutError after `timeout`."""
        ...


class FrameSource(Protocol):
    """Where frames come from: named sources, each with a `FrameStore`."""

    def source_names(self) -> list[str]:
        """The sources that exist now (configured ones and connected peers)."""
        ...

    def get_buffer(self, name: str) -> Any:
        """The `FrameStore` of `name`; KeyError when there is no such source (any more)."""
        ...


@runtime_checkable
class PageChannel(Protocol):
    """A frame source that also carries the page's data channel (`webrtc.WebRTCServer` does)."""

    on_data_message: DataMessageHandler | None
    """Set by the agent to take the page's questions; None: nobody listens."""

    async def send_data(self, peer_id: str, text: str) -> None:
        """Send text to one peer's data channel; raises when the peer has left."""
        ...


class IncomingQuestion(Protocol):
    """One received MQTT message (`visual_agent.mqtt.IncomingMessage`)."""

    topic: str
    payload: bytes
    retain: bool
    received_at: float
    response_topic: str | None
    correlation_data: bytes | None


class MessageTransport(Protocol):
    """The message bus the agent listens and answers on (`MqttMessager`)."""

    on_inbox_full: Callable[[Any], None] | None
    """Called with each received message dropped because the inbox was full (the agent answers it `busy`)."""

    @property
    def shared_group(self) -> str | None:
        """The shared-subscription group the agent subscribes in (several daemons split questions); None: none."""
        ...

    async def subscribe(self, topic: str) -> None:
        """Receive messages on `topic` (kept across reconnects)."""
        ...

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving `topic` (a source that went)."""
        ...

    def messages(self) -> AsyncIterator[Any]:
        """Received messages (`IncomingQuestion`), oldest first, until the transport closes."""
        ...

    def take_pending(self) -> list[Any]:
        """Received messages nobody has taken yet, removed from the queue (on shutdown, to answer them)."""
        ...

    async def publish(self, topic: str, payload: bytes | str, *, retain: bool = False,
                      correlation_data: bytes | None = None) -> None:
        """Publish (or keep it until the connection is back)."""
        ...
