"""`PageQuestions`: questions typed on the browser page, over that peer's data channel.

Answers and partials go back on the same peer's channel; a copy of each answer goes to `<prefix>/answer` for
MQTT listeners (dashboards, Home Assistant). A question that names no source is about the peer's own camera.
Each peer connection is one conversation (its history is its own), unless the page sends its own `conversation`
id: the page keeps one per browser tab, so its conversation survives a reconnect.
A peer that left gets nothing (there is no one to answer).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .errors import QuestionError
from .interfaces import PageChannel
from .messages import Answer, Question, parse_question
from .telemetry import Via

if TYPE_CHECKING:
    from .agent import VisualAgent

__all__ = ["PageQuestions"]

logger = logging.getLogger(__name__)


class PageQuestions:
    """The agent's data-channel intake on a frame source that carries the page (`PageChannel`)."""

    def __init__(self, agent: VisualAgent, channel: PageChannel) -> None:
        self.agent = agent
        self.channel = channel

    def attach(self) -> None:
        """Take the page's questions from now on."""
        self.channel.on_data_message = self.agent.handle_data_message

    def detach(self) -> None:
        """Stop taking them (questions typed later are not answered by this agent)."""
        if self.channel.on_data_message == self.agent.handle_data_message:
            self.channel.on_data_message = None

    async def handle(self, source: str, peer_id: str, text: str) -> None:
        """A question typed on the page: answer it in a task, or at once with an error."""
        agent = self.agent
        agent.telemetry.question(Via.PAGE)
        try:
            question = parse_question(text, max_bytes=agent.max_payload_bytes, max_chars=agent.config.max_question_chars,
                                      max_frames=agent.config.max_frames,
                                      max_lookback_s=agent.config.question_lookback_max_s())
        except QuestionError as exc:
            await self._refuse(peer_id, Answer.failed(None, exc, provider=agent.provider_name))
            return
        if question.source is None:
            question.source = source
        if question.conversation is None:
            question.conversation = f"peer:{peer_id}"
        refused = agent.admit(question)
        if refused is not None:
            await self._refuse(peer_id, Answer.failed(question, refused, provider=agent.provider_name))
            return
        agent.spawn(self._answer(question, peer_id), f"agent-question-{question.id}")

    async def _answer(self, question: Question, peer_id: str) -> None:
        async def send_partial(payload: bytes) -> None:
            await self._send(peer_id, payload)

        async def send_answer(answer: Answer) -> None:
            await self._send(peer_id, answer.payload())
            if self.agent.messager is not None:  # a copy for MQTT listeners (dashboards, Home Assistant)
                await self.agent.messager.publish(self.agent.topics.answer, answer.payload())

        await self.agent.answer_and_send(question, send_partial, send_answer, via=Via.PAGE)

    async def _refuse(self, peer_id: str, answer: Answer) -> None:
        await self._send(peer_id, answer.payload())
        self.agent.telemetry.answered(Via.PAGE, answer)

    async def _send(self, peer_id: str, payload: bytes) -> None:
        try:
            await self.channel.send_data(peer_id, payload.decode("utf-8"))
        except Exception as exc:  # the peer left: nothing to answer to
            logger.info("agent: cannot answer peer %s: %s", peer_id, exc)
