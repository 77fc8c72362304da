"""`MqttQuestions`: questions from `<prefix>/ask` and `<prefix>/<source>/ask` (or their shared subscriptions) in,
answers out on MQTT.

`<prefix>/<source>/ask` is subscribed for each source the frame source holds, from when it appears (checked every
`SOURCE_CHECK_S`) until it goes, so with several daemons on one broker a question reaches the daemon that has the
camera; the topic's source is the question's source. With `mqtt.shared_group` replicas holding the same source
share its topic (`$share/<group>/...`): each question goes to one of them.

The MQTT rules live here: a retained question is ignored (it would be re-answered at every start); an MQTT 5
`response_topic` gets the answer with the asker's `correlation_data` when the transport allows that topic
(`MqttMessager.response_topic_allowed`: under `mqtt.response_topic_prefixes`), else `<prefix>/answer` does, with a
`forbidden_response_topic` error for a topic outside the prefixes; an answer carries `queued_s` when the question
said when it was asked (`asked_at`); partials go to `<prefix>/answer/partial`. A question the transport's full inbox dropped
gets a `busy` answer, and at shutdown those received but not yet taken get a `shutdown` answer: none is lost.
Every message is settled (`msg.settle()`, so the broker may forget it) once it is dealt with: a question when its
answer is handed to the transport (it leaves before the acknowledgement), anything else at once.

`queued_s` is the asker's `asked_at` (its wall clock) to the daemon's receipt (this host's wall clock): the two
clocks are different machines' unless they are synchronised (NTP), so it is a hint, never negative.
It is an async context manager: entered, it subscribes and takes questions; left, it stops taking them and answers
what is left. The asker key of a question (its fair share, whose conversations its id names) is its MQTT 5
response topic, else its publishing client as the embedded broker knows it (`client:<id>`, from `senders`), else
`mqtt`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .errors import ErrorType, QuestionError
from .interfaces import AgentCore, FrameSource, MessageTransport
from .messages import Answer, Question
from .tasks import cancel_and_wait
from .telemetry import Via
from .timings import QuestionTiming
from .topics import valid_reply_topic

__all__ = ["MqttQuestions", "SOURCE_CHECK_S"]

logger = logging.getLogger(__name__)

Senders = Callable[[str, bytes], "str | None"]
"""(topic, payload) -> the asker key of the client that published that message, or None."""

SOURCE_CHECK_S = 0.25
"""How often the sources held are compared with the source topics subscribed, for a frame source that cannot say
when they change (`WebRTCServer.wait_sources_changed` can)."""


class MqttQuestions:
    """The MQTT intake of one core: subscribes, takes each message, answers it through the core."""

    def __init__(self, core: AgentCore, transport: MessageTransport, frames: FrameSource | None = None, *,
                 senders: Senders | None = None) -> None:
        """`senders`: who published a message, by (topic, payload) (`EmbeddedBroker.sender_of`); None: unknown."""
        self.core = core
        self.senders = senders
        self.transport = transport
        self.frames = frames
        self.topics = core.topics
        self._refusals: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.source_topics: dict[str, str] = {}
        """Source name -> its subscribed `<prefix>/<source>/ask` subscription."""

    async def __aenter__(self) -> MqttQuestions:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Subscribe to the questions topics (the per-source ones of the sources held now before the first question
        is taken), then take questions and follow the sources in named tasks."""
        await self.transport.subscribe(self.topics.ask_subscription(self.transport.shared_group))
        loop = asyncio.get_running_loop()
        if self.frames is not None:
            await self.sync_source_topics()
            self._tasks.append(loop.create_task(self._follow_sources(), name="agent-mqtt-source-topics"))
        self._tasks.append(loop.create_task(self._consume(), name="agent-mqtt-questions"))
        self.transport.on_inbox_full = self._refuse_overflow

    async def sync_source_topics(self) -> None:
        """Subscribe `<prefix>/<source>/ask` for each source held now, unsubscribe those of sources gone; `source_topics`
        changes once the broker acknowledged."""
        held = set(self.frames.source_names()) if self.frames is not None else set()
        for source in [s for s in self.source_topics if s not in held]:
            await self.transport.unsubscribe(self.source_topics[source])
            del self.source_topics[source]
            logger.info("agent: source %s gone; no longer taking %s", source, self.topics.source_ask(source))
        for source in sorted(held - set(self.source_topics)):
            topic = self.topics.source_ask_subscription(source, self.transport.shared_group)
            await self.transport.subscribe(topic)  # returns after the broker's SUBACK (when connected)
            self.source_topics[source] = topic
            logger.info("agent: taking questions about %s on %s", source, topic)

    async def _follow_sources(self) -> None:
        wait_changed = getattr(self.frames, "wait_sources_changed", None)
        version = 0
        while True:
            if wait_changed is not None:
                version = await wait_changed(version)
            else:
                await asyncio.sleep(SOURCE_CHECK_S)
            try:
                await self.sync_source_topics()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("agent: could not update the per-source question topics")

    async def close(self) -> None:
        """Stop taking questions, finish `busy` refusals, answer what was received but not taken (`shutdown`: the
        core no longer admits)."""
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        if self.transport.on_inbox_full == self._refuse_overflow:
            self.transport.on_inbox_full = None
        if self._refusals:
            await asyncio.gather(*self._refusals, return_exceptions=True)
        for msg in self.transport.take_pending():
            try:
                await self.handle(msg)
            except Exception:
                logger.exception("agent: could not answer a message on %s at shutdown", msg.topic)

    async def _consume(self) -> None:
        async for msg in self.transport.messages():
            try:
                await self.handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("agent: could not handle a message on %s", msg.topic)

    def _refuse_overflow(self, msg: Any) -> None:
        """A question the transport's full inbox dropped: a `busy` answer, so it is not lost without one."""
        busy = QuestionError(ErrorType.BUSY, "too many questions waiting (mqtt.inbox_max); ask again shortly")
        task = asyncio.get_running_loop().create_task(self.handle(msg, refuse=busy), name="agent-refuse-overflow")
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)

    async def handle(self, msg: Any, *, refuse: QuestionError | None = None) -> None:
        """Take one `<prefix>/ask` message: answer it in a task (its reply settles it), or answer with an error at
        once (`refuse`: this one) and settle it."""
        settle = getattr(msg, "settle", _nothing)
        taken = False
        try:
            sender = self.senders(msg.topic, msg.payload) if self.senders is not None else None  # taken for each message
            taken = await self._take(msg, refuse, settle, msg.response_topic or sender or "mqtt")
        finally:
            if not taken:
                settle()

    async def _take(self, msg: Any, refuse: QuestionError | None, settle: Callable[[], None], asker: str) -> bool:
        """Whether the core took the question (its reply settles the message)."""
        if msg.retain:
            logger.warning("agent: ignoring a retained question on %s (it would be re-answered at every start)", msg.topic)
            return False
        timing = QuestionTiming(id=None, received_at=msg.received_at)
        reply_to, forbidden = self._reply_topic(msg.response_topic)
        try:
            question = self.core.parse(msg.payload, Via.MQTT)
        except QuestionError as exc:
            logger.warning("agent: bad question on %s: %s", msg.topic, exc.message)
            await self._send_now(self.core.refuse(Via.MQTT, None, exc), reply_to, msg.correlation_data)
            return False
        topic_source = self.topics.source_of_ask(msg.topic)
        if topic_source is not None:  # <prefix>/<source>/ask: the topic says which source
            question.source = topic_source
        timing.id = question.id
        queued_s = _queued_s(question, msg)
        reply = _MqttReply(self, reply_to, msg.correlation_data, queued_s, settle)
        refused = refuse or forbidden
        if refused is None:
            refused = self.core.take(question, reply, via=Via.MQTT, asker=asker, timing=timing)
        if refused is not None:
            failed = self.core.refuse(Via.MQTT, question, refused)
            failed.queued_s = queued_s
            await self._send_now(failed, reply_to, msg.correlation_data)
            return False
        return True

    async def _send_now(self, answer: Answer, reply_to: str, correlation: bytes | None) -> None:
        """An answer given at once (bad payload, busy, shutdown)."""
        await self.transport.publish(reply_to, answer.payload(), correlation_data=correlation)

    def _reply_topic(self, response_topic: str | None) -> tuple[str, QuestionError | None]:
        """Where the answer goes: the MQTT 5 response topic when the transport allows it (`mqtt.response_topic_prefixes`),
        else `<prefix>/answer`, with a `forbidden_response_topic` error for a topic outside the allowed prefixes."""
        answer = self.topics.answer
        if not response_topic:
            return answer, None
        allowed = getattr(self.transport, "response_topic_allowed", None)
        if allowed(response_topic) if allowed is not None else valid_reply_topic(response_topic):
            return response_topic, None
        logger.warning("agent: refused response topic %r (not under mqtt.response_topic_prefixes)", response_topic[:200])
        prefixes: list[str] = getattr(getattr(self.transport, "config", None), "allowed_response_prefixes", list)()
        return answer, QuestionError(
            ErrorType.FORBIDDEN_RESPONSE_TOPIC,
            f"the response topic must start with one of {prefixes} (mqtt.response_topic_prefixes); this answer went to {answer}")


class _MqttReply:
    """One question's way back: partials to `<prefix>/answer/partial`, the answer to its reply topic."""

    def __init__(self, intake: MqttQuestions, reply_to: str, correlation: bytes | None, queued_s: float | None,
                 settle: Callable[[], None]) -> None:
        self.intake = intake
        self.settle = settle
        self.reply_to = reply_to
        self.correlation = correlation
        self.queued_s = queued_s

    async def partial(self, payload: bytes) -> None:
        await self.intake.transport.publish(self.intake.topics.partial, payload)

    async def answer(self, answer: Answer) -> None:
        answer.queued_s = self.queued_s
        try:
            await self.intake.transport.publish(self.reply_to, answer.payload(), correlation_data=self.correlation)
        finally:
            self.settle()


def _nothing() -> None:
    return None


def _queued_s(question: Question, msg: Any) -> float | None:
    """How long the question waited before the daemon got it: its `asked_at` (the asker's wall clock) to the
    receipt (this host's wall clock; see the module docstring), or None."""
    received_wall = getattr(msg, "received_wall", 0.0)
    if question.asked_at is None or not received_wall:
        return None
    return max(0.0, received_wall - question.asked_at)
