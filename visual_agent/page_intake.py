"""`PageQuestions`: questions typed on the browser page, over that peer's data channel.

Answers and partials go back on the same peer's channel; a copy of each answer goes to `<prefix>/answer` for
MQTT listeners (dashboards, Home Assistant). A question that names no source is about the peer's own camera.
Each peer connection is one conversation (its history is its own), unless the page sends its own `conversation`
id: the page keeps one per browser tab, so its conversation survives a reconnect.
A peer that left gets nothing (there is no one to answer).

It is an async context manager: entered, it sets itself as the channel's handler; left, it lets go of it. The
admission key of a question is its peer (`page:<peer id>`): each tab's connection has its own fair share. Its
conversations belong to the page (owner `page`): whoever holds the page's token, so a tab's own id (random, never
on MQTT) finds its history again after a reconnect, while an MQTT client sending the same id gets another
conversation.
"""

from __future__ import annotations

import logging

from .errors import QuestionError
from .interfaces import AgentCore, MessageTransport, PageChannel
from .messages import Answer
from .telemetry import Via

__all__ = ["PAGE_OWNER", "PageQuestions"]

logger = logging.getLogger(__name__)

PAGE_OWNER = "page"
"""Whose conversations the page's questions continue (every holder of the page's token)."""


class PageQuestions:
    """The data-channel intake of one core, on a frame source that carries the page (`PageChannel`)."""

    def __init__(self, core: AgentCore, channel: PageChannel, transport: MessageTransport | None = None) -> None:
        """`transport`: where a copy of each answer goes (`<prefix>/answer`); None: nowhere."""
        self.core = core
        self.channel = channel
        self.transport = transport

    async def __aenter__(self) -> PageQuestions:
        self.channel.on_data_message = self.handle
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.channel.on_data_message == self.handle:
            self.channel.on_data_message = None

    async def handle(self, source: str, peer_id: str, text: str) -> None:
        """A question typed on the page: answer it in a task, or at once with an error."""
        try:
            question = self.core.parse(text, Via.PAGE)
        except QuestionError as exc:
            await self._send(peer_id, self.core.refuse(Via.PAGE, None, exc).payload())
            return
        if question.source is None:
            question.source = source
        if question.conversation is None:
            question.conversation = f"peer:{peer_id}"
        refused = self.core.take(question, _PageReply(self, peer_id), via=Via.PAGE, asker=f"page:{peer_id}",
                                owner=PAGE_OWNER)
        if refused is not None:
            await self._send(peer_id, self.core.refuse(Via.PAGE, question, refused).payload())

    async def _send(self, peer_id: str, payload: bytes) -> None:
        try:
            await self.channel.send_data(peer_id, payload.decode("utf-8"))
        except Exception as exc:  # the peer left: nothing to answer to
            logger.info("agent: cannot answer peer %s: %s", peer_id, exc)


class _PageReply:
    """One question's way back: partials and the answer to its peer, a copy of the answer to MQTT listeners."""

    def __init__(self, intake: PageQuestions, peer_id: str) -> None:
        self.intake = intake
        self.peer_id = peer_id

    async def partial(self, payload: bytes) -> None:
        await self.intake._send(self.peer_id, payload)

    async def answer(self, answer: Answer) -> None:
        await self.intake._send(self.peer_id, answer.payload())
        if self.intake.transport is not None:  # a copy for MQTT listeners (dashboards, Home Assistant)
            await self.intake.transport.publish(self.intake.core.topics.answer, answer.payload())
