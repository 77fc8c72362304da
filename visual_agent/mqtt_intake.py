"""`MqttQuestions`: questions from `<prefix>/ask` (or its shared subscription) in, answers out on MQTT.

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
from .timings import QuestionTiming
from .topics import valid_reply_topic

if TYPE_CHECKING:
    from .agent import VisualAgent

__all__ = ["MQTT_CONSUMER_TASK", "MqttQuestions"]

logger = logging.getLogger(__name__)

MQTT_CONSUMER_TASK = "agent-mqtt-questions"
"""Name of the task that takes questions off the transport (the agent stops it last on close)."""


class MqttQuestions:
    """The agent's MQTT intake: subscribes, takes each message, answers it through the agent's core."""

    def __init__(self, agent: VisualAgent, transport: MessageTransport) -> None:
        self.agent = agent
        self.transport = transport
        self._refusals: set[asyncio.Task[None]] = set()

    async def start(self) -> asyncio.Task[None]:
        """Subscribe to the questions topic; returns the consumer task (named `MQTT_CONSUMER_TASK`)."""
        await self.transport.subscribe(self.agent.topics.ask_subscription(self.transport.shared_group))
        task = asyncio.get_running_loop().create_task(self._consume(), name=MQTT_CONSUMER_TASK)
        self.transport.on_inbox_full = self._refuse_overflow
        return task

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
        timing = QuestionTiming(id=None, received_at=msg.received_at)
        reply_to, forbidden = self._reply_topic(msg.response_topic)
        try:
            question = parse_question(msg.payload, max_bytes=agent.max_payload_bytes,
                                      max_chars=agent.config.max_question_chars, max_frames=agent.config.max_frames)
        except QuestionError as exc:
            agent.counters[f"errors.{exc.type.value}"] += 1
            logger.warning("agent: bad question on %s: %s", msg.topic, exc.message)
            await self.transport.publish(reply_to, Answer.failed(None, exc, provider=agent.provider_name).payload(),
                                         correlation_data=msg.correlation_data)
            return
        timing.id = question.id
        queued_s = _queued_s(question, msg)
        refused = refuse or forbidden or agent.admit(question)
        if refused is not None:
            failed = Answer.failed(question, refused, provider=agent.provider_name)
            failed.queued_s = queued_s
            await self.transport.publish(reply_to, failed.payload(), correlation_data=msg.correlation_data)
            return
        agent.spawn(self._answer(question, reply_to, msg.correlation_data, timing, queued_s), f"agent-question-{question.id}")

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
