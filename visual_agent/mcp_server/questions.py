"""`McpQuestions`: the intake of the MCP tool `ask`, beside MQTT and the page.

A question is parsed with the agent's limits (`AgentCore.parse`), admitted and answered in a task of the agent's own
(`take`, asker `mcp`: one admission key for every MCP caller, bounded by `agent.max_in_flight`), and its answer comes
back through a `Reply`; a copy goes to `<prefix>/answer` for MQTT listeners, as the page's answers do. The newest
frame the answer used comes from the agent's event (`AgentEvent.frames`), encoded as a JPEG in a worker thread.
A caller that goes away does not cancel its question: the answer is still given, and still copied to MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from ..errors import QuestionError
from ..interfaces import AgentEvent, EventKind
from ..messages import Answer
from ..telemetry import Via

if TYPE_CHECKING:
    from ..agent import VisualAgent

__all__ = ["ASKER", "FRAME_WAIT_S", "McpQuestions"]

logger = logging.getLogger(__name__)

ASKER = "mcp"
"""The admission key of every MCP question."""
FRAME_WAIT_S = 5.0
"""How long an answer waits for its event (which carries the frames) after the answer itself; then no image."""
_FRAME_MAX_SIDE = 640


class _Pending:
    """One MCP question in flight: its answer (from the reply) and its frames (from the agent's event)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.answer: asyncio.Future[Answer] = loop.create_future()
        self.frames: asyncio.Future[tuple[Any, ...]] = loop.create_future()


class _McpReply:
    def __init__(self, intake: McpQuestions, pending: _Pending) -> None:
        self.intake = intake
        self.pending = pending

    async def partial(self, payload: bytes) -> None:
        return None  # a tool call returns once: nothing is streamed

    async def answer(self, answer: Answer) -> None:
        if not self.pending.answer.done():
            self.pending.answer.set_result(answer)
        transport = self.intake.agent.messager
        if transport is not None:  # a copy for MQTT listeners (dashboards, Home Assistant)
            await transport.publish(self.intake.agent.topics.answer, answer.payload())


class McpQuestions:
    """Questions from MCP callers for one agent; `await ask(payload)` returns the answer and its newest frame."""

    def __init__(self, agent: VisualAgent) -> None:
        self.agent = agent
        self._pending: dict[Any, _Pending] = {}
        agent.observe(self._observe)

    async def ask(self, payload: str) -> tuple[Answer, bytes | None]:
        """The answer to one question payload (the JSON of `<prefix>/ask`), and the newest frame it used as JPEG."""
        agent = self.agent
        try:
            question = agent.parse(payload, Via.MCP)
        except QuestionError as exc:
            return agent.refuse(Via.MCP, None, exc), None
        question.stream = False
        pending = _Pending()
        self._pending[question.id] = pending
        try:
            refused = agent.take(question, _McpReply(self, pending), via=Via.MCP, asker=ASKER)
            if refused is not None:
                return agent.refuse(Via.MCP, question, refused), None
            answer = await asyncio.shield(pending.answer)  # the question runs on when its caller goes away
            if answer.error is not None:
                return answer, None
            with contextlib.suppress(TimeoutError):
                frames = await asyncio.wait_for(asyncio.shield(pending.frames), FRAME_WAIT_S)
                if frames:
                    return answer, await asyncio.to_thread(_jpeg, frames[-1].frame)
            return answer, None
        finally:
            self._pending.pop(question.id, None)

    async def _observe(self, event: AgentEvent) -> None:
        if event.kind is not EventKind.ANSWER or event.via is not Via.MCP or event.answer is None:
            return
        pending = self._pending.get(event.answer.id)
        if pending is not None and not pending.frames.done():
            pending.frames.set_result(tuple(event.frames))


def _jpeg(frame: Any) -> bytes:
    """A frame the answer used, as the JPEG an MCP client shows (worker thread)."""
    from encoders import JpegEncoder

    return JpegEncoder(max_side=_FRAME_MAX_SIDE, quality=80).encode(frame)
