"""`RequestQuestions`: questions asked in a request that waits for its answer (the MCP tool `ask`, the console's
`POST /api/ask`), beside MQTT and the page's data channel.

A question is parsed with the agent's limits (`AgentCore.parse`), admitted and answered in a task of the agent's own
(`take`, under the asker key the caller names, so `agent.max_in_flight` and the fair share per asker apply), and its
answer comes back through a `Reply`; a copy goes to `<prefix>/answer` for MQTT listeners, as the page's answers do.
On request, the newest frame the answer used comes from the agent's event (`AgentEvent.frames`: the very `Answer`
object the reply got), encoded as a JPEG in a worker thread; with an `on_partial` callback the answer streams to it
as it is made (the partial JSON of `<prefix>/answer/partial`). A caller that goes away does not cancel its question:
the answer is still given, and still copied to MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import QuestionError
from .interfaces import AgentEvent, EventKind
from .messages import Answer
from .telemetry import Via

if TYPE_CHECKING:
    from .agent import VisualAgent

__all__ = ["FRAME_WAIT_S", "PartialSink", "RequestQuestions"]

logger = logging.getLogger(__name__)

FRAME_WAIT_S = 5.0
"""How long an answer waits for its event (which carries the frames) after the answer itself; then no image."""
_FRAME_MAX_SIDE = 640


class _Pending:
    """One question in flight: its answer (from the reply) and its frames (from the agent's event)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.answer: asyncio.Future[Answer] = loop.create_future()
        self.frames: asyncio.Future[tuple[Any, ...]] = loop.create_future()


PartialSink = Callable[[bytes], Awaitable[None]]
"""``async (payload)``: one streamed piece (`messages.partial_payload`) for a caller that streams."""


class _RequestReply:
    def __init__(self, intake: RequestQuestions, pending: _Pending, on_partial: PartialSink | None) -> None:
        self.intake = intake
        self.pending = pending
        self.on_partial = on_partial

    async def partial(self, payload: bytes) -> None:
        if self.on_partial is None:
            return
        try:
            await self.on_partial(payload)
        except Exception as exc:  # the caller went away: the answer is still made, and copied to MQTT
            logger.info("agent: a streamed piece found no caller (%s); the answer goes on", exc)
            self.on_partial = None

    async def answer(self, answer: Answer) -> None:
        if not self.pending.answer.done():
            self.pending.answer.set_result(answer)
        transport = self.intake.agent.messager
        if transport is not None:  # a copy for MQTT listeners (dashboards, Home Assistant)
            await transport.publish(self.intake.agent.topics.answer, answer.payload())


class RequestQuestions:
    """Questions from one kind of caller (`via`) for one agent: `await ask(payload, asker=...)` returns the answer,
    and with `frame=True` the newest frame it used as a JPEG."""

    def __init__(self, agent: VisualAgent, via: Via) -> None:
        self.agent = agent
        self.via = via
        self._pending: list[_Pending] = []
        """The questions in flight (bounded by the agent's admission: `max_in_flight` plus those waiting)."""
        agent.observe(self._observe)

    async def ask(self, payload: bytes | str, *, asker: str, owner: str | None = None, frame: bool = False,
                  on_partial: PartialSink | None = None) -> tuple[Answer, bytes | None]:
        """The answer to one question payload (the JSON of `<prefix>/ask`), and the newest frame it used as JPEG
        when `frame` (else None); with `on_partial`, the pieces as the model makes them (the question's own `stream`
        is then ignored). `owner`: whose conversations its id names (default: the asker). Refusals (bad payload,
        busy, shutdown) are answers with `error`, never raised."""
        agent, via = self.agent, self.via
        try:
            question = agent.parse(payload, via)
        except QuestionError as exc:
            return agent.refuse(via, None, exc), None
        question.stream = on_partial is not None
        pending = _Pending()
        self._pending.append(pending)
        try:
            refused = agent.take(question, _RequestReply(self, pending, on_partial), via=via, asker=asker,
                                 owner=owner)
            if refused is not None:
                return agent.refuse(via, question, refused), None
            answer = await asyncio.shield(pending.answer)  # the question runs on when its caller goes away
            if answer.error is not None or not frame:
                return answer, None
            with contextlib.suppress(TimeoutError):
                frames = await asyncio.wait_for(asyncio.shield(pending.frames), FRAME_WAIT_S)
                if frames:
                    return answer, await asyncio.to_thread(_jpeg, frames[-1].frame)
            return answer, None
        finally:
            self._pending.remove(pending)

    async def _observe(self, event: AgentEvent) -> None:
        if event.kind is not EventKind.ANSWER or event.via is not self.via or event.answer is None:
            return
        for pending in self._pending:  # the answer object the reply got: ids are the caller's and may repeat
            if pending.answer.done() and pending.answer.result() is event.answer and not pending.frames.done():
                pending.frames.set_result(tuple(event.frames))
                return


def _jpeg(frame: Any) -> bytes:
    """A frame the answer used, as the JPEG a caller shows (worker thread)."""
    from encoders import JpegEncoder

    return JpegEncoder(max_side=_FRAME_MAX_SIDE, quality=80).encode(frame)
