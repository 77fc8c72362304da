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
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .errors import ErrorType, QuestionError
from .interfaces import MessageTransport
from .messages import Answer, Question, parse_question
from .telemetry import Via
from .timings import QuestionTiming
from .topics import valid_reply_topic

if TYPE_CHECKING:
    from .agent import VisualAgent

__all__ = ["MQTT_CONSUMER_TASK", "MqttQuestions", "SOURCE_CHECK_S", "SOURCE_TOPICS_TASK"]

logger = logging.getLogger(__name__)

MQTT_CONSUMER_TASK = "agent-mqtt-questions"
"""Name of the task that takes questions off the transport (the agent stops it last on close)."""
SOURCE_TOPICS_TASK = "agent-mqtt-source-topics"
"""Name of the task that follows the sources held with `<prefix>/<source>/ask` subscriptions."""
SOURCE_CHECK_S = 0.25
"""How often the sources held are compared with the source topics subscribed, for a frame source that cannot say
when they change (`WebRTCServer.wait_sources_changed` can)."""


class MqttQuestions:
    """The agent's MQTT intake: subscribes, takes each message, answers it through the agent's core."""

    def __init__(self, agent: VisualAgent, transport: MessageTransport) -> None:
        self.agent = agent
        self.transport = transport
        self._refusals: set[asyncio.Task[None]] = set()
        self.source_topics: dict[str, str] = {}
        """Source name -> its subscribed `<prefix>/<source>/ask` subscription."""

    async def start(self) -> list[asyncio.Task[None]]:
        """Subscribe to the questions topics; returns the consumer task (named `MQTT_CONSUMER_TASK`) and, with a frame
        source, the task following its sources (`SOURCE_TOPICS_TASK`)."""
        await self.transport.subscribe(self.agent.topics.ask_subscription(self.transport.shared_group))
        loop = asyncio.get_running_loop()
        tasks = []
        if self.agent.driver is not None:
            await self.sync_source_topics()  # configured sources: subscribed before the first question is taken
            tasks.append(loop.create_task(self._follow_sources(), name=SOURCE_TOPICS_TASK))
        tasks.insert(0, loop.create_task(self._consume(), name=MQTT_CONSUMER_TASK))
        self.transport.on_inbox_full = self._refuse_overflow
        return tasks

    async def sync_source_topics(self) -> None:
        """Subscribe `<prefix>/<source>/ask` for each source held now, unsubscribe those of sources gone; `source_topics`
        changes once the broker acknowledged."""
        driver = self.agent.driver
        held = set(driver.source_names()) if driver is not None else set()
        for source in [s for s in self.source_topics if s not in held]:
            await self.transport.unsubscribe(self.source_topics[source])
            del self.source_topics[source]
            logger.info("agent: source %s gone; no longer taking %s", source, self.agent.topics.source_ask(source))
        for source in sorted(held - set(self.source_topics)):
            topic = self.agent.topics.source_ask_subscription(source, self.transport.shared_group)
            await self.transport.subscribe(topic)  # returns after the broker's SUBACK (when connected)
            self.source_topics[source] = topic
            logger.info("agent: taking questions about %s on %s", source, topic)

    async def _follow_sources(self) -> None:
        wait_changed = getattr(self.agent.driver, "wait_sources_changed", None)
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
        """After the consumer stopped: finish `busy` refusals, answer what was received but not taken (`shutdown`)."""
        if self.transport.on_inbox_full == self._refuse_overflow:
            self.transport.on_inbox_full = None
        if self._refusals:
            await asyncio.gather(*self._refusals, return_exceptions=True)
        for msg in self.transport.take_pending():
            try:
                await self.handle(msg)  # `admit` refuses: a `shutdown` answer (or the payload's error)
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
        self.agent.counters["busy"] += 1
        busy = QuestionError(ErrorType.BUSY, "too many questions waiting (mqtt.inbox_max); ask again shortly")
        task = asyncio.get_running_loop().create_task(self.handle(msg, refuse=busy), name="agent-refuse-overflow")
        self._refusals.add(task)
        task.add_done_callback(self._refusals.discard)

    async def handle(self, msg: Any, *, refuse: QuestionError | None = None) -> None:
        """Take one `<prefix>/ask` message: answer it in a task, or answer with an error at once (`refuse`: this one)."""
        agent = self.agent
        if msg.retain:
            logger.warning("agent: ignoring a retained question on %s (it would be re-answered at every start)", msg.topic)
            return
        agent.telemetry.question(Via.MQTT)
        timing = QuestionTiming(id=None, received_at=msg.received_at)
        reply_to, forbidden = self._reply_topic(msg.response_topic)
        try:
            question = parse_question(msg.payload, max_bytes=agent.max_payload_bytes,
                                      max_chars=agent.config.max_question_chars, max_frames=agent.config.max_frames,
                                      max_lookback_s=agent.config.question_lookback_max_s())
        except QuestionError as exc:
            agent.counters[f"errors.{exc.type.value}"] += 1
            logger.warning("agent: bad question on %s: %s", msg.topic, exc.message)
            await self._refuse(Answer.failed(None, exc, provider=agent.provider_name), reply_to, msg.correlation_data)
            return
        topic_source = agent.topics.source_of_ask(msg.topic)
        if topic_source is not None:  # <prefix>/<source>/ask: the topic says which source
            question.source = topic_source
        timing.id = question.id
        queued_s = _queued_s(question, msg)
        refused = refuse or forbidden or agent.admit(question)
        if refused is not None:
            failed = Answer.failed(question, refused, provider=agent.provider_name)
            failed.queued_s = queued_s
            await self._refuse(failed, reply_to, msg.correlation_data)
            return
        agent.spawn(self._answer(question, reply_to, msg.correlation_data, timing, queued_s), f"agent-question-{question.id}")

    async def _refuse(self, answer: Answer, reply_to: str, correlation: bytes | None) -> None:
        """An answer given at once (bad payload, busy, shutdown)."""
        await self.transport.publish(reply_to, answer.payload(), correlation_data=correlation)
        self.agent.telemetry.answered(Via.MQTT, answer)

    def _reply_topic(self, response_topic: str | None) -> tuple[str, QuestionError | None]:
        """Where the answer goes: the MQTT 5 response topic when the transport allows it (`mqtt.response_topic_prefixes`),
        else `<prefix>/answer`, with a `forbidden_response_topic` error for a topic outside the allowed prefixes."""
        answer = self.agent.topics.answer
        if not response_topic:
            return answer, None
        allowed = getattr(self.transport, "response_topic_allowed", None)
        if allowed(response_topic) if allowed is not None else valid_reply_topic(response_topic):
            return response_topic, None
        self.agent.counters[f"errors.{ErrorType.FORBIDDEN_RESPONSE_TOPIC.value}"] += 1
        logger.warning("agent: refused response topic %r (not under mqtt.response_topic_prefixes)", response_topic[:200])
        prefixes: list[str] = getattr(getattr(self.transport, "config", None), "allowed_response_prefixes", list)()
        return answer, QuestionError(
            ErrorType.FORBIDDEN_RESPONSE_TOPIC,
            f"the response topic must start with one of {prefixes} (mqtt.response_topic_prefixes); this answer went to {answer}")

    async def _answer(self, question: Question, reply_to: str, correlation: bytes | None, timing: QuestionTiming,
                      queued_s: float | None = None) -> None:
        async def send_partial(payload: bytes) -> None:
            await self.transport.publish(self.agent.topics.partial, payload)

        async def send_answer(answer: Answer) -> None:
            answer.queued_s = queued_s
            await self.transport.publish(reply_to, answer.payload(), correlation_data=correlation)
            timing.published_at = time.monotonic()
            self.agent.timings.append(timing)

        await self.agent.answer_and_send(question, send_partial, send_answer, timing)


def _queued_s(question: Question, msg: Any) -> float | None:
    """How long the question waited before the daemon got it (its `asked_at` to receipt), or None."""
    received_wall = getattr(msg, "received_wall", 0.0)
    if question.asked_at is None or not received_wall:
        return None
    return max(0.0, received_wall - question.asked_at)
